"""Data-quality gates: great-expectations 1.x suites run inside each job before it publishes.

A job writes its output to staging, reads the staged output back and calls :func:`run_gate` with the
frames to check, keyed by dataset name (``train``, ``test``, ``embeddings``, ``similarity_edges``,
``gremlin_vertices``, ``gremlin_edges``, ``raw_interactions``; the suites are declared once in
:mod:`schemas.expectations`). The gate validates every frame, writes the results next to the run
report (``<reports root>/<stage>/dt=<run date>.quality.json``) and raises :class:`QualityGateError`
when a critical expectation failed, so the job stops before :func:`jobs.common.storage.publish` and
the previous good output stays where readers look. Warnings are recorded only.

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
import logging
import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import types as T

from jobs.common import storage
from jobs.common.cli import JobError, fraction, non_negative_int
from jobs.common.report import report_uri

LOG = logging.getLogger("stylegraph.quality")

QUALITY_SUFFIX = "quality.json"
CRITICAL = "critical"
WARNING = "warning"

MODE_ENFORCE = "enforce"  # critical failures fail the job
MODE_WARN = "warn"  # everything is evaluated and recorded, nothing fails the job
MODE_OFF = "off"  # nothing is evaluated (benchmarks); the quality file says so
MODES = (MODE_ENFORCE, MODE_WARN, MODE_OFF)

DEFAULT_MAX_REJECT_FRACTION = 0.1
# Below this many input rows a share of rejects says little (3 bad rows of 12 is 25%): it is recorded
# as a warning, not enforced. Hostile unit-test inputs stay small; real runs are far larger.
DEFAULT_REJECT_CHECK_MIN_ROWS = 100

# Dataset names: the keys jobs pass to run_gate (suites in schemas.expectations.SUITES).
RAW_INTERACTIONS = "raw_interactions"
TRAIN = "train"
TEST = "test"
EMBEDDINGS = "embeddings"
SIMILARITY_EDGES = "similarity_edges"
GREMLIN_VERTICES = "gremlin_vertices"
GREMLIN_EDGES = "gremlin_edges"

# Context keys the suites read.
N_USERS = "n_users"  # train/test: user_idx < n_users
N_ITEMS = "n_items"  # train/test: item_idx < n_items
LEAVE_ONE_OUT = "leave_one_out"  # test: exactly one positive per user (default True; False: chrono split)
TEST_NEGATIVES = "test_negatives"  # test, leave-one-out: rows per user = 1 + test_negatives (warning)
TOP_K = "top_k"  # similarity edges: 1 <= rank <= k, at most k per product (None: all pairs)
EMBEDDING_DIM = "embedding_dim"  # embeddings: every ok vector has this length

# The one-row frame the gate builds from the context's counts to check the reject share.
FUNNEL_DATASET = "funnel"
ROWS_IN = "rows_in"
ROWS_REJECTED = "rows_rejected"
REJECT_FRACTION = "reject_fraction"

# "BASIC" gives counts and a few unexpected values; "SUMMARY"/"COMPLETE" cost extra Spark jobs.
RESULT_FORMAT = "BASIC"
MAX_EXAMPLES = 5

UNEXPECTED_ROWS = "unexpected_rows_expectation"
COLUMN_TO_EXIST = "expect_column_to_exist"


class QualityGateError(JobError):
    """A critical data-quality expectation failed: the staged output is not published."""


@dataclass(frozen=True)
class QualityThresholds:
    """The limits a gate enforces; every job takes them from the same flags.

    Attributes:
        max_reject_fraction: the largest share of a stage's input rows that may be rejected
            (quarantined, or embedded with status "error") and still be acceptable.
        mode: ``enforce`` (critical failures fail the job), ``warn`` (record only) or ``off``.
        reject_check_min_rows: the reject share is enforced from this many input rows on; below, a
            share over the limit is a warning.
    """

    max_reject_fraction: float = DEFAULT_MAX_REJECT_FRACTION
    mode: str = MODE_ENFORCE
    reject_check_min_rows: int = DEFAULT_REJECT_CHECK_MIN_ROWS

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_reject_fraction <= 1.0:
            raise ValueError(f"max_reject_fraction must be in [0, 1], got {self.max_reject_fraction}")
        if self.mode not in MODES:
            raise ValueError(f"quality mode must be one of {MODES}, got {self.mode!r}")

    @property
    def min_accepted_fraction(self) -> float:
        """The ``mostly`` of expectations that tolerate the rejected share."""
        return round(1.0 - self.max_reject_fraction, 12)

    def share_severity(self, rows_in: int | None) -> str:
        """Critical when the input is big enough for its reject share to mean something (or unknown)."""
        return WARNING if rows_in is not None and rows_in < self.reject_check_min_rows else CRITICAL


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
    datasets: Mapping[str, DataFrame],
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
        datasets: frames to check keyed by dataset name; each name must have a suite in
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
    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # its INFO is per-metric chatter
    from schemas import expectations as suites  # imported late: pulls in great_expectations

    thresholds = thresholds or QualityThresholds()
    context = dict(context or {})
    started = time.time()
    frames = dict(datasets)
    unknown = sorted(set(frames) - set(suites.SUITES))
    if unknown:
        raise ValueError(f"no expectation suite for dataset(s) {unknown}; known: {sorted(suites.SUITES)}")
    if ROWS_IN in context and ROWS_REJECTED in context and FUNNEL_DATASET not in frames:
        frames[FUNNEL_DATASET] = funnel_frame(
            next(iter(frames.values())).sparkSession if frames else _active_session(),
            int(context[ROWS_IN]),
            int(context[ROWS_REJECTED]),
        )

    results: dict[str, Any] = {
        "stage": stage,
        "run_date": str(run_date),
        "mode": thresholds.mode,
        "thresholds": asdict(thresholds),
        "context": _jsonable(context),
        "datasets": {},
    }
    if thresholds.mode != MODE_OFF:
        gx_context = _ephemeral_context()
        for name, frame in frames.items():
            expectations = suites.SUITES[name](thresholds, context)
            results["datasets"][name] = validate_frame(
                gx_context, f"{stage}.{name}", frame, expectations, cache=cache_frames
            )

    critical: list[str] = []
    warnings: list[str] = []
    for name, dataset in results["datasets"].items():
        for check in dataset["expectations"]:
            if not check["success"]:
                failed = critical if check["severity"] == CRITICAL else warnings
                failed.append(f"{name}: {_describe(check)}")
    results["failed_critical"] = critical
    results["failed_warnings"] = warnings
    results["skipped"] = thresholds.mode == MODE_OFF
    results["success"] = not critical
    results["finished_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    results["seconds"] = round(time.time() - started, 3)

    uri = quality_uri(reports_root, stage, run_date)
    storage.write_json(uri, results)
    results["quality_uri"] = uri
    for line in results["failed_warnings"]:
        LOG.warning("%s quality warning: %s", stage, line)
    LOG.info(
        "%s quality: %d dataset(s), %d critical failure(s), %d warning(s), %.1fs, mode=%s, results=%s",
        stage, len(results["datasets"]), len(critical), len(results["failed_warnings"]),
        results["seconds"], thresholds.mode, uri,
    )
    if critical and thresholds.mode == MODE_ENFORCE:
        raise QualityGateError(
            f"{stage}: data-quality gate failed, output not published ({len(critical)} critical "
            f"expectation(s) failed; results in {uri}):\n  - " + "\n  - ".join(critical)
        )
    return results


def funnel_frame(spark: Any, rows_in: int, rows_rejected: int) -> DataFrame:
    """A one-row frame of a stage's counts; ``reject_fraction`` is null when nothing came in."""
    share = rows_rejected / rows_in if rows_in > 0 else None
    schema = T.StructType(
        [
            T.StructField(ROWS_IN, T.LongType(), False),
            T.StructField(ROWS_REJECTED, T.LongType(), False),
            T.StructField(REJECT_FRACTION, T.DoubleType(), True),
        ]
    )
    return spark.createDataFrame([(rows_in, rows_rejected, share)], schema)


