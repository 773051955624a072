"""The one pipeline definition: stage order and argv for every way of running, refusals before any
work, importable without pyspark, and the local runner calling the real jobs' ``main``."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jobs import pipeline
from jobs.common.cli import JobError

RUN_DATE = "2024-03-31"
ROOT = Path(__file__).resolve().parent.parent


def test_the_local_plan_is_the_stages_in_order_with_their_argv() -> None:
    params = pipeline.PipelineParams(input_root="/s/", work_root="/w", run_date=RUN_DATE, seed=11)
    calls = pipeline.plan(params, target=pipeline.LOCAL)
    common = ["--run-date", RUN_DATE, "--report-dir", "/w/_reports"]
    assert [(call.name, call.stage.module, list(call.argv)) for call in calls] == [
        ("preprocess", "jobs.preprocess_interactions",
         ["--input", "/s/interactions", "--output", "/w/ncf", "--lookback-days", "6", "--seed", "11",
          *common]),
        ("embed", "jobs.embed_images",
         ["--catalog", "/s/catalog/catalog.csv", "--images-root", "/s/images", "--output", "/w/style",
          "--model", "resnet152", "--weights", "random:11", "--batch-size", "16",
              "--device", "auto", *common]),
        ("similarity", "jobs.similarity",
         ["--input", f"/w/style/embeddings/dt={RUN_DATE}", "--output", "/w/style", "--top-k", "10",
          "--metric", "cosine", *common]),
        ("export", "jobs.export_gremlin",
         ["--catalog", "/s/catalog/catalog.csv", "--edges", f"/w/style/similarity/dt={RUN_DATE}",
          "--embeddings", f"/w/style/embeddings/dt={RUN_DATE}", "--output", f"/w/style/gremlin/dt={RUN_DATE}",
          "--compression", "gzip", "--metric", "cosine", *common]),
        ("validate", "jobs.validate_gremlin_csv",
         ["--vertices", f"/w/style/gremlin/dt={RUN_DATE}/vertices",
          "--edges", f"/w/style/gremlin/dt={RUN_DATE}/edges", *common]),
        ("report", "jobs.run_report",
         ["--workdir", "/w", "--reports", "/w/_reports", "--interactions", "/s/interactions",
          "--output", "/w/report", *common]),
    ]


def test_the_production_plan_ends_with_the_neptune_load_and_takes_airflows_date() -> None:
    params = pipeline.PipelineParams(
        input_root="s3://b/raw", work_root="s3://b/work", run_date=pipeline.AIRFLOW_RUN_DATE,
        weights="s3://b/m.pt", neptune_endpoint="https://n:8182", neptune_iam_role_arn="arn:r", region="r1",
    )
    calls = pipeline.plan(params)
    assert [call.name for call in calls] == ["preprocess", "embed", "similarity", "export", "validate",
                                             "neptune_load"]
    assert [call.stage.engine for call in calls] == ["cpu", "gpu", "cpu", "cpu", "cpu", "driver"]
    assert list(calls[-1].argv) == [
        "--source", "s3://b/work/style/gremlin/dt={{ data_interval_start | run_day }}/",
        "--endpoint", "https://n:8182", "--iam-role-arn", "arn:r", "--region", "r1",
        "--run-date", "{{ data_interval_start | run_day }}", "--report-dir", "s3://b/work/_reports",
    ]
    embed = dict(calls[1].option_pairs())
    assert (embed["--weights"], embed["--device"]) == ("s3://b/m.pt", "cuda")  # a GPU or a clear failure
    subset = pipeline.plan(params, stages="export, embed")
    assert [call.name for call in subset] == ["embed", "export"]  # pipeline order, whatever was asked


def test_a_production_plan_that_embeds_needs_real_weights() -> None:
    params = pipeline.PipelineParams(input_root="s3://b/raw", work_root="s3://b/work", run_date=RUN_DATE)
    with pytest.raises(JobError, match=r"^production runs need real embedding weights: pass --weights"):
        pipeline.plan(params, target=pipeline.PRODUCTION)
    with pytest.raises(JobError, match=r"^production runs refuse --weights random:7: random weights make"):
        pipeline.plan(params.replace(weights="random:7"), target=pipeline.PRODUCTION, stages="embed")
    # Stages that do not embed need no weights; the local run falls back to random ones, on any device.
    assert [c.name for c in pipeline.plan(params, target=pipeline.PRODUCTION, stages="export")] == ["export"]
    local_embed = dict(pipeline.plan(params, target=pipeline.LOCAL, stages="embed")[0].option_pairs())
    assert (local_embed["--weights"], local_embed["--device"]) == ("random:7", "auto")
    imagenet = dict(pipeline.plan(params.replace(weights="imagenet"), stages="embed")[0].option_pairs())
    assert imagenet["--weights"] == "imagenet"


def test_unknown_stages_and_malformed_dates_are_refused(tmp_path: Path) -> None:
    with pytest.raises(JobError, match=r"unknown stage\(s\) 'simularity', 'x': choose from preprocess,"):
        pipeline.parse_stages("preprocess,simularity,x", pipeline.LOCAL)
    with pytest.raises(JobError, match=r"stage\(s\) 'neptune_load' do not run in a local run"):
        pipeline.parse_stages(["neptune_load"], pipeline.LOCAL)
    for bad in ("2024-02-30", "2024-3-1", "", "{{ ds }}x"):
        with pytest.raises(JobError, match="run date must be YYYY-MM-DD"):
            pipeline.PipelineParams(input_root="/s", work_root="/w", run_date=bad)
    sample, work = tmp_path / "sample", tmp_path / "work"
    argv = ["--workdir", str(work), "--sample", str(sample), "--run-date", RUN_DATE]
    with pytest.raises(JobError, match="unknown stage"):
        pipeline.main([*argv, "--stages", "embedding"])
    with pytest.raises(JobError, match="run date must be YYYY-MM-DD"):
        pipeline.main(["--workdir", str(work), "--sample", str(sample), "--run-date", "31-03-2024"])
    assert not sample.exists() and not work.exists()  # nothing generated, nothing written


def test_the_definition_imports_without_pyspark_or_pyarrow() -> None:
    """The Airflow environment imports these; block pyspark and pyarrow and import them."""
    code = (
        "import sys\n"
        "sys.modules.update(dict.fromkeys(['pyspark', 'pyarrow', 'torch'], None))\n"
        "import jobs.pipeline, emr.clusters, emr.steps, glue.jobs\n"
        "print(len(jobs.pipeline.STAGES))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == str(len(pipeline.STAGES))


def write_export(export: Path, edges: list[str]) -> None:
    (export / "vertices").mkdir(parents=True)
    (export / "edges").mkdir(parents=True)
    (export / "vertices" / "v.csv").write_text(
        '~id,~label,name:String\na,product,"Boot, ""Original"""\nb,product,\n', encoding="utf-8"
    )
    (export / "edges" / "e.csv").write_text(
        "~id,~from,~to,~label,score:Double\n" + "".join(f"{line}\n" for line in edges), encoding="utf-8"
    )


