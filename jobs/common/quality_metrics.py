"""One frame against one suite of expectations, compiled to Spark without great-expectations.

A suite is a list of :class:`schemas.quality_terms.ExpectationSpec` (great-expectations 1.x expectation
types and kwargs, as data). The expectation types the gate knows (columns exist, row count, not null,
between, in set, unique, compound unique, unexpected-rows queries) are compiled into the branches of one
Spark query over the frame, and each is decided by great-expectations' own rules (``mostly``, vacuous
truth on an empty frame, unexpected percentages over non-null values), written out here: a job's gate
never imports great-expectations, which costs several CPU seconds to import. An expectation the gate
does not know (another type or kwarg, such as a ``row_condition``) runs through great-expectations'
Spark engine, loaded then (logged once). Tests hold the compiled results equal to that engine's. The
results are plain JSON dicts, one per expectation.

The gate (:mod:`jobs.common.quality`) is what jobs call; this module is its engine.
"""
from __future__ import annotations

import functools
import logging
import math
import uuid
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jobs.common import quality_pass
from schemas.quality_terms import (
    CRITICAL,
    EXPECT_COLUMN_TO_EXIST,
    EXPECT_COMPOUND_UNIQUE,
    EXPECT_TABLE_ROW_COUNT_BETWEEN,
    EXPECT_VALUES_BETWEEN,
    EXPECT_VALUES_IN_SET,
    EXPECT_VALUES_NOT_NULL,
    EXPECT_VALUES_UNIQUE,
    UNEXPECTED_ROWS,
    WARNING,
    ExpectationSpec,
)

LOG = logging.getLogger("stylegraph.quality")

# "BASIC" gives counts and a few unexpected values; "SUMMARY"/"COMPLETE" cost extra Spark jobs.
RESULT_FORMAT: Final = "BASIC"
MAX_EXAMPLES = 5

MAX_ERROR_CHARS = 1000  # of a metric's Spark error in the results (its stack trace is in the log)

# The kwargs the gate compiles, per expectation type; any other type or kwarg goes to GE's engine.
_BOUNDS = {"min_value", "max_value", "strict_min", "strict_max"}
PLANNED_KWARGS: Final[Mapping[str, frozenset[str]]] = {
    EXPECT_COLUMN_TO_EXIST: frozenset({"column"}),
    EXPECT_TABLE_ROW_COUNT_BETWEEN: frozenset(_BOUNDS),
    EXPECT_VALUES_NOT_NULL: frozenset({"column", "mostly"}),
    EXPECT_VALUES_BETWEEN: frozenset({"column", "mostly", *_BOUNDS}),
    EXPECT_VALUES_IN_SET: frozenset({"column", "mostly", "value_set"}),
    EXPECT_VALUES_UNIQUE: frozenset({"column", "mostly"}),
    EXPECT_COMPOUND_UNIQUE: frozenset({"column_list", "mostly", "ignore_row_if"}),
    UNEXPECTED_ROWS: frozenset({"unexpected_rows_query"}),
}
_ROW_TYPES = (EXPECT_VALUES_NOT_NULL, EXPECT_VALUES_BETWEEN, EXPECT_VALUES_IN_SET)  # one aggregate each
_IGNORE_ROW_IF = ("all_values_are_missing", "any_value_is_missing", "never")


