"""One frame against one great-expectations suite, its metrics compiled to Spark.

great-expectations names the metrics each expectation needs; the ones this module knows (row count,
null, out-of-range and not-in-set counts, duplicate counts, the row counts of unexpected-rows queries)
are compiled into the branches of one Spark query over the frame, and great-expectations evaluates each
expectation on them (its own ``mostly``, success and result rules). Other expectations run through
great-expectations' Spark engine. The results are plain JSON dicts, one per expectation.

The gate (:mod:`jobs.common.quality`) is what jobs call; this module is its engine.
"""
from __future__ import annotations

import functools
import logging
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from schemas.quality_terms import CRITICAL

LOG = logging.getLogger("stylegraph.quality")

# "BASIC" gives counts and a few unexpected values; "SUMMARY"/"COMPLETE" cost extra Spark jobs.
RESULT_FORMAT: Final = "BASIC"
MAX_EXAMPLES = 5

MAX_ERROR_CHARS = 1000  # of a metric's Spark error in the results (its stack trace is in the log)


def validate_frame(
    gx_context: Any, name: str, frame: DataFrame, expectations: list[Any], *, cache: bool = True
) -> dict[str, Any]:
    """Run one suite on one frame; every expectation's outcome, failures and exceptions included.

    The metrics the suite's expectations need (row count, null and out-of-range counts, duplicate
    counts, the row counts of ``UnexpectedRowsExpectation`` queries) are computed together, as the
    branches of one Spark query over the frame (:func:`_compute_metrics`); unexpected examples are
    fetched afterwards, only for expectations that found some. great-expectations then evaluates
    each expectation on those metrics (``Expectation.metrics_validate``: its own ``mostly``,
    success and result rules), so the results are the ones its Spark engine gives, at a fraction of
    the Spark jobs (that engine runs one or more per expectation). An expectation whose metrics this
    module does not compute (another type, a ``row_condition``, a missing column) runs through
    great-expectations' Spark engine as before, in one validation for all such expectations.

    ``cache=False`` leaves the frame as it is: each branch of the metrics query re-reads it.
    """
    owned = cache and not frame.is_cached
    if owned:
        frame = frame.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        columns = list(frame.columns)
        plans: list[_ExpectationPlan] = []
        native: list[Any] = []
        for expectation in expectations:
            try:
                plan = plan_expectation(expectation, columns)
            except Exception:  # an odd configuration: GE's engine reports it the way it always has
                LOG.warning("%s: %s left to great-expectations' engine", name, type(expectation).__name__)
                plan = None
            if plan is None:
                native.append(expectation)
            else:
                plans.append(plan)
        checks = _validate_planned(name, frame, plans) if plans else []
        if native:
            checks += validate_with_gx_engine(gx_context, name, frame, native, cache=cache and not owned)
    finally:
        if owned:
            frame.unpersist()
    # Keep the suite's order so the files read the same each run.
    order = {_key(expectation.configuration): index for index, expectation in enumerate(expectations)}
    checks.sort(key=lambda check: order.get(check.pop("_key"), len(order)))
    return {"success": all(c["success"] for c in checks if c["severity"] == CRITICAL), "expectations": checks}


def validate_with_gx_engine(
    gx_context: Any, name: str, frame: DataFrame, expectations: list[Any], *, cache: bool = True
) -> list[dict[str, Any]]:
    """great-expectations' own Spark engine: one or more Spark jobs per expectation (the fallback)."""
    import great_expectations as gx

    unique = f"{name}.{uuid.uuid4().hex[:8]}"
    batch_definition = (
        # GE persists a batch's frame unless told not to: with cache=False nothing is cached at all.
        gx_context.data_sources.add_spark(unique, persist=cache)
        .add_dataframe_asset(name)
        .add_batch_definition_whole_dataframe("whole")
    )
    suite = gx_context.suites.add(gx.ExpectationSuite(name=unique, expectations=expectations))
    try:
        validation = gx.ValidationDefinition(name=unique, data=batch_definition, suite=suite).run(
            batch_parameters={"dataframe": frame}, result_format=RESULT_FORMAT
        )
        return [_check_result(result) for result in validation.results]
    except Exception as err:  # the whole suite could not run: every expectation counts as failed
        LOG.exception("%s: validation could not run", name)
        return [_unevaluated(expectation, err) for expectation in expectations]


