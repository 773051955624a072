"""The one report writer: the funnel must balance, the JSON lands where the convention says."""
from __future__ import annotations

import json
import time

import pytest

from jobs.common.report import Funnel, UnbalancedFunnelError, check_funnel, report_uri, write_report


def test_balanced_funnel_is_written_with_its_totals(tmp_path) -> None:
    funnel = Funnel(
        rows_in=10,
        rows_out=6,
        rejected_by_reason={"invalid_json": 1, "unknown_event_type": 2},
        dropped_by_reason={"duplicate_event_id": 1},
    )
    report = write_report(
        str(tmp_path / "_reports"), "preprocess", "2024-03-31", funnel,
        started_at=time.time() - 1, details={"users": 3},
    )
    path = tmp_path / "_reports" / "preprocess" / "dt=2024-03-31.json"
    assert report["report_uri"] == str(path)
    written = json.loads(path.read_text())
    assert written["stage"] == "preprocess"
    assert written["run_date"] == "2024-03-31"
    assert written["users"] == 3
    assert written["seconds"] >= 1
    assert written["funnel"] == {
        "rows_in": 10,
        "rows_out": 6,
        "rejected_by_reason": {"invalid_json": 1, "unknown_event_type": 2},
        "dropped_by_reason": {"duplicate_event_id": 1},
        "rows_rejected": 3,
        "rows_dropped": 1,
        "is_balanced": True,
    }


@pytest.mark.parametrize("rows_out", [5, 7])
def test_unbalanced_funnel_is_refused_and_nothing_written(tmp_path, rows_out: int) -> None:
    funnel = Funnel(rows_in=10, rows_out=rows_out, rejected_by_reason={"bad": 4})
    with pytest.raises(UnbalancedFunnelError, match="rows in 10"):
        check_funnel("embed", funnel)
    with pytest.raises(UnbalancedFunnelError):
        write_report(str(tmp_path), "embed", "2024-03-31", funnel, started_at=time.time())
    assert not any(tmp_path.iterdir())


def test_report_uri_convention() -> None:
    assert report_uri("s3://b/r", "export", "2024-03-31") == "s3://b/r/export/dt=2024-03-31.json"
    assert report_uri("/r/", "export", "2024-03-31", "quality.json") == "/r/export/dt=2024-03-31.quality.json"


def test_phase_clock_times_each_step_from_the_previous_one(monkeypatch, caplog) -> None:
    import logging

    from jobs.common import report

    ticks = iter([10.0, 10.5, 12.25, 12.5, 13.0])
    monkeypatch.setattr(report.time, "perf_counter", lambda: next(ticks))
    clock = report.PhaseClock(logging.getLogger("stylegraph.test"))
    with caplog.at_level(logging.INFO, logger="stylegraph.test"):
        clock.lap("read")  # 10.0 -> 10.5
        clock.lap("write")  # -> 12.25
        clock.lap("read")  # -> 12.5: a step that comes back adds up
        clock.lap("publish")  # -> 13.0
    assert clock.seconds == {"read": 0.75, "write": 1.75, "publish": 0.5}
    assert [r.getMessage() for r in caplog.records] == [
        "phase read: 0.50s", "phase write: 1.75s", "phase read: 0.75s", "phase publish: 0.50s"]
