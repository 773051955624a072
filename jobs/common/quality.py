"""Data-quality gates: great-expectations 1.x expectations checked inside each job before it publishes.

A job writes its output to staging, reads the staged output back and calls :func:`run_gate` with the
frames to check, keyed by dataset name (``train``, ``test``, ``embeddings``, ``similarity_edges``,
``gremlin_vertices``, ``gremlin_edges``, ``raw_interactions``; the suites are declared once in
:mod:`schemas.expectations`). The gate validates every frame, writes the results next to the run
report (``<reports root>/<stage>/dt=<run date>.quality.json``) and raises :class:`QualityGateError`
when a critical expectation failed, so the job stops before :func:`jobs.common.storage.publish` and
the previous good output stays where readers look. Warnings are recorded only. How one frame is checked
(the suite compiled to one Spark query, great-expectations loaded only for an expectation the gate does not
compile) is :mod:`jobs.common.quality_metrics`.

An expectation that cannot be evaluated (a missing column, a query that does not run) counts as
failed, never as passed; an empty frame fails its row-count expectation. When the context carries
``rows_in`` and ``rows_rejected`` the gate also checks the stage's reject share
(``--max-reject-fraction``) as an expectation on a one-row ``funnel`` frame.

Every job gets the same flags through :func:`add_quality_args`::

    parser = job_parser(...)
    add_quality_args(parser)
    args = parser.parse_args(argv)
    ...
    run_gate("preprocess", {"train": spark.read.parquet(staged_train)}, reports_root=reports_root(args),
             run_date=args.run_date, thresholds=thresholds_from_args(args), context={"n_users": n_users})
"""
from __future__ import annotations

import argparse
import datetime as dt
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeAlias

import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from jobs.common import quality_pass, storage
from jobs.common.cli import JobError, fraction, non_negative_int
from jobs.common.quality_metrics import decide_written, jsonable, validate_frame
from jobs.common.report import report_uri
from schemas import expectations as suites
from schemas.quality_terms import (
    CRITICAL,
    DEFAULT_MAX_REJECT_FRACTION,
    DEFAULT_REJECT_CHECK_MIN_ROWS,
    EMBEDDING_DIM,
    EMBEDDINGS,
    EXPECT_COLUMN_TO_EXIST,
    FUNNEL_DATASET,
    GREMLIN_EDGES,
    GREMLIN_VERTICES,
    LEAVE_ONE_OUT,
    MODE_ENFORCE,
    MODE_OFF,
    MODE_WARN,
    MODES,
    N_ITEMS,
    N_USERS,
    RAW_INTERACTIONS,
    REJECT_FRACTION,
    ROWS_IN,
    ROWS_REJECTED,
    SIMILARITY_EDGES,
    TEST,
    TEST_NEGATIVES,
    TOP_K,
    TRAIN,
    UNEXPECTED_ROWS,
    WARNING,
    ExpectationSpec,
    QualityThresholds,
)

# The gate's API, and the terms of schemas.quality_terms that jobs pass to it (re-exported: a job
# imports the gate and its vocabulary from one place).
__all__ = [
    "QUALITY_SUFFIX",
    "QualityGateError",
    "WrittenCounts",
    "add_quality_args",
    "read_back",
    "suite_of",
    "thresholds_from_args",
    "quality_uri",
    "run_gate",
    "funnel_frame",
    "validate_frame",
    "CRITICAL",
    "DEFAULT_MAX_REJECT_FRACTION",
    "DEFAULT_REJECT_CHECK_MIN_ROWS",
    "EMBEDDING_DIM",
    "EMBEDDINGS",
    "FUNNEL_DATASET",
    "GREMLIN_EDGES",
    "GREMLIN_VERTICES",
    "LEAVE_ONE_OUT",
    "MODE_ENFORCE",
    "MODE_OFF",
    "MODE_WARN",
    "MODES",
    "N_ITEMS",
    "N_USERS",
    "RAW_INTERACTIONS",
    "REJECT_FRACTION",
    "ROWS_IN",
    "ROWS_REJECTED",
    "SIMILARITY_EDGES",
    "TEST",
    "TEST_NEGATIVES",
    "TOP_K",
    "TRAIN",
    "WARNING",
    "Checked",
    "QualityThresholds",
]

LOG = logging.getLogger("stylegraph.quality")

QUALITY_SUFFIX = "quality.json"


class QualityGateError(JobError):
    """A critical data-quality expectation failed: the staged output is not published."""