# --- Metrics computed by the gate ---------------------------------------------------------------
# great-expectations names the metrics an expectation needs (``get_validation_dependencies``); the
# ones below are computed here. A metric is an aggregate over the frame (a Spark Column), a count
# query over it (Spark SQL with ``{batch}``), a constant (the columns), or examples fetched when the
# count they belong to is above zero.
_TABLE_COLUMNS = "table.columns"
_TABLE_ROW_COUNT = "table.row_count"
_NONNULL = "column_values.nonnull"
_BETWEEN = "column_values.between"
_IN_SET = "column_values.in_set"
_UNIQUE = "column_values.unique"
_COMPOUND_UNIQUE = "compound_columns.unique"
_ROWS_QUERY = "unexpected_rows_query"
_UNEXPECTED_COUNT = ".unexpected_count"
_UNEXPECTED_VALUES = ".unexpected_values"
_FILTERED_ROW_COUNT = ".filtered_row_count"
_ROWS_QUERY_COUNT = f"{_ROWS_QUERY}.row_count"
_ROWS_QUERY_TABLE = f"{_ROWS_QUERY}.table"
_ROW_METRICS = (_NONNULL, _BETWEEN, _IN_SET)  # decided row by row: one aggregate each
_GROUP_METRICS = (_UNIQUE, _COMPOUND_UNIQUE)  # decided by counting equal values: one GROUP BY each
_BATCH = "batch"
# What great-expectations' Spark engine fetches: 20 examples of a map expectation
# (``partial_unexpected_count``), 200 rows of an unexpected-rows query (``MAX_RESULT_RECORDS``).
_PARTIAL_UNEXPECTED = 20
_MAX_QUERY_ROWS = 200


@dataclass
class _Metric:
    """How to get one metric: exactly one of aggregate, query, constant or examples is set."""

    aggregate: Any = None  # Column: an aggregate over the frame
    query: str | None = None  # SQL over {batch} returning one row, one number
    constant: Any = None
    examples: Any = None  # (frame -> DataFrame of examples) or a SQL query over {batch}
    count_id: Any = None  # examples: the metric whose count > 0 makes them worth fetching
    as_dicts: bool = False  # examples as {column: value} dicts (multi-column and query rows)
    limit: int = _PARTIAL_UNEXPECTED
    is_constant: bool = False


@dataclass
class _ExpectationPlan:
    expectation: Any
    metric_ids: list[Any]  # the MetricConfiguration ids metrics_validate asks for
    metrics: dict[Any, _Metric]


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


def _row_unexpected(map_metric: str, column: str, kwargs: Mapping[str, Any]) -> Any:
    """The rows a column map metric counts as unexpected (a boolean Column, never null)."""
    col = F.col(_q(column))
    if map_metric == _NONNULL:
        return col.isNull()
    if map_metric == _BETWEEN:
        return col.isNotNull() & ~F.coalesce(_between(col, kwargs), F.lit(False))
    value_set = list(kwargs.get("value_set") or [])
    return col.isNotNull() & ~F.coalesce(col.isin(value_set), F.lit(False))


def _group_domain(map_metric: str, domain: Mapping[str, Any]) -> tuple[list[str], str]:
    """The grouped columns of a uniqueness metric and the SQL filter of the rows it looks at."""
    if map_metric == _UNIQUE:
        column = domain["column"]
        return [column], f"{_q(column)} IS NOT NULL"
    columns = list(domain["column_list"])
    ignore = domain.get("ignore_row_if", "all_values_are_missing")
    if ignore == "all_values_are_missing":
        return columns, "NOT (" + " AND ".join(f"{_q(c)} IS NULL" for c in columns) + ")"
    if ignore == "any_value_is_missing":
        return columns, " AND ".join(f"{_q(c)} IS NOT NULL" for c in columns)
    return columns, "TRUE"