def test_the_local_runner_calls_the_jobs_and_reports_each_stage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The runner on the validate stage (a real job, pure Python): progress line from its report,
    outputs listed, idempotent when run twice, a failing stage named in the error."""
    work = tmp_path / "work"
    params = pipeline.PipelineParams(
        input_root=str(tmp_path / "sample"), work_root=str(work), run_date=RUN_DATE
    )
    export = work / "style" / "gremlin" / f"dt={RUN_DATE}"
    write_export(export, ["a-b,a,b,similar,0.9", "b-a,b,a,similar,0.9"])
    caplog.set_level(logging.INFO, logger="stylegraph.pipeline")

    first = pipeline.run_local(params, stages="validate")
    second = pipeline.run_local(params, stages="validate")
    report_path = work / "_reports" / "validate" / f"dt={RUN_DATE}.json"
    written = json.loads(report_path.read_text())
    assert [r.name for r in first] == ["validate"] and second[0].report == written
    assert (written["funnel"]["rows_in"], written["funnel"]["rows_out"], written["ok"]) == (4, 4, True)
    assert first[0].outputs == {"run report": str(report_path)}
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("validate    in=")]
    assert len(progress) == 2
    assert progress[0].startswith(
        "validate    in=       4 out=       4 rejected=     0 dropped=     0 seconds="
    )

    # The local command's result and log say when the embeddings come from random weights.
    (tmp_path / "sample").mkdir()
    (tmp_path / "sample" / "sample_manifest.json").write_text("{}")
    argv = ["--workdir", str(work), "--sample", str(tmp_path / "sample"), "--run-date", RUN_DATE,
            "--stages", "validate"]
    result = pipeline.main(argv)
    assert (result["weights"], result["is_random_weights"]) == ("random:7", True)
    assert "embeddings use random weights (random:7)" in caplog.text
    assert pipeline.main([*argv, "--weights", "imagenet"])["is_random_weights"] is False

    (export / "edges" / "e.csv").write_text("~id,~from,~to,~label,score:Double\na-z,a,z,similar,0.5\n")
    with pytest.raises(JobError, match=r"^stage validate failed: "):
        pipeline.run_local(params, stages="validate")


def test_progress_line_reads_the_report_funnel() -> None:
    funnel = {"rows_in": 10, "rows_out": 7, "rows_rejected": 2, "rows_dropped": 1}
    report = {"seconds": 12.34, "funnel": funnel}
    assert pipeline.progress_line("embed", report, 99.0) == (
        "embed       in=      10 out=       7 rejected=     2 dropped=     1 seconds=  12.3"
    )
    assert pipeline.progress_line("report", None, 1.25) == (
        "report      done in    1.2 s (no funnel in its report)"
    )


def test_the_plan_formats_partition_paths_through_their_one_owner(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stages' partition arguments and the runner's output list come from jobs.common.paths (which
    storage re-exports), never from a ``dt=`` written by hand."""
    from jobs.common import paths, report, storage

    assert storage.partition_uri is paths.partition_uri and report.report_uri is paths.report_uri
    monkeypatch.setattr(paths, "PARTITION_KEY", "day")
    params = pipeline.PipelineParams(input_root="in", work_root="s3://b/w", run_date="2024-03-31")
    values = pipeline.template_values(params)
    assert values["embeddings"] == "s3://b/w/style/embeddings/day=2024-03-31"
    assert values["similarity"] == "s3://b/w/style/similarity/day=2024-03-31"
    assert values["export"] == "s3://b/w/style/gremlin/day=2024-03-31"
    outputs = pipeline.stage_outputs("preprocess", params)
    assert outputs["train"] == "s3://b/w/ncf/train/day=2024-03-31"
    assert outputs["run report"] == "s3://b/w/_reports/preprocess/day=2024-03-31.json"