def validate_frame(
    name: str, frame: DataFrame, expectations: Sequence[ExpectationSpec], *, cache: bool = True
) -> dict[str, Any]:
    """Run one suite on one frame; every expectation's outcome, failures and exceptions included.

    The metrics the suite's expectations need (row count, null and out-of-range counts, duplicate
    counts, the row counts of unexpected-rows queries) are computed together, as the branches of one
    Spark query over the frame (:func:`_compute_metrics`); unexpected examples are fetched afterwards,
    only for expectations that found some. Each expectation is then decided on those metrics by
    great-expectations' rules (:func:`_decide`), so the results are the ones its Spark engine gives, at
    a fraction of the Spark jobs (that engine runs one or more per expectation) and without importing
    it. An expectation the gate does not compile (:func:`plan_expectation` returns None) runs through
    great-expectations' Spark engine, in one validation for all such expectations.

    ``cache=False`` leaves the frame as it is: each branch of the metrics query re-reads it.
    """
    owned = cache and not frame.is_cached
    if owned:
        frame = frame.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        columns = list(frame.columns)
        plans: list[_Plan] = []
        native: list[int] = []
        for index, spec in enumerate(expectations):
            try:
                plan = plan_expectation(spec, columns, index)
            except Exception:  # an odd configuration: GE's engine reports it the way it always has
                LOG.warning("%s: %s left to great-expectations' engine", name, spec.type)
                plan = None
            if plan is None:
                native.append(index)
            else:
                plans.append(plan)
        checks = dict(zip((p.index for p in plans), _validate_planned(name, frame, plans), strict=True))
        if native:
            engine_checks = validate_with_gx_engine(
                name, frame, [expectations[i] for i in native], cache=cache and not owned
            )
            checks.update(zip(native, engine_checks, strict=True))
    finally:
        if owned:
            frame.unpersist()
    ordered = [checks[index] for index in range(len(expectations))]  # the suite's order, every run
    return {
        "success": all(c["success"] for c in ordered if c["severity"] == CRITICAL),
        "expectations": ordered,
    }


def decide_written(
    name: str, expectations: Sequence[ExpectationSpec], partials: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]] | None:
    """The suite's results from the counts of the tasks that wrote the dataset
    (:mod:`jobs.common.quality_pass`), decided by the same rules as on a frame, when those counts prove
    every expectation met, or missed only by a warning whose result is its exact count (an
    unexpected-rows rule: Spark's result carries no examples either); None otherwise (a count not
    proven, any other expectation not met): the caller then checks the written data with Spark for the
    full result and its examples."""
    merged = quality_pass.merge_partials(expectations, partials)
    if merged[quality_pass.UNPROVEN]:
        LOG.info("%s: the writers' counts do not settle the suite: %s", name,
                 "; ".join(merged[quality_pass.UNPROVEN]))
        return None
    columns = list(merged[quality_pass.NULLS])
    checks = []
    for index, spec in enumerate(expectations):
        try:
            plan = plan_expectation(spec, columns, index) if _compilable(spec) else None
        except Exception:  # an odd configuration (a between without bounds): the frame's gate reports it
            return None
        if plan is None or plan.missing:
            return None
        values: dict[Hashable, Any] = {plan.total: merged[quality_pass.ROWS], plan.examples: []}
        column = spec.kwargs.get("column")
        if plan.nulls is not None:
            values[plan.nulls] = merged[quality_pass.NULLS][column]
        if plan.filtered is not None:  # compound keys: the pass proved them free of nulls
            values[plan.filtered] = merged[quality_pass.ROWS]
        if plan.unexpected is not None:
            values[plan.unexpected] = (
                merged[quality_pass.NULLS][column]
                if spec.type == EXPECT_VALUES_NOT_NULL
                else merged[quality_pass.COUNTS][str(index)]
            )
        check = _decide(plan, values, columns)
        if not check["success"] and not (spec.severity == WARNING and quality_pass.counts_exactly(spec)):
            LOG.info("%s: %s not met by the writers' counts", name, spec.description)
            return None
        checks.append(check)
    return checks


def to_gx_expectation(spec: ExpectationSpec) -> Any:
    """The great-expectations expectation a spec declares (imports great-expectations)."""
    from great_expectations.expectations.registry import get_expectation_impl

    expectation_class: Any = get_expectation_impl(spec.type)
    kwargs: dict[str, Any] = {k: list(v) if isinstance(v, tuple) else v for k, v in spec.kwargs.items()}
    return expectation_class(**kwargs, severity=spec.severity, description=spec.description)