@dataclass(frozen=True)
class WrittenCounts:
    """A dataset the gate decides on counts made in Arrow as it was written or read back: one
    :mod:`jobs.common.quality_pass` partial per batch (a file, a sample), counted for ``expectations``
    (:func:`suite_of`). ``counted_by`` says who counted (``writers``: the tasks that wrote it,
    ``readers``: tasks that read the staged files back, ``driver``: the driver). ``staged``, the data as
    a frame, is what the gate checks with Spark when the counts do not prove the suite met (then the
    results carry the offending examples)."""

    expectations: tuple[ExpectationSpec, ...]
    partials: tuple[Mapping[str, Any], ...]
    staged: Callable[[], DataFrame]
    counted_by: str = "writers"


Checked: TypeAlias = DataFrame | WrittenCounts  # what the gate checks: a frame, or counts made in Arrow


def _file_partial(uri: str, expectations: tuple[ExpectationSpec, ...]) -> dict[str, Any]:
    """One staged Parquet file counted as one batch (in a Spark task): the suite's columns it holds."""
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(uri)
    named = {c for spec in expectations for c in quality_pass.spec_columns(spec)}
    try:
        with fs.open_input_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            columns = [name for name in parquet.schema_arrow.names if name in named]
            table = parquet.read(columns=columns)
    except (OSError, pa.ArrowException) as error:  # not Parquet: Spark's reading of the dataset decides
        return quality_pass.unread_partial(f"{uri} not read as Parquet: {error}")
    return quality_pass.table_partial(expectations, table)


def read_back(spark: Any, uri: str, expectations: Sequence[ExpectationSpec] | None) -> Checked:
    """A staged Parquet dataset as the gate checks it: counted for ``expectations`` by Spark tasks that
    read its files back with Arrow, one batch per file (``counted_by``: ``readers``), with the dataset
    as Spark reads it for when the counts do not settle the suite; only that frame when the gate is off
    (``expectations`` None). A file that holds whole groups proves them apart by the keys it lists."""

    def frame() -> DataFrame:
        return spark.read.parquet(storage.spark_path(uri))

    if expectations is None:
        return frame()
    suite = tuple(expectations)
    files = storage.list_files(uri)  # every file Spark reads (names starting with "_" or "." it skips)
    slices = max(1, min(len(files), 2 * spark.sparkContext.defaultParallelism))
    count = functools.partial(_file_partial, expectations=suite)
    partials = spark.sparkContext.parallelize(files, slices).map(count).collect()
    return WrittenCounts(suite, tuple(partials), staged=frame, counted_by="readers")


def suite_of(
    dataset: str, thresholds: QualityThresholds, context: Mapping[str, Any]
) -> tuple[ExpectationSpec, ...] | None:
    """The expectations the gate will check on ``dataset`` (for tasks that count them as they write);
    None when the gate is off."""
    if thresholds.mode == MODE_OFF:
        return None
    return tuple(suites.SUITES[dataset](thresholds, context))


def add_quality_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the gate's flags (``--max-reject-fraction``, ``--reject-check-min-rows``, ``--quality``)."""
    group = parser.add_argument_group("data quality")
    group.add_argument(
        "--max-reject-fraction",
        type=fraction,
        default=DEFAULT_MAX_REJECT_FRACTION,
        help="largest share of input rows that may be rejected before the run fails "
        f"(default {DEFAULT_MAX_REJECT_FRACTION})",
    )
    group.add_argument(
        "--reject-check-min-rows",
        type=non_negative_int,
        default=DEFAULT_REJECT_CHECK_MIN_ROWS,
        help="enforce --max-reject-fraction from this many input rows on; below, record a warning "
        f"(default {DEFAULT_REJECT_CHECK_MIN_ROWS})",
    )
    group.add_argument(
        "--quality",
        choices=MODES,
        default=MODE_ENFORCE,
        help="enforce: a failed critical expectation fails the run before publishing (default); "
        "warn: record only; off: skip the checks",
    )
    return parser


def thresholds_from_args(args: argparse.Namespace) -> QualityThresholds:
    """The thresholds a parsed job's flags ask for (defaults when the parser lacks them)."""
    return QualityThresholds(
        max_reject_fraction=getattr(args, "max_reject_fraction", DEFAULT_MAX_REJECT_FRACTION),
        mode=getattr(args, "quality", MODE_ENFORCE),
        reject_check_min_rows=getattr(args, "reject_check_min_rows", DEFAULT_REJECT_CHECK_MIN_ROWS),
    )


def quality_uri(reports_root: str, stage: str, run_date: dt.date | str) -> str:
    """Where a stage's quality results go: ``<reports root>/<stage>/dt=<run date>.quality.json``."""
    return report_uri(reports_root, stage, run_date, suffix=QUALITY_SUFFIX)