def validate_frame(
    gx_context: Any, name: str, frame: DataFrame, expectations: list[Any], *, cache: bool = True
) -> dict[str, Any]:
    """Run one suite on one frame; every expectation's outcome, failures and exceptions included.

    ``cache=False`` leaves the frame as it is: each metric recomputes (re-reads) it.
    """
    import great_expectations as gx

    unique = f"{name}.{uuid.uuid4().hex[:8]}"
    batch_definition = (
        # GE persists a batch's frame unless told not to: with cache=False nothing is cached at all.
        gx_context.data_sources.add_spark(unique, persist=cache)
        .add_dataframe_asset(name)
        .add_batch_definition_whole_dataframe("whole")
    )
    suite = gx_context.suites.add(gx.ExpectationSuite(name=unique, expectations=expectations))
    checks: list[dict[str, Any]]
    # Every metric is a Spark job over the frame: read the staged files once, not once per metric
    # (a frame the caller cached stays cached).
    owned = cache and not frame.is_cached
    if owned:
        frame = frame.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        validation = gx.ValidationDefinition(name=unique, data=batch_definition, suite=suite).run(
            batch_parameters={"dataframe": frame}, result_format=RESULT_FORMAT
        )
        checks = [_check_result(result) for result in validation.results]
    except Exception as err:  # the whole suite could not run: every expectation counts as failed
        LOG.exception("%s: validation could not run", name)
        checks = [_unevaluated(expectation, err) for expectation in expectations]
    finally:
        if owned:
            frame.unpersist()
    # GE returns results grouped by domain; keep the suite's order so the files read the same each run.
    order = {_key(expectation.configuration): index for index, expectation in enumerate(expectations)}
    checks.sort(key=lambda check: order.get(check.pop("_key"), len(order)))
    return {"success": all(c["success"] for c in checks if c["severity"] == CRITICAL), "expectations": checks}