def validate_with_gx_engine(
    name: str, frame: DataFrame, expectations: Sequence[ExpectationSpec], *, cache: bool = True
) -> list[dict[str, Any]]:
    """great-expectations' own Spark engine, one or more Spark jobs per expectation (the fallback).

    Returns the results in the order of ``expectations``.
    """
    try:
        import great_expectations as gx

        gx_expectations = [to_gx_expectation(spec) for spec in expectations]
        unique = f"{name}.{uuid.uuid4().hex[:8]}"
        batch_definition = (
            # GE persists a batch's frame unless told not to: with cache=False nothing is cached at all.
            ephemeral_context()
            .data_sources.add_spark(unique, persist=cache)
            .add_dataframe_asset(name)
            .add_batch_definition_whole_dataframe("whole")
        )
        suite = ephemeral_context().suites.add(gx.ExpectationSuite(name=unique, expectations=gx_expectations))
        validation = gx.ValidationDefinition(name=unique, data=batch_definition, suite=suite).run(
            batch_parameters={"dataframe": frame}, result_format=RESULT_FORMAT
        )
        by_key: dict[str, list[dict[str, Any]]] = {}
        for result in validation.results:
            by_key.setdefault(_key(result.expectation_config), []).append(_check_result(result))
        return [by_key[_key(e.configuration)].pop(0) for e in gx_expectations]
    except Exception as err:  # the whole suite could not run: every expectation counts as failed
        LOG.exception("%s: validation could not run", name)
        return [_unevaluated(spec, err) for spec in expectations]


@functools.cache
def ephemeral_context() -> Any:
    """The process's in-memory GX context (no files, no analytics, no progress bars), made on first use."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    LOG.info("great-expectations loaded for expectation(s) the gate does not compile")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # its INFO is per-metric chatter
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


# --- Metrics computed by the gate ---------------------------------------------------------------
# A metric is an aggregate over the frame (a Spark Column), a count query over it (Spark SQL with
# ``{batch}``), or examples fetched when the count they belong to is above zero. Metrics are keyed so
# that expectations needing the same one (the row count, a column's nulls) share it.
_BATCH = "batch"
_ROW_COUNT = ("row_count",)
# What great-expectations' Spark engine fetches: 20 examples of a map expectation
# (``partial_unexpected_count``); the BASIC results report no rows of an unexpected-rows query.
_PARTIAL_UNEXPECTED = 20


@dataclass
class _Metric:
    """How to get one metric: exactly one of aggregate, query or examples is set."""

    aggregate: Any = None  # Column: an aggregate over the frame
    query: str | None = None  # SQL over {batch} returning one row, one number
    examples: Any = None  # (frame -> DataFrame of examples) or a SQL query over {batch}
    count_id: Hashable = None  # examples: the metric whose count > 0 makes them worth fetching
    as_dicts: bool = False  # examples as {column: value} dicts (multi-column rows)
    limit: int = _PARTIAL_UNEXPECTED


@dataclass
class _Plan:
    """One expectation's metrics; ``missing`` is a column the frame lacks (no metrics then)."""

    index: int
    spec: ExpectationSpec
    metrics: dict[Hashable, _Metric] = field(default_factory=dict)
    total: Hashable = None  # the row count
    nulls: Hashable = None  # the column's nulls (column map expectations)
    unexpected: Hashable = None  # the unexpected count (or the query's row count)
    filtered: Hashable = None  # the rows a compound expectation looks at
    examples: Hashable = None
    missing: str | None = None


def _q(column: str) -> str:
    return "`" + column.replace("`", "``") + "`"


def _between(column: Any, kwargs: Mapping[str, Any]) -> Any:
    """great-expectations' ``column_values.between`` condition (bounds inclusive unless strict)."""
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if low is None and high is None:
        raise ValueError("min_value and max_value cannot both be None")
    condition = F.lit(True)
    if low is not None:
        condition = condition & (column > F.lit(low) if kwargs.get("strict_min") else column >= F.lit(low))
    if high is not None:
        condition = condition & (column < F.lit(high) if kwargs.get("strict_max") else column <= F.lit(high))
    return condition