def run_gate(
    stage: str,
    datasets: Mapping[str, Checked],
    *,
    reports_root: str,
    run_date: dt.date | str,
    thresholds: QualityThresholds | None = None,
    context: Mapping[str, Any] | None = None,
    cache_frames: bool = True,
) -> dict[str, Any]:
    """Validate a stage's frames, write the quality JSON and fail on a critical expectation.

    Args:
        stage: the stage name (``preprocess``, ``embed``, ...), as in the run report.
        datasets: frames to check keyed by dataset name, or the counts of the tasks that wrote
            them (:class:`WrittenCounts`); each name must have a suite in
            :data:`schemas.expectations.SUITES`.
        reports_root: the run-report root (``cli.reports_root(args)``).
        run_date: the partition the run writes.
        thresholds: limits and mode (default: :class:`QualityThresholds` defaults).
        context: counts the suites need (``n_users``, ``n_items``, ``test_negatives``, ``top_k``,
            ``rows_in``, ``rows_rejected``...); recorded in the results.
        cache_frames: persist each frame while its suite runs (default), so every metric reads it
            once; ``False`` for frames cheaper to re-read than to cache (tens of millions of narrow
            Parquet rows: each metric then scans the files).

    Returns:
        The results as written, plus ``quality_uri``.

    Raises:
        QualityGateError: in ``enforce`` mode, when a critical expectation failed or could not be
            evaluated; the message lists every such expectation.
    """
    thresholds = thresholds or QualityThresholds()
    context = dict(context or {})
    started = time.time()
    frames = _frames_to_check(datasets, thresholds, context)
    results: dict[str, Any] = {
        "stage": stage,
        "run_date": str(run_date),
        "mode": thresholds.mode,
        "thresholds": asdict(thresholds),
        "context": jsonable(context),
        "datasets": {},
    }
    if thresholds.mode != MODE_OFF:
        results["datasets"] = _validate_datasets(stage, frames, thresholds, context, cache=cache_frames)
    critical, warnings = _failed_checks(results["datasets"])
    results["failed_critical"] = critical
    results["failed_warnings"] = warnings
    results["skipped"] = thresholds.mode == MODE_OFF
    results["success"] = not critical
    results["finished_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    results["seconds"] = round(time.time() - started, 3)

    uri = quality_uri(reports_root, stage, run_date)
    storage.write_json(uri, results)
    results["quality_uri"] = uri
    _log_and_enforce(stage, results, thresholds.mode)
    return results


def _frames_to_check(
    datasets: Mapping[str, Checked], thresholds: QualityThresholds, context: Mapping[str, Any]
) -> dict[str, Checked]:
    """What a gate validates: ``datasets``, plus the ``funnel`` when the context has its counts.

    Raises:
        ValueError: a dataset name has no suite in :data:`schemas.expectations.SUITES`.
    """
    frames = dict(datasets)
    unknown = sorted(set(frames) - set(suites.SUITES))
    if unknown:
        raise ValueError(f"no expectation suite for dataset(s) {unknown}; known: {sorted(suites.SUITES)}")
    if ROWS_IN in context and ROWS_REJECTED in context and FUNNEL_DATASET not in frames:
        frames[FUNNEL_DATASET] = _funnel_counts(
            next((f.sparkSession for f in frames.values() if isinstance(f, DataFrame)), None),
            int(context[ROWS_IN]),
            int(context[ROWS_REJECTED]),
            thresholds,
            context,
        )
    return frames


def _validate_datasets(
    stage: str,
    frames: Mapping[str, Checked],
    thresholds: QualityThresholds,
    context: Mapping[str, Any],
    *,
    cache: bool,
) -> dict[str, Any]:
    """Each dataset's results against its suite, by dataset name; ``counted_by`` says whether the
    writers' counts settled it (``writers``) or a Spark query over the data did (``spark``)."""
    results = {}
    for name, frame in frames.items():
        suite = suites.SUITES[name](thresholds, context)
        label = f"{stage}.{name}"
        if isinstance(frame, WrittenCounts):
            checks = (
                decide_written(label, suite, frame.partials) if tuple(suite) == frame.expectations else None
            )
            if checks is not None:
                results[name] = {
                    "success": all(c["success"] for c in checks if c["severity"] == CRITICAL),
                    "expectations": checks,
                    "counted_by": frame.counted_by,
                }
                continue
            frame = frame.staged()
        results[name] = {**validate_frame(label, frame, suite, cache=cache), "counted_by": "spark"}
    return results


def _failed_checks(datasets: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """One line per failed expectation of the validated datasets: (critical, warnings)."""
    critical: list[str] = []
    warnings: list[str] = []
    for name, dataset in datasets.items():
        for check in dataset["expectations"]:
            if not check["success"]:
                failed = critical if check["severity"] == CRITICAL else warnings
                failed.append(f"{name}: {_describe(check)}")
    return critical, warnings


def _log_and_enforce(stage: str, results: Mapping[str, Any], mode: str) -> None:
    """Log the gate's outcome; in ``enforce`` mode raise :class:`QualityGateError` on a critical failure."""
    critical = results["failed_critical"]
    uri = results["quality_uri"]
    for line in results["failed_warnings"]:
        LOG.warning("%s quality warning: %s", stage, line)
    LOG.info(
        "%s quality: %d dataset(s), %d critical failure(s), %d warning(s), %.1fs, mode=%s, results=%s",
        stage,
        len(results["datasets"]),
        len(critical),
        len(results["failed_warnings"]),
        results["seconds"],
        mode,
        uri,
    )
    if critical and mode == MODE_ENFORCE:
        raise QualityGateError(
            f"{stage}: data-quality gate failed, output not published ({len(critical)} critical "
            f"expectation(s) failed; results in {uri}):\n  - " + "\n  - ".join(critical)
        )


def _funnel_schema() -> T.StructType:
    return T.StructType(
        [
            T.StructField(ROWS_IN, T.LongType(), False),
            T.StructField(ROWS_REJECTED, T.LongType(), False),
            T.StructField(REJECT_FRACTION, T.DoubleType(), True),
        ]
    )


def _funnel_row(rows_in: int, rows_rejected: int) -> tuple[int, int, float | None]:
    return rows_in, rows_rejected, (rows_rejected / rows_in if rows_in > 0 else None)


def funnel_frame(spark: Any, rows_in: int, rows_rejected: int) -> DataFrame:
    """A one-row frame of a stage's counts; ``reject_fraction`` is null when nothing came in."""
    return spark.createDataFrame([_funnel_row(rows_in, rows_rejected)], _funnel_schema())


def _funnel_counts(
    spark: Any, rows_in: int, rows_rejected: int, thresholds: QualityThresholds, context: Mapping[str, Any]
) -> WrittenCounts:
    """The funnel's one row, counted in Arrow here; a Spark frame only when that does not settle it."""
    schema = to_arrow_schema(_funnel_schema())
    table = pa.Table.from_pylist([dict(zip(schema.names, _funnel_row(rows_in, rows_rejected), strict=True))],
                                 schema=schema)
    expectations = tuple(suites.SUITES[FUNNEL_DATASET](thresholds, context))
    return WrittenCounts(
        expectations,
        (quality_pass.table_partial(expectations, table),),
        staged=lambda: funnel_frame(spark or _active_session(), rows_in, rows_rejected),
        counted_by="driver",
    )


def _active_session() -> Any:
    from pyspark.errors import PySparkRuntimeError
    from pyspark.sql import SparkSession

    # The thread's active session, else the process's: a session built on another thread (start_spark) is
    # not the main thread's active one.
    try:
        return SparkSession.active()
    except PySparkRuntimeError as error:
        raise RuntimeError("run_gate needs a SparkSession to check the funnel") from error


def _describe(check: Mapping[str, Any]) -> str:
    """One line a person on call can act on: what was expected, what was seen."""
    kwargs = check["kwargs"]
    if check["expectation"] == UNEXPECTED_ROWS:  # the query is in the results file; say what it checks
        head = f"{check['expectation']}"
    else:
        head = f"{check['expectation']}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
    if check.get("description"):
        head += f" [{check['description']}]"
    observed = check.get("observed_value")
    if check.get("exception"):
        return f"{head} could not be evaluated: {check['exception']}"
    if check["expectation"] == EXPECT_COLUMN_TO_EXIST:
        return f"{head}: column {kwargs.get('column')!r} is missing"
    if check["expectation"] == UNEXPECTED_ROWS:
        return f"{head}: {observed} offending row(s)"
    if check.get("unexpected_count") is not None:
        line = (
            f"{head}: {check['unexpected_count']} of {check['element_count']} rows unexpected "
            f"({float(check['unexpected_percent'] or 0.0):.2f}%)"
        )
        if check.get("unexpected_examples"):
            line += f", e.g. {check['unexpected_examples']}"
        return line
    return f"{head}: observed {observed!r}"