def _duplicates_sql(columns: list[str], where: str) -> str:
    keys = ", ".join(_q(c) for c in columns)
    return f"SELECT {keys}, count(*) AS n FROM {{{_BATCH}}} WHERE {where} GROUP BY {keys} HAVING count(*) > 1"


def _examples_limit(value_kwargs: Mapping[str, Any]) -> int:
    result_format = value_kwargs.get("result_format") or {}
    return int(result_format.get("partial_unexpected_count", _PARTIAL_UNEXPECTED))


def plan_expectation(expectation: Any, columns: Sequence[str]) -> _ExpectationPlan | None:
    """The metrics of one expectation as Spark aggregates and queries; None: leave it to GE's engine.

    ``columns`` are the frame's, in order (``table.columns`` is that list).
    """
    dependencies = expectation.get_validation_dependencies(
        execution_engine=None, runtime_configuration={"result_format": RESULT_FORMAT}
    )
    configs = dict(dependencies.metric_configurations)
    metrics: dict[Any, _Metric] = {}
    counts = {name: config.id for name, config in configs.items() if name.endswith(_UNEXPECTED_COUNT)}
    for name, config in configs.items():
        domain = config.metric_domain_kwargs
        value_kwargs = config.metric_value_kwargs
        if domain.get("row_condition") is not None:
            return None
        used = [domain["column"]] if domain.get("column") else list(domain.get("column_list") or [])
        if any(c not in set(columns) for c in used):
            return None  # GE's engine says which column is missing, without a Spark job
        base, suffix = (name.rsplit(".", 1) + [""])[:2]
        suffix = f".{suffix}"
        if name == _TABLE_COLUMNS:
            metrics[config.id] = _Metric(constant=list(columns), is_constant=True)
        elif name == _TABLE_ROW_COUNT:
            metrics[config.id] = _Metric(aggregate=F.count(F.lit(1)))
        elif base in _ROW_METRICS and suffix == _UNEXPECTED_COUNT:
            unexpected = _row_unexpected(base, domain["column"], value_kwargs)
            metrics[config.id] = _Metric(aggregate=F.count(F.when(unexpected, 1)))
        elif base in _ROW_METRICS and suffix == _UNEXPECTED_VALUES:
            unexpected = _row_unexpected(base, domain["column"], value_kwargs)
            column = domain["column"]
            metrics[config.id] = _Metric(
                examples=lambda df, u=unexpected, c=column: df.filter(u).select(_q(c)),
                count_id=counts.get(f"{base}{_UNEXPECTED_COUNT}"),
                limit=_examples_limit(value_kwargs),
            )
        elif base in _GROUP_METRICS and suffix == _UNEXPECTED_COUNT:
            keys, where = _group_domain(base, domain)
            metrics[config.id] = _Metric(
                query=f"SELECT coalesce(sum(n), 0) FROM ({_duplicates_sql(keys, where)})"
            )
        elif base in _GROUP_METRICS and suffix == _UNEXPECTED_VALUES:
            keys, where = _group_domain(base, domain)
            key_list = ", ".join(_q(c) for c in keys)
            # Rows of duplicated values, as GE's window over the values picks them (fetched on failure).
            metrics[config.id] = _Metric(
                examples=(
                    f"SELECT {key_list} FROM (SELECT {key_list}, count(*) OVER (PARTITION BY {key_list}) "
                    f"AS n FROM {{{_BATCH}}} WHERE {where}) WHERE n > 1"
                ),
                count_id=counts.get(f"{base}{_UNEXPECTED_COUNT}"),
                as_dicts=base == _COMPOUND_UNIQUE,
                limit=_examples_limit(value_kwargs),
            )
        elif base == _COMPOUND_UNIQUE and suffix == _FILTERED_ROW_COUNT:
            _, where = _group_domain(base, domain)
            metrics[config.id] = _Metric(aggregate=F.count(F.when(F.expr(where), 1)))
        elif name == _ROWS_QUERY_COUNT:
            metrics[config.id] = _Metric(query=f"SELECT count(*) FROM ({value_kwargs[_ROWS_QUERY]})")
        elif name == _ROWS_QUERY_TABLE and RESULT_FORMAT != "COMPLETE":
            # Only the COMPLETE format reports the rows: fetching them would be a second pass for nothing.
            metrics[config.id] = _Metric(constant=[], is_constant=True)
        elif name == _ROWS_QUERY_TABLE:
            metrics[config.id] = _Metric(
                examples=value_kwargs[_ROWS_QUERY],
                count_id=configs[_ROWS_QUERY_COUNT].id if _ROWS_QUERY_COUNT in configs else None,
                as_dicts=True,
                limit=_MAX_QUERY_ROWS,
            )
        else:
            return None
        if metrics[config.id].examples is not None and metrics[config.id].count_id is None:
            return None  # examples without a count to tell when they are needed: not planned
    return _ExpectationPlan(expectation, [config.id for config in configs.values()], metrics)