def _ephemeral_context() -> Any:
    """An in-memory GX context: no files, no analytics calls, no progress bars."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _active_session() -> Any:
    from pyspark.sql import SparkSession

    session = SparkSession.getActiveSession()
    if session is None:
        raise RuntimeError("run_gate needs a SparkSession to check the funnel")
    return session


def _key(config: Any) -> str:
    kwargs = {k: v for k, v in config.kwargs.items() if k != "batch_id"}
    return f"{config.type}|{sorted(kwargs.items(), key=lambda kv: kv[0])!r}"


def _check_result(result: Any) -> dict[str, Any]:
    config = result.expectation_config
    info = result.exception_info or {}
    if "raised_exception" not in info:  # keyed by metric id when a metric raised
        raised = [v for v in info.values() if isinstance(v, dict) and v.get("raised_exception")]
        info = raised[0] if raised else {}
    details = result.result or {}
    raised_exception = bool(info.get("raised_exception"))
    message = (info.get("exception_message") or "could not be evaluated") if raised_exception else None
    return {
        "_key": _key(config),
        "expectation": config.type,
        "kwargs": _jsonable({k: v for k, v in config.kwargs.items() if k != "batch_id"}),
        "description": config.description,
        "severity": str(getattr(config.severity, "value", config.severity) or CRITICAL),
        "success": bool(result.success) and not raised_exception,
        "observed_value": _jsonable(details.get("observed_value")),
        "element_count": details.get("element_count"),
        "unexpected_count": details.get("unexpected_count"),
        "unexpected_percent": _jsonable(details.get("unexpected_percent")),
        "unexpected_examples": _jsonable(list(details.get("partial_unexpected_list") or [])[:MAX_EXAMPLES]),
        "exception": message,
    }


def _unevaluated(expectation: Any, err: Exception) -> dict[str, Any]:
    config = expectation.configuration
    return {
        "_key": _key(config),
        "expectation": config.type,
        "kwargs": _jsonable({k: v for k, v in config.kwargs.items() if k != "batch_id"}),
        "description": config.description,
        "severity": CRITICAL,  # an unevaluated suite never passes, whatever it would have checked
        "success": False,
        "observed_value": None,
        "element_count": None,
        "unexpected_count": None,
        "unexpected_percent": None,
        "unexpected_examples": [],
        "exception": f"{type(err).__name__}: {err}",
    }


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
    if check["expectation"] == COLUMN_TO_EXIST:
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


def _jsonable(value: Any) -> Any:
    """Plain JSON values: non-finite floats and other objects become strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return _jsonable(value.item())
    return str(value)
