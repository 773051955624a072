"""The life cycle every job shares (jobs/common/run.py): paths, cleanup, all-or-nothing publish, report."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from jobs.common import outputs, storage
from jobs.common.report import Funnel, UnbalancedFunnelError
from jobs.common.run import PHASES_KEY, RunSpec, StagedRun

DAY = dt.date(2024, 3, 31)


def spec(tmp_path: Path, stage: str = "embed", output: str = "style") -> RunSpec:
    return RunSpec(stage=stage, output=str(tmp_path / output), run_date=DAY, reports_root=str(tmp_path / "r"))


def stage_file(run: StagedRun, name: str, text: str) -> None:
    storage.write_text(storage.join(run.staged(name), "part-0.txt"), text)


def test_final_paths_are_the_storage_layout(tmp_path: Path) -> None:
    run = StagedRun(
        spec(tmp_path, "preprocess", "ncf"), ["index/users", "train"], unpartitioned=["index/users"]
    )
    assert run.finals == {
        "index/users": str(tmp_path / "ncf" / "index" / "users"),
        "train": str(tmp_path / "ncf" / "train" / "dt=2024-03-31"),
    }
    whole = StagedRun(spec(tmp_path, "export", "gremlin/dt=2024-03-31"), whole_output=True)
    assert whole.finals == {"dt=2024-03-31": str(tmp_path / "gremlin" / "dt=2024-03-31")}
    with whole:  # staged beside the output, so that one swap publishes it
        assert whole.staged().startswith(str(tmp_path / "gremlin" / "_staging" / "export") + "/")
        assert whole.staged().endswith("/dt=2024-03-31")


def test_publish_puts_every_dataset_in_place_and_the_report_has_the_clock(tmp_path: Path) -> None:
    run = StagedRun(spec(tmp_path), ["embeddings", "rejects/embed"])
    with run:
        stage_file(run, "embeddings", "vectors")
        stage_file(run, "rejects/embed", "rejects")
        run.lap("write")
        run.publish()
        staging = run.staging
    assert not Path(staging).exists()
    assert (tmp_path / "style" / "embeddings" / "dt=2024-03-31" / "part-0.txt").read_text() == "vectors"
    rejects = tmp_path / "style" / "rejects" / "embed" / "dt=2024-03-31"
    assert (rejects / "part-0.txt").read_text() == "rejects"
    assert outputs.read_marker(str(tmp_path / "style")) == {"owner": "style", "kind": "root"}
    report = run.report(Funnel(rows_in=3, rows_out=2, rejected_by_reason={"bad": 1}), {"model": "m"})
    written = json.loads((tmp_path / "r" / "embed" / "dt=2024-03-31.json").read_text())
    assert written["model"] == "m" and written["funnel"]["rows_out"] == 2
    assert set(written[PHASES_KEY]) == {"write", "publish"}
    assert report["report_uri"] == str(tmp_path / "r" / "embed" / "dt=2024-03-31.json")
    with pytest.raises(UnbalancedFunnelError):
        run.report(Funnel(rows_in=3, rows_out=3, rejected_by_reason={"bad": 1}), {})


def test_nothing_is_published_unless_every_dataset_is_staged(tmp_path: Path) -> None:
    run = StagedRun(spec(tmp_path), ["embeddings", "rejects/embed"])
    with pytest.raises(RuntimeError, match="rejects/embed; publishing none"), run:
        stage_file(run, "embeddings", "vectors")
        run.publish()
    assert not (tmp_path / "style" / "embeddings").exists()
    assert not (tmp_path / "style" / "_staging").exists()


def test_a_failed_run_releases_what_it_holds_and_removes_its_staging(tmp_path: Path) -> None:
    released: list[str] = []
    run = StagedRun(spec(tmp_path), ["embeddings"])
    with pytest.raises(ValueError, match="boom"), run:
        run.on_exit(lambda: released.append("first"))
        run.on_exit(lambda: released.append("second"))
        stage_file(run, "embeddings", "half")
        raise ValueError("boom")
    assert released == ["second", "first"]
    assert not (tmp_path / "style").exists()  # a run that published nothing leaves no folder
    with pytest.raises(RuntimeError, match="inside `with run:` only"):
        run.staged("embeddings")