def _validate_planned(name: str, frame: DataFrame, plans: list[_ExpectationPlan]) -> list[dict[str, Any]]:
    """Compute the plans' metrics together, fetch examples where needed, let GE evaluate each."""
    spark = frame.sparkSession
    view = f"quality_{uuid.uuid4().hex[:12]}"
    frame.createOrReplaceTempView(view)
    try:
        wanted: dict[Any, _Metric] = {}
        for plan in plans:
            wanted.update(plan.metrics)
        values, errors = _compute_metrics(spark, frame, view, wanted)
        values.update({metric_id: m.constant for metric_id, m in wanted.items() if m.is_constant})
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
        failed = next((errors[m] for m in plan.metric_ids if m in errors), None)
        if failed is not None:
            checks.append(_unevaluated(plan.expectation, failed, keep_severity=True))
            continue
        try:
            result = plan.expectation.metrics_validate(
                metrics={m: values[m] for m in plan.metric_ids},
                runtime_configuration={"result_format": RESULT_FORMAT},
            )
            checks.append(_check_result(result))
        except Exception as err:  # an expectation GE cannot evaluate on its metrics counts as failed
            LOG.exception("%s: %s could not be evaluated", name, type(plan.expectation).__name__)
            checks.append(_unevaluated(plan.expectation, err, keep_severity=True))
    return checks


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


def ephemeral_context() -> Any:
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
        "_key": _key(config),
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


def _unevaluated(expectation: Any, err: Exception, *, keep_severity: bool = False) -> dict[str, Any]:
    """A failed result for an expectation that could not be evaluated.

    A whole suite that could not run is critical whatever it would have checked; one expectation
    whose own metric failed keeps its severity (as great-expectations' engine reports it).
    """
    config = expectation.configuration
    severity = _severity(config) if keep_severity else CRITICAL
    # A Spark failure's text carries the JVM stack trace: its first line says what went wrong.
    message = f"{type(err).__name__}: {err}"
    if keep_severity:
        message = " ".join(str(err).split("\n\tat ")[0].split())[:MAX_ERROR_CHARS]
    return {
        "_key": _key(config),
        "expectation": config.type,
        "kwargs": jsonable({k: v for k, v in config.kwargs.items() if k != "batch_id"}),
        "description": config.description,
        "severity": severity,
        "success": False,
        "observed_value": None,
        "element_count": None,
        "unexpected_count": None,
        "unexpected_percent": None,
        "unexpected_examples": [],
        "exception": message,
    }


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
