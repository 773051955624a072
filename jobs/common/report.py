"""The one run-report writer: counts that matter, checked and written as JSON per stage and date.

Every job ends with :func:`write_report`, which lands at
``<reports root>/<stage>/dt=<run date>.json`` (the root is ``--report-dir``, default
``<output>/_reports``; see :func:`jobs.common.cli.reports_root`). The funnel must balance
(rows in = rows out + rows rejected + rows dropped on purpose); :func:`check_funnel` refuses a report
that does not, so a row can never vanish without a line in the report saying where it went.
"""
from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from jobs.common import storage
from jobs.common.paths import report_uri as report_uri  # the one report path, re-exported

LOG = logging.getLogger("stylegraph.report")

@dataclass
class Funnel:
    """Rows into a stage and where each one went."""

    rows_in: int
    rows_out: int
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    dropped_by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def rows_rejected(self) -> int:
        return sum(self.rejected_by_reason.values())

    @property
    def rows_dropped(self) -> int:
        return sum(self.dropped_by_reason.values())

    @property
    def is_balanced(self) -> bool:
        return self.rows_in == self.rows_out + self.rows_rejected + self.rows_dropped

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "rows_rejected": self.rows_rejected,
            "rows_dropped": self.rows_dropped,
            "is_balanced": self.is_balanced,
        }


class UnbalancedFunnelError(RuntimeError):
    """Rows were lost or invented between a stage's input and its outputs: a bug, never published."""


def check_funnel(stage: str, funnel: Funnel) -> None:
    """Raise when rows in != rows out + rejected + dropped."""
    if not funnel.is_balanced:
        raise UnbalancedFunnelError(
            f"{stage}: rows in {funnel.rows_in} != out {funnel.rows_out} + rejected "
            f"{funnel.rows_rejected} + dropped {funnel.rows_dropped}"
        )


def write_report(
    reports_root: str,
    stage: str,
    run_date: dt.date | str,
    funnel: Funnel,
    *,
    started_at: float,
    details: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Check the funnel, log the stage's progress line and write the report JSON.

    Args:
        reports_root: the run-report root (``cli.reports_root(args)``); the report goes under ``<stage>/``.
        stage: the stage name (``preprocess``, ``embed``, ...).
        run_date: the partition this run wrote.
        funnel: rows in, out, rejected and dropped.
        started_at: ``time.time()`` when the job began.
        details: anything else worth keeping (per-stage counts, parameters, output paths).

    Returns:
        The report as written.
    """
    check_funnel(stage, funnel)
    seconds = round(time.time() - started_at, 3)
    report = {
        "stage": stage,
        "run_date": str(run_date),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "seconds": seconds,
        "funnel": funnel.as_dict(),
        **dict(details or {}),
    }
    uri = report_uri(reports_root, stage, run_date)
    storage.write_json(uri, report)
    LOG.info(
        "%s: in=%d out=%d rejected=%d dropped=%d seconds=%.1f report=%s",
        stage, funnel.rows_in, funnel.rows_out, funnel.rows_rejected, funnel.rows_dropped, seconds, uri,
    )
    report["report_uri"] = uri
    return report


class PhaseClock:
    """Wall seconds of a job's steps, each measured from the end of the previous one (a step that comes
    back adds up). Logged at INFO as each step ends (with the job's logger) and written to the report
    (``seconds_by_phase``): where a run's time went, on any cluster, without a
    profiler."""

    def __init__(self, log: logging.Logger = LOG) -> None:
        self.seconds: dict[str, float] = {}
        self._log = log
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = round(self.seconds.get(phase, 0.0) + now - self._last, 3)
        self._last = now
        self._log.info("phase %s: %.2fs", phase, self.seconds[phase])