def _row_unexpected(expectation_type: str, column: str, kwargs: Mapping[str, Any]) -> Any:
    """The rows a column map expectation counts as unexpected (a boolean Column, never null)."""
    col = F.col(_q(column))
    if expectation_type == EXPECT_VALUES_NOT_NULL:
        return col.isNull()
    if expectation_type == EXPECT_VALUES_BETWEEN:
        return col.isNotNull() & ~F.coalesce(_between(col, kwargs), F.lit(False))
    value_set = list(kwargs["value_set"])
    return col.isNotNull() & ~F.coalesce(col.isin(value_set), F.lit(False))


def _group_domain(kwargs: Mapping[str, Any]) -> tuple[list[str], str]:
    """The grouped columns of a uniqueness expectation and the SQL filter of the rows it looks at."""
    if "column" in kwargs:
        column = kwargs["column"]
        return [column], f"{_q(column)} IS NOT NULL"
    columns = list(kwargs["column_list"])
    ignore = kwargs.get("ignore_row_if", "all_values_are_missing")
    if ignore == "all_values_are_missing":
        return columns, "NOT (" + " AND ".join(f"{_q(c)} IS NULL" for c in columns) + ")"
    if ignore == "any_value_is_missing":
        return columns, " AND ".join(f"{_q(c)} IS NOT NULL" for c in columns)
    return columns, "TRUE"


def _duplicates_sql(columns: list[str], where: str) -> str:
    keys = ", ".join(_q(c) for c in columns)
    return f"SELECT {keys}, count(*) AS n FROM {{{_BATCH}}} WHERE {where} GROUP BY {keys} HAVING count(*) > 1"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _compilable(spec: ExpectationSpec) -> bool:
    """Whether the gate compiles this type with these kwargs (plain numbers, lists, known options)."""
    allowed = PLANNED_KWARGS.get(spec.type)
    if allowed is None or not set(spec.kwargs) <= allowed:
        return False
    kwargs = spec.kwargs
    if any(kwargs.get(b) is not None and not _is_number(kwargs[b]) for b in ("min_value", "max_value")):
        return False  # dates, strings and $PARAMETER dicts: GE's engine compares those
    if "mostly" in kwargs and not _is_number(kwargs["mostly"]):
        return False
    if "value_set" in kwargs and not isinstance(kwargs["value_set"], (list, tuple)):
        return False
    return kwargs.get("ignore_row_if", _IGNORE_ROW_IF[0]) in _IGNORE_ROW_IF


def plan_expectation(spec: ExpectationSpec, columns: Sequence[str], index: int = 0) -> _Plan | None:
    """The metrics of one expectation as Spark aggregates and queries; None: leave it to GE's engine.

    ``columns`` are the frame's. An expectation on a column the frame lacks is planned as failed (GE's
    engine reports it the same way: not evaluated, with the column named).
    """
    if not _compilable(spec):
        return None
    kwargs = spec.kwargs
    plan = _Plan(index, spec)
    if spec.type == EXPECT_COLUMN_TO_EXIST:
        return plan  # decided on the frame's columns alone
    used = [kwargs["column"]] if "column" in kwargs else list(kwargs.get("column_list") or [])
    missing = [c for c in used if c not in set(columns)]
    if missing:
        if spec.type == EXPECT_COMPOUND_UNIQUE:
            return None  # GE's engine names what is missing
        plan.missing = missing[0]
        return plan
    plan.total = _ROW_COUNT
    plan.metrics[_ROW_COUNT] = _Metric(aggregate=F.count(F.lit(1)))
    if spec.type == EXPECT_TABLE_ROW_COUNT_BETWEEN:
        return plan
    if spec.type == UNEXPECTED_ROWS:
        query = kwargs["unexpected_rows_query"]
        plan.unexpected = ("rows_query", query)
        plan.metrics[plan.unexpected] = _Metric(query=f"SELECT count(*) FROM ({query})")
        return plan
    frozen = repr(sorted((k, v) for k, v in kwargs.items() if k != "mostly"))
    plan.unexpected = ("unexpected", spec.type, frozen)
    plan.examples = ("examples", spec.type, frozen)
    if spec.type in _ROW_TYPES:
        return _plan_column_map(plan)
    return _plan_uniqueness(plan)