def test_the_local_runner_starts_the_session_for_the_run_input_before_its_spark_stages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One session for the run, sized by the logs and the catalog, the rows its JVM reads (its compiler
    follows that size), started before the first Spark stage; a run of stages without Spark starts none."""
    import jobs.similarity
    from jobs.common import spark as spark_module

    events: list[Any] = []

    class Starting:
        def result(self) -> None:
            events.append("session ready")

    def start_spark(app_name: str, *, conf: Any = None, inputs: Any = ()) -> Starting:
        events.append((app_name, list(inputs)))
        return Starting()

    def similarity_main(argv: Any) -> dict[str, Any]:
        events.append("similarity ran")
        return {}

    monkeypatch.setattr(spark_module, "start_spark", start_spark)
    monkeypatch.setattr(jobs.similarity, "main", similarity_main)
    work = tmp_path / "work"
    params = pipeline.PipelineParams(
        input_root=str(tmp_path / "sample"), work_root=str(work), run_date=RUN_DATE
    )
    write_export(work / "style" / "gremlin" / f"dt={RUN_DATE}", ["a-b,a,b,similar,0.9"])
    pipeline.run_local(params, stages="validate")
    assert events == []
    pipeline.run_local(params, stages="similarity")
    sized = [str(tmp_path / "sample" / "interactions"), str(tmp_path / "sample" / "catalog" / "catalog.csv")]
    assert events == [("stylegraph-pipeline", sized), "session ready", "similarity ran"]
