"""A real job behind its quality gate: a failed gate publishes nothing and keeps the last good output."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from pyspark.sql import types as T

from jobs import similarity
from jobs.common.cli import EXIT_JOB_ERROR, run
from schemas import embeddings as E
from schemas import similarity as S

RUN_DATE = "2024-03-31"
# Hostile files can carry what the contract forbids: read them with every field nullable.
LOOSE_SCHEMA = T.StructType([T.StructField(f.name, f.dataType, True) for f in E.EMBEDDING_SCHEMA.fields])


def _embeddings(spark, path: Path, n_good: int, n_nan: int) -> str:
    rng = np.random.default_rng(3)
    rows = [
        (f'sku-{i},"<b>"', f"{i}.jpg", rng.standard_normal(4).astype(np.float32).tolist(), E.STATUS_OK, None,
         "resnet152", "abc", None)
        for i in range(n_good)
    ]
    rows += [(f"nan-{i}", "n.jpg", [float("nan"), 1.0, 0.0, 0.0], E.STATUS_OK, None, "resnet152", "abc",
              None)
             for i in range(n_nan)]
    spark.createDataFrame(rows, LOOSE_SCHEMA).coalesce(1).write.parquet(str(path))
    return str(path)


def _snapshot(root: Path, *folders: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in folders
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_a_run_failing_the_gate_leaves_the_previous_output_in_place(spark, tmp_path):
    out, reports = tmp_path / "style", tmp_path / "R"
    argv = ["--output", str(out), "--run-date", RUN_DATE, "--top-k", "3", "--report-dir", str(reports),
            "--reject-check-min-rows", "0"]
    edges_dir = out / "similarity" / f"dt={RUN_DATE}"
    rejects_dir = out / "rejects" / "similarity" / f"dt={RUN_DATE}"
    report_file = reports / "similarity" / f"dt={RUN_DATE}.json"
    quality_file = reports / "similarity" / f"dt={RUN_DATE}.quality.json"
    quality_key = f"R/similarity/dt={RUN_DATE}.quality.json"

    good = _embeddings(spark, tmp_path / "good", n_good=6, n_nan=0)
    first = similarity.main(["--input", good, *argv])
    assert first["funnel"]["rows_out"] == 6
    assert json.loads(quality_file.read_text())["success"] is True
    before = _snapshot(tmp_path, edges_dir, rejects_dir, report_file.parent)
    assert [k for k in before if k.startswith("R/")] == [f"R/similarity/dt={RUN_DATE}.json", quality_key]
    assert [k for k in before if k.startswith(f"style/similarity/dt={RUN_DATE}/") and k.endswith(".parquet")]

    # 3 of 9 embeddings are NaN: the job quarantines them, but a third rejected is over --max-reject-fraction.
    bad = _embeddings(spark, tmp_path / "bad", n_good=6, n_nan=3)
    assert run(similarity.main, ["--input", bad, *argv]) == EXIT_JOB_ERROR

    results = json.loads(quality_file.read_text())
    assert results["success"] is False
    assert results["failed_critical"] == [
        "funnel: expect_column_values_to_be_between(column='reject_fraction', min_value=0.0, max_value=0.1) "
        f"[at most 10% of input rows rejected]: 1 of 1 rows unexpected (100.00%), e.g. [{3 / 9!r}]"
    ]
    assert results["datasets"]["similarity_edges"]["success"] is True  # the edges themselves were fine
    after = _snapshot(tmp_path, edges_dir, rejects_dir, report_file.parent)
    assert {k: v for k, v in after.items() if k != quality_key} == {
        k: v for k, v in before.items() if k != quality_key
    }
    assert not [p for p in (out / "_staging").rglob("*") if p.is_file()]

    # The threshold is what stopped it: the same input under a looser one is published.
    third = similarity.main(["--input", bad, *argv, "--max-reject-fraction", "0.5"])
    assert third["funnel"]["rejected_by_reason"] == {S.REASON_NON_FINITE: 3}
    rejects = spark.read.parquet(str(rejects_dir)).select("sku", S.REASON).collect()
    assert sorted(tuple(r) for r in rejects) == [(f"nan-{i}", S.REASON_NON_FINITE) for i in range(3)]