def _plan_column_map(plan: _Plan) -> _Plan:
    """Add a column map expectation's metrics: nulls, unexpected rows and their examples."""
    spec, kwargs = plan.spec, plan.spec.kwargs
    column = kwargs["column"]
    plan.nulls = ("nulls", column)
    plan.metrics[plan.nulls] = _Metric(aggregate=F.count(F.when(F.col(_q(column)).isNull(), 1)))
    unexpected = _row_unexpected(spec.type, column, kwargs)
    plan.metrics[plan.unexpected] = _Metric(aggregate=F.count(F.when(unexpected, 1)))
    plan.metrics[plan.examples] = _Metric(
        examples=lambda df, u=unexpected, c=column: df.filter(u).select(_q(c)), count_id=plan.unexpected
    )
    return plan


def _plan_uniqueness(plan: _Plan) -> _Plan:
    """Add a uniqueness expectation's metrics: duplicated rows (a query), their examples, and the nulls
    (one column) or the rows looked at (compound)."""
    spec, kwargs = plan.spec, plan.spec.kwargs
    keys, where = _group_domain(kwargs)
    key_list = ", ".join(_q(c) for c in keys)
    plan.metrics[plan.unexpected] = _Metric(
        query=f"SELECT coalesce(sum(n), 0) FROM ({_duplicates_sql(keys, where)})"
    )
    # Rows of duplicated values, as GE's window over the values picks them (fetched on failure).
    plan.metrics[plan.examples] = _Metric(
        examples=(
            f"SELECT {key_list} FROM (SELECT {key_list}, count(*) OVER (PARTITION BY {key_list}) "
            f"AS n FROM {{{_BATCH}}} WHERE {where}) WHERE n > 1"
        ),
        count_id=plan.unexpected,
        as_dicts=spec.type == EXPECT_COMPOUND_UNIQUE,
    )
    if spec.type == EXPECT_VALUES_UNIQUE:
        plan.nulls = ("nulls", kwargs["column"])
        plan.metrics[plan.nulls] = _Metric(aggregate=F.count(F.when(F.col(_q(kwargs["column"])).isNull(), 1)))
    else:
        plan.filtered = ("filtered", tuple(keys), where)
        plan.metrics[plan.filtered] = _Metric(aggregate=F.count(F.when(F.expr(where), 1)))
    return plan


def _validate_planned(name: str, frame: DataFrame, plans: list[_Plan]) -> list[dict[str, Any]]:
    """Compute the plans' metrics together, fetch examples where needed, decide each expectation."""
    wanted: dict[Hashable, _Metric] = {}
    for plan in plans:
        wanted.update(plan.metrics)
    values: dict[Hashable, Any] = {}
    errors: dict[Hashable, Exception] = {}
    if wanted:
        spark = frame.sparkSession
        view = f"quality_{uuid.uuid4().hex[:12]}"
        frame.createOrReplaceTempView(view)
        try:
            values, errors = _compute_metrics(spark, frame, view, wanted)
            for metric_id, metric in wanted.items():
                if metric.examples is None or metric.count_id in errors:
                    continue
                if not values.get(metric.count_id):
                    values[metric_id] = []
                    continue
                try:
                    values[metric_id] = _fetch_examples(spark, frame, view, metric)
                except Exception as err:  # examples are a courtesy: the count already decides
                    LOG.warning("%s: could not fetch unexpected examples: %s", name, err)
                    values[metric_id] = []
        finally:
            spark.catalog.dropTempView(view)

    checks = []
    for plan in plans:
        failed = next((errors[m] for m in plan.metrics if m in errors), None)
        if failed is not None:
            checks.append(_unevaluated(plan.spec, failed, keep_severity=True))
        elif plan.missing:
            checks.append(
                _check(
                    plan.spec,
                    False,
                    exception=f'Error: The column "{plan.missing}" in BatchData does not exist.',
                )
            )
        else:
            checks.append(_decide(plan, values, frame.columns))
    return checks


