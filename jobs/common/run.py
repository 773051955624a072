"""The life cycle every job shares: stage, check, gate, publish, report.

A job begins a :class:`StagedRun` from its parsed arguments (:meth:`RunSpec.from_args`) and the
datasets it publishes, then reads as its own steps::

    run = StagedRun(RunSpec.from_args(STAGE, args), [REJECTS, TRAIN, TEST], log=LOG)
    run.check_output(inputs={"--input": args.input})    # before anything is written
    with run:                                           # dead staging of the stage cleaned, ours made
        write(train_df, run.staged(TRAIN)); run.lap("train")
        run.gate({TRAIN: ...}, context=...)             # fails before publish
        run.publish()                                   # every dataset, in the order given
    return run.report(funnel, details)                  # funnel checked, phase clock included

The run owns where things go: a dataset's staged folder (``<output>/_staging/<stage>/<run id>/<name>``)
and its final folder (``<output>/<name>/dt=<run date>``, :func:`storage.partition_uri`; a dataset
named in ``unpartitioned`` is ``<output>/<name>``, replaced whole every run). A stage that replaces its
``--output`` folder whole (``whole_output=True``: the export) stages beside it, under
``<parent>/_staging/<stage>/<run id>/<name>``, so that one swap publishes it. Leaving the ``with``
block, however it ends, removes the staging folder and releases the frames the run persisted.
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import posixpath
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame

from jobs.common import outputs, storage
from jobs.common.cli import reports_root
from jobs.common.quality import Checked, run_gate, suite_of, thresholds_from_args
from jobs.common.report import Funnel, PhaseClock, write_report
from schemas.quality_terms import ExpectationSpec, QualityThresholds

LOG = logging.getLogger("stylegraph.run")

PHASES_KEY = "seconds_by_phase"


@dataclass(frozen=True)
class RunSpec:
    """What every run of a stage is told: where it writes, for which date, its reports and gate limits."""

    stage: str
    output: str
    run_date: dt.date
    reports_root: str
    thresholds: QualityThresholds = field(default_factory=QualityThresholds)

    @classmethod
    def from_args(cls, stage: str, args: argparse.Namespace) -> RunSpec:
        """The spec of a parsed job (``--output``, ``--run-date``, ``--report-dir``, the gate's flags)."""
        return cls(
            stage=stage,
            output=str(args.output),
            run_date=args.run_date,
            reports_root=reports_root(args),
            thresholds=thresholds_from_args(args),
        )


class StagedRun:
    """One run of a stage, from its staging folder to its report (see the module docstring).

    Args:
        spec: the run's stage, output, date, reports root and gate thresholds.
        datasets: the datasets the run publishes, by name under the output root (``train``,
            ``rejects/embed``, ``index/users``), in publish order; ignored with ``whole_output``.
        unpartitioned: those of ``datasets`` published as ``<output>/<name>``, not by run date.
        whole_output: the run replaces its output folder whole (one dataset, the folder itself).
        log: the job's logger (the phase clock logs each lap with it).
    """

    def __init__(
        self,
        spec: RunSpec,
        datasets: Sequence[str] = (),
        *,
        unpartitioned: Collection[str] = (),
        whole_output: bool = False,
        log: logging.Logger = LOG,
    ) -> None:
        self.spec = spec
        self.started_at = time.time()
        self.clock = PhaseClock(log)
        self.is_whole_output = whole_output
        output = spec.output.rstrip("/")
        if whole_output:
            parent, self._name = posixpath.split(output)
            self._staging_root = parent or "."
            self.finals = {self._name: spec.output}
        else:
            self._staging_root = spec.output
            self.finals = {
                name: storage.join(spec.output, name) if name in unpartitioned
                else storage.partition_uri(spec.output, name, spec.run_date)
                for name in datasets
            }
        self._run_folder: str | None = None
        self._is_new_root = False
        self._on_exit: list[Callable[[], Any]] = []


    def check_output(self, inputs: Mapping[str, str | None] = {}) -> None:  # noqa: B006 - read only
        """Refuse an output this run must not write (:func:`outputs.check_output`): before any write."""
        outputs.check_output(
            self.spec.stage,
            self.spec.output,
            inputs=inputs,
            replaces=() if self.is_whole_output else self.finals.values(),
            report_dir=self.spec.reports_root,
        )


    def __enter__(self) -> StagedRun:
        """Clean what dead runs of the stage left and create this run's staging folder."""
        self._is_new_root = not storage.exists(self._staging_root)
        _, self._run_folder = storage.start_staging(self._staging_root, self.spec.stage)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        """Release what the run holds (:meth:`persist`, :meth:`on_exit`) and remove the staging folder,
        however the run ended."""
        try:
            for release in reversed(self._on_exit):
                release()
        finally:
            self._on_exit.clear()
            self._finish()

    def _finish(self) -> None:
        if self._run_folder is not None:
            storage.finish_staging(self._run_folder)
            self._run_folder = None
            if self._is_new_root and not storage.all_files(self._staging_root):
                storage.remove(self._staging_root)  # a run that published nothing leaves no folder

    @property
    def staging(self) -> str:
        """This run's staging folder (inside the ``with`` block only)."""
        if self._run_folder is None:
            raise RuntimeError(f"{self.spec.stage}: the run's staging folder exists inside `with run:` only")
        return self._run_folder

    def staged(self, name: str | None = None) -> str:
        """Where ``name`` is staged (any name: scratch folders too); with ``whole_output``, no name: the
        staged output folder."""
        return storage.join(self.staging, self._name if self.is_whole_output and name is None else name or "")

    def persist(self, frame: DataFrame, level: StorageLevel = StorageLevel.MEMORY_AND_DISK) -> DataFrame:
        """``frame.persist(level)``, unpersisted when the run ends (the session may outlive the job)."""
        self.on_exit(frame.persist(level).unpersist)
        return frame

    def on_exit(self, release: Callable[[], Any]) -> None:
        """Call ``release`` when the run ends, however it ends (last registered, first called)."""
        self._on_exit.append(release)

    def lap(self, phase: str) -> None:
        """End a phase of the run's clock (logged, and written to the report)."""
        self.clock.lap(phase)


    def suite(self, dataset: str, context: Mapping[str, Any]) -> tuple[ExpectationSpec, ...] | None:
        """The expectations :meth:`gate` checks on ``dataset`` with ``context``, for tasks that count them
        as they write (:class:`jobs.common.quality.WrittenCounts`); None when the gate is off."""
        return suite_of(dataset, self.spec.thresholds, context)

    def gate(
        self, frames: Mapping[str, Checked], context: Mapping[str, Any], *, cache_frames: bool = True
    ) -> dict[str, Any]:
        """The quality gate on the staged frames, or on the counts of the tasks that wrote them
        (:func:`jobs.common.quality.run_gate`); raises before publish when a critical expectation
        failed."""
        return run_gate(
            self.spec.stage,
            frames,
            reports_root=self.spec.reports_root,
            run_date=self.spec.run_date,
            thresholds=self.spec.thresholds,
            context=context,
            cache_frames=cache_frames,
        )

    def publish(self) -> None:
        """Publish every staged dataset in the order given, once every one of them is staged.

        An output root is marked as its family's first; a whole output folder carries its stage's marker.
        """
        staged = {name: self.staged(None if self.is_whole_output else name) for name in self.finals}
        missing = [uri for uri in staged.values() if not storage.exists(uri)]
        if missing:
            raise RuntimeError(f"{self.spec.stage}: nothing staged at {', '.join(missing)}; publishing none")
        if self.is_whole_output:
            marker = outputs.folder_marker(self.spec.stage)
            storage.publish(staged[self._name], self.spec.output, owner=marker)
        else:
            outputs.mark_root(self.spec.stage, self.spec.output)
            for name, final in self.finals.items():
                storage.publish(staged[name], final)
        self.lap("publish")


    def report(self, funnel: Funnel, details: Mapping[str, Any]) -> dict[str, Any]:
        """Check the funnel and write the run report, with the phase clock's seconds."""
        return write_report(
            self.spec.reports_root,
            self.spec.stage,
            self.spec.run_date,
            funnel,
            started_at=self.started_at,
            details={**details, PHASES_KEY: self.clock.seconds},
        )