def _mostly_success(considered: int, unexpected: int, mostly: float) -> bool:
    return (float(considered) - float(unexpected)) / float(considered) >= mostly


def _decide(plan: _Plan, values: Mapping[Hashable, Any], columns: Sequence[str]) -> dict[str, Any]:
    """great-expectations' verdict and BASIC result for one expectation, from its metrics.

    The rules are GE's ``_validate`` of each expectation class: a column map expectation looks at the
    non-null values (``mostly`` of them must be expected; no rows or no non-null values pass), not-null
    at every row, a compound one at the rows ``ignore_row_if`` keeps; the unexpected percentage is over
    the rows looked at.
    """
    spec, kwargs = plan.spec, plan.spec.kwargs
    if spec.type == EXPECT_COLUMN_TO_EXIST:
        return _check(spec, kwargs["column"] in columns)
    total = int(values[plan.total])
    if spec.type == EXPECT_TABLE_ROW_COUNT_BETWEEN:
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        above = low is None or (total > low if kwargs.get("strict_min") else total >= low)
        below = high is None or (total < high if kwargs.get("strict_max") else total <= high)
        return _check(spec, above and below, observed_value=total)
    unexpected = int(values[plan.unexpected])
    if spec.type == UNEXPECTED_ROWS:
        return _check(spec, unexpected == 0, observed_value=unexpected)
    if spec.type == EXPECT_VALUES_NOT_NULL:
        considered = total
    elif plan.nulls is not None:
        considered = total - int(values[plan.nulls])
    else:
        considered = int(values[plan.filtered])
    mostly = kwargs.get("mostly", 1.0)
    success = total == 0 or considered == 0 or _mostly_success(considered, unexpected, mostly)
    return _check(
        spec,
        success,
        element_count=total,
        unexpected_count=unexpected,
        unexpected_percent=unexpected / considered * 100 if total > 0 and considered > 0 else None,
        unexpected_examples=values.get(plan.examples) or [],
    )


def _compute_metrics(
    spark: Any, frame: DataFrame, view: str, wanted: Mapping[Any, _Metric]
) -> tuple[dict[Any, Any], dict[Any, Exception]]:
    """Every aggregate and count query, as the branches of ONE Spark query (``key, value`` rows).

    The aggregates are one ``agg`` over the frame; each count query is a branch of its own (a GROUP BY
    shuffles). Spark runs the branches' stages side by side. When the query fails, each branch runs
    alone, so the failure is pinned on the metrics (expectations) it belongs to.
    """
    keys = {metric_id: index for index, metric_id in enumerate(wanted)}
    branches: dict[Any, DataFrame] = {}
    errors: dict[Any, Exception] = {}
    aggregates = {m: metric.aggregate for m, metric in wanted.items() if metric.aggregate is not None}
    if aggregates:
        try:
            row_df = frame.agg(*(expr.alias(f"m{keys[m]}") for m, expr in aggregates.items()))
            branches[tuple(aggregates)] = row_df.select(
                F.explode(
                    F.array(
                        *(
                            F.struct(F.lit(keys[m]).alias("k"), F.col(f"m{keys[m]}").cast("long").alias("v"))
                            for m in aggregates
                        )
                    )
                ).alias("kv")
            ).select("kv.k", "kv.v")
        except Exception as err:
            errors.update({m: err for m in aggregates})
    for metric_id, metric in wanted.items():
        if metric.query is None:
            continue
        try:
            branch_df = spark.sql(metric.query.format(**{_BATCH: view}))
            branches[(metric_id,)] = branch_df.select(
                F.lit(keys[metric_id]).alias("k"), F.col(branch_df.columns[0]).cast("long").alias("v")
            )
        except Exception as err:  # the query does not parse or names a missing column
            errors[metric_id] = err
    by_key = {index: metric_id for metric_id, index in keys.items()}
    values: dict[Any, Any] = {}
    if not branches:
        return values, errors
    union_df = functools.reduce(DataFrame.unionAll, branches.values())
    try:
        rows = union_df.collect()
    except Exception as err:  # one branch failed at run time: find which, one branch at a time
        LOG.warning("the metrics query failed (%s); running its branches one by one", err)
        rows = []
        for metric_ids, branch_df in branches.items():
            try:
                rows += branch_df.collect()
            except Exception as branch_err:
                errors.update({m: branch_err for m in metric_ids})
    for row in rows:
        values[by_key[row["k"]]] = int(row["v"] or 0)
    return values, errors


def _fetch_examples(spark: Any, frame: DataFrame, view: str, metric: _Metric) -> list[Any]:
    """Up to ``metric.limit`` unexpected values (or rows as dicts): the targeted second pass."""
    if isinstance(metric.examples, str):
        examples_df = spark.sql(metric.examples.format(**{_BATCH: view}))
    else:
        examples_df = metric.examples(frame)
    rows = examples_df.limit(metric.limit).collect()
    if metric.as_dicts:
        return [row.asDict() for row in rows]
    return [row[0] for row in rows]


def _key(config: Any) -> str:
    kwargs = {k: v for k, v in config.kwargs.items() if k != "batch_id"}
    return f"{config.type}|{sorted(kwargs.items(), key=lambda kv: kv[0])!r}"


def _severity(config: Any) -> str:
    return str(getattr(config.severity, "value", config.severity) or CRITICAL)


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
        "expectation": config.type,
        "kwargs": jsonable({k: v for k, v in config.kwargs.items() if k != "batch_id"}),
        "description": config.description,
        "severity": _severity(config),
        "success": bool(result.success) and not raised_exception,
        "observed_value": jsonable(details.get("observed_value")),
        "element_count": details.get("element_count"),
        "unexpected_count": details.get("unexpected_count"),
        "unexpected_percent": jsonable(details.get("unexpected_percent")),
        "unexpected_examples": jsonable(list(details.get("partial_unexpected_list") or [])[:MAX_EXAMPLES]),
        "exception": message,
    }


def _check(
    spec: ExpectationSpec,
    success: bool,
    *,
    observed_value: Any = None,
    element_count: int | None = None,
    unexpected_count: int | None = None,
    unexpected_percent: float | None = None,
    unexpected_examples: Sequence[Any] = (),
    exception: str | None = None,
) -> dict[str, Any]:
    """One expectation's result, as the quality JSON lists it (the fields of GE's BASIC result)."""
    return {
        "expectation": spec.type,
        "kwargs": jsonable(dict(spec.kwargs)),
        "description": spec.description,
        "severity": spec.severity,
        "success": success,
        "observed_value": jsonable(observed_value),
        "element_count": element_count,
        "unexpected_count": unexpected_count,
        "unexpected_percent": jsonable(unexpected_percent),
        "unexpected_examples": jsonable(list(unexpected_examples)[:MAX_EXAMPLES]),
        "exception": exception,
    }


def _unevaluated(spec: ExpectationSpec, err: Exception, *, keep_severity: bool = False) -> dict[str, Any]:
    """A failed result for an expectation that could not be evaluated.

    A whole suite that could not run is critical whatever it would have checked; one expectation
    whose own metric failed keeps its severity (as great-expectations' engine reports it).
    """
    # A Spark failure's text carries the JVM stack trace: its first line says what went wrong.
    message = f"{type(err).__name__}: {err}"
    if keep_severity:
        message = " ".join(str(err).split("\n\tat ")[0].split())[:MAX_ERROR_CHARS]
    check = _check(spec, False, exception=message)
    return check if keep_severity else {**check, "severity": CRITICAL}


def jsonable(value: Any) -> Any:
    """Plain JSON values: non-finite floats and other objects become strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return jsonable(value.item())
    return str(value)
