"""Data-quality expectations per dataset, declared once (great-expectations 1.x expectations, as data).

Each entry of :data:`SUITES` maps a dataset name to a function ``(thresholds, context) -> list of
ExpectationSpec``; :func:`jobs.common.quality.run_gate` runs them on a job's staged output. A spec is
great-expectations' expectation type and kwargs as plain data (this module imports no
great-expectations: a job's gate compiles the specs to Spark without loading it;
:func:`jobs.common.quality_metrics.to_gx_expectation` builds the great-expectations object from a spec).
An expectation's ``severity`` says what a failure does: ``critical`` fails the job before it publishes,
``warning`` is recorded only. Every suite starts with its columns and a row count of at least one, so
an empty frame or a missing column fails with a message saying so.

The gate computes a suite's metrics together (one Spark query per dataset, see
:func:`jobs.common.quality_metrics.validate_frame`) and applies great-expectations' rules to them.
Checks that span rows (one positive per test user, src != dst) are ``UnexpectedRowsExpectation``
Spark-SQL queries that must return no rows; the NCF ones share one per-user aggregation.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from schemas import embeddings, gremlin, interactions, similarity
from schemas.quality_terms import (
    CRITICAL,
    EMBEDDING_DIM,
    EMBEDDINGS,
    EXPECT_COLUMN_TO_EXIST,
    EXPECT_COMPOUND_UNIQUE,
    EXPECT_TABLE_ROW_COUNT_BETWEEN,
    EXPECT_VALUES_BETWEEN,
    EXPECT_VALUES_IN_SET,
    EXPECT_VALUES_NOT_NULL,
    EXPECT_VALUES_UNIQUE,
    FUNNEL_DATASET,
    GREMLIN_EDGES,
    GREMLIN_VERTICES,
    GROUP_FLAGGED,
    GROUP_REPEATS,
    GROUP_ROWS,
    LEAVE_ONE_OUT,
    N_ITEMS,
    N_USERS,
    RAW_INTERACTIONS,
    REJECT_FRACTION,
    ROWS_IN,
    RULE_BAD_VECTORS,
    RULE_COLUMNS_EQUAL,
    RULE_GROUPS_ABOVE,
    RULE_GROUPS_WHERE,
    RULE_NOT_FINITE,
    RULE_TEXT_NOT_FINITE,
    SIMILARITY_EDGES,
    TEST,
    TEST_NEGATIVES,
    TOP_K,
    TRAIN,
    UNEXPECTED_ROWS,
    WARNING,
    ExpectationSpec,
    QualityThresholds,
    RowsRule,
)

# Gremlin CSV headers as the bulk loader reads them (system columns and the edge score).
GREMLIN_ID = gremlin.ID
GREMLIN_LABEL = gremlin.LABEL
GREMLIN_FROM = gremlin.FROM
GREMLIN_TO = gremlin.TO
GREMLIN_SCORE = gremlin.EDGE_SCORE

Suite = Callable[[QualityThresholds, Mapping[str, Any]], list[ExpectationSpec]]


def _q(column: str) -> str:
    """A column name quoted for Spark SQL (``~id`` and ``score:Double`` need backticks)."""
    return "`" + column.replace("`", "``") + "`"


def _expect(type_: str, *, severity: str, description: str, **kwargs: Any) -> ExpectationSpec:
    return ExpectationSpec(type=type_, kwargs=kwargs, severity=severity, description=description)


def _rows(query: str, *, severity: str, description: str) -> ExpectationSpec:
    """A Spark-SQL query over ``{batch}`` that must return no rows (``UnexpectedRowsExpectation``)."""
    return _expect(UNEXPECTED_ROWS, unexpected_rows_query=query, severity=severity, description=description)


def _rule_rows(rule: RowsRule, shown: Sequence[str], *, severity: str, description: str) -> ExpectationSpec:
    """An unexpected-rows expectation declared as a :class:`RowsRule`; its query is the rule's SQL
    (selecting ``shown`` columns), so a gate can count the rule on Arrow batches or run the query."""
    columns = [_q(c) for c in rule.columns]
    select = ", ".join(_q(c) for c in shown)
    if rule.kind == RULE_COLUMNS_EQUAL:
        query = f"SELECT {select} FROM {{batch}} WHERE {columns[0]} = {columns[1]}"
    elif rule.kind == RULE_NOT_FINITE:
        value = columns[0]
        query = f"SELECT {select} FROM {{batch}} WHERE isnan({value}) OR abs({value}) = double('inf')"
    elif rule.kind == RULE_TEXT_NOT_FINITE:
        value = f"try_cast({columns[0]} AS DOUBLE)"
        query = (
            f"SELECT {select} FROM {{batch}} "
            f"WHERE {value} IS NULL OR isnan({value}) OR abs({value}) = double('inf')"
        )
    elif rule.kind == RULE_GROUPS_WHERE:
        query = _per_group(rule)
    elif rule.kind == RULE_BAD_VECTORS:
        status, vector = columns
        wrong_size = f"size({vector}) != {rule.size}" if rule.size is not None else f"size({vector}) = 0"
        query = (
            f"SELECT {select} FROM {{batch}} WHERE {status} = '{rule.value}' AND ({vector} IS NULL OR "
            f"{wrong_size} OR exists({vector}, x -> x IS NULL OR isnan(x) OR abs(x) = double('inf')))"
        )
    else:
        keys = ", ".join(columns)
        query = f"SELECT {keys}, count(*) AS n FROM {{batch}} GROUP BY {keys} HAVING count(*) > {rule.limit}"
    return _expect(
        UNEXPECTED_ROWS, unexpected_rows_query=query, severity=severity, description=description
    ).with_rule(rule)


def _mostly(mostly: float) -> dict[str, float]:
    """``mostly`` as great-expectations records it: left out at its default, 1.0."""
    return {} if mostly == 1.0 else {"mostly": mostly}


def _table(columns: Sequence[str]) -> list[ExpectationSpec]:
    """The shape every suite starts with: the columns exist and there is at least one row."""
    return [
        *(
            _expect(
                EXPECT_COLUMN_TO_EXIST,
                column=column,
                severity=CRITICAL,
                description=f"column {column} exists",
            )
            for column in columns
        ),
        _expect(EXPECT_TABLE_ROW_COUNT_BETWEEN, min_value=1, severity=CRITICAL, description="not empty"),
    ]


def _not_null(column: str, *, mostly: float = 1.0, severity: str = CRITICAL) -> ExpectationSpec:
    return _expect(
        EXPECT_VALUES_NOT_NULL,
        column=column,
        **_mostly(mostly),
        severity=severity,
        description=f"{column} is never blank",
    )


def _between(
    column: str, low: float | None, high: float | None, *, severity: str, description: str
) -> ExpectationSpec:
    """``low <= column <= high`` on non-null values (great-expectations records the bounds as floats)."""
    bounds = {
        key: float(value) for key, value in (("min_value", low), ("max_value", high)) if value is not None
    }
    return _expect(EXPECT_VALUES_BETWEEN, column=column, **bounds, severity=severity, description=description)


def _index_in_range(column: str, size: int | None) -> list[ExpectationSpec]:
    """``0 <= column < size`` (only ``>= 0`` when the size is not known) and never null."""
    upper = f" < {size}" if size is not None else ""
    return [
        _not_null(column),
        _between(
            column,
            0,
            size - 1 if size is not None else None,
            severity=CRITICAL,
            description=f"0 <= {column}{upper}",
        ),
    ]


def raw_interactions_suite(
    thresholds: QualityThresholds, context: Mapping[str, Any]
) -> list[ExpectationSpec]:
    """Raw interaction events as read: mostly complete, known event types (the rest is rejected)."""
    mostly = thresholds.min_accepted_fraction
    severity = thresholds.share_severity(context.get(ROWS_IN))
    return [
        *_table(interactions.REQUIRED_FIELDS),
        *(
            _not_null(column, mostly=mostly, severity=severity)
            for column in (interactions.USER_ID, interactions.ITEM_ID, interactions.EVENT_TIME)
        ),
        _expect(
            EXPECT_VALUES_IN_SET,
            column=interactions.EVENT_TYPE,
            **_mostly(mostly),
            value_set=list(interactions.EVENT_TYPES),
            severity=severity,
            description=f"event_type is one of {', '.join(interactions.EVENT_TYPES)}",
        ),
    ]


def _ncf_rows(context: Mapping[str, Any]) -> list[ExpectationSpec]:
    return [
        *_table((interactions.USER_IDX, interactions.ITEM_IDX, interactions.LABEL)),
        *_index_in_range(interactions.USER_IDX, context.get(N_USERS)),
        *_index_in_range(interactions.ITEM_IDX, context.get(N_ITEMS)),
        _expect(
            EXPECT_VALUES_IN_SET,
            column=interactions.LABEL,
            value_set=[0.0, 1.0],
            severity=CRITICAL,
            description="label is 0 or 1",
        ),
        _not_null(interactions.LABEL),
    ]


# The NCF checks that span rows read ONE per-user aggregation, written the same way in each query: the
# gate runs a suite's queries as branches of one Spark query, and Spark computes a shared aggregation
# (an identical exchange) once for all of them. A user's items are distinct when its non-null items
# number as many as their set; null items count as one value, as a GROUP BY on the pair would.
USER_ROWS = "n_rows"
REPEATED_ITEMS = "repeated_items"
POSITIVES = "positives"
_GROUP_STAT_COLUMNS = {GROUP_ROWS: USER_ROWS, GROUP_REPEATS: REPEATED_ITEMS, GROUP_FLAGGED: POSITIVES}


def _per_group(rule: RowsRule) -> str:
    """The groups (and their counts) a ``groups_where`` rule selects, from the shared per-group
    aggregation of its (key, value, flag) columns.

    Per-user counts instead of a GROUP BY on (user_idx, item_idx): NCF sets have tens of millions of
    rows, and a pair GROUP BY shuffles every one of them (about 2.5x slower here at 10 M rows), while
    per-user partial aggregates shrink before the shuffle. (``ExpectCompoundColumnsToBeUnique`` on
    GE's own engine is a window over every row, and ran a 3 GB driver out of heap at 10 M events.)
    """
    key, value, flag = (_q(column) for column in rule.columns)
    assert rule.stat is not None
    return (
        f"SELECT {key}, {USER_ROWS}, {REPEATED_ITEMS}, {POSITIVES} FROM ("
        f"SELECT {key}, count(*) AS {USER_ROWS}, "
        f"count({value}) - size(collect_set({value})) + greatest(count(*) - count({value}) - 1, 0) "
        f"AS {REPEATED_ITEMS}, "
        f"sum(CASE WHEN {flag} = 1 THEN 1 ELSE 0 END) AS {POSITIVES} "
        f"FROM {{batch}} GROUP BY {key}) WHERE {_GROUP_STAT_COLUMNS[rule.stat]} {rule.op} {rule.limit}"
    )


def _per_user(stat: str, op: str, limit: int, *, severity: str, description: str) -> ExpectationSpec:
    """The users whose ``stat`` (their rows, repeated items or positives) is ``op limit``."""
    rule = RowsRule(
        RULE_GROUPS_WHERE,
        (interactions.USER_IDX, interactions.ITEM_IDX, interactions.LABEL),
        limit=limit,
        stat=stat,
        op=op,
    )
    return _rule_rows(rule, (), severity=severity, description=description)


def _pairs_once(*, severity: str, description: str) -> ExpectationSpec:
    """Each (user_idx, item_idx) at most once: the users who repeat an item."""
    return _per_user(GROUP_REPEATS, ">", 0, severity=severity, description=description)


def ncf_train_suite(thresholds: QualityThresholds, context: Mapping[str, Any]) -> list[ExpectationSpec]:
    """NCF training rows: indexes in range, labels 0/1, each (user, item) once."""
    return [
        *_ncf_rows(context),
        _pairs_once(severity=WARNING, description="each (user_idx, item_idx) pair appears once"),
    ]


def ncf_test_suite(thresholds: QualityThresholds, context: Mapping[str, Any]) -> list[ExpectationSpec]:
    """NCF test rows: one positive per user (leave-one-out; at least one otherwise) plus negatives."""
    leave_one_out = context.get(LEAVE_ONE_OUT, True)
    expectations = [
        *_ncf_rows(context),
        _per_user(
            GROUP_FLAGGED,
            "!=" if leave_one_out else "<",
            1,
            severity=CRITICAL,
            description=(
                "every test user has exactly one positive (leave-one-out)"
                if leave_one_out
                else "every test user has at least one positive"
            ),
        ),
        _pairs_once(
            severity=CRITICAL,
            description="a user's test items are distinct (negatives never repeat the positive)",
        ),
    ]
    negatives = context.get(TEST_NEGATIVES)
    if negatives is not None and leave_one_out:
        expectations.append(
            _per_user(
                GROUP_ROWS,
                "!=",
                int(negatives) + 1,
                # A user who has seen almost every item cannot get all of them: recorded, not fatal.
                severity=WARNING,
                description=f"every test user has 1 positive + {int(negatives)} negatives",
            )
        )
    return expectations


def embeddings_suite(thresholds: QualityThresholds, context: Mapping[str, Any]) -> list[ExpectationSpec]:
    """One row per product; "ok" rows carry a finite vector of one size.

    The share of products that failed to embed is the stage's reject share (the funnel check).
    """
    status, vector = _q(embeddings.STATUS), _q(embeddings.EMBEDDING)
    dim = context.get(EMBEDDING_DIM)
    size = int(dim) if dim is not None else None
    # With the size known, the finite-vector rule also checks every vector has it: one size for all.
    same_size = [] if size is not None else [
        _rows(
            (
                f"SELECT n FROM (SELECT count(DISTINCT size({vector})) AS n FROM {{batch}} "
                f"WHERE {status} = '{embeddings.STATUS_OK}') WHERE n > 1"
            ),
            severity=CRITICAL,
            description="all embeddings have the same size",
        ),
    ]
    return [
        *_table((embeddings.SKU, embeddings.EMBEDDING, embeddings.STATUS)),
        _not_null(embeddings.SKU),
        _expect(
            EXPECT_VALUES_UNIQUE, column=embeddings.SKU, severity=CRITICAL, description="one row per sku"
        ),
        _not_null(embeddings.STATUS),
        _expect(
            EXPECT_VALUES_IN_SET,
            column=embeddings.STATUS,
            value_set=[embeddings.STATUS_OK, embeddings.STATUS_ERROR],
            severity=CRITICAL,
            description="status is ok or error",
        ),
        _rule_rows(
            RowsRule(
                RULE_BAD_VECTORS, (embeddings.STATUS, embeddings.EMBEDDING), value=embeddings.STATUS_OK,
                size=size,
            ),
            (embeddings.SKU,),
            severity=CRITICAL,
            description="every ok row has a finite embedding" + (f" of {size} floats" if size else ""),
        ),
        *same_size,
    ]


def similarity_edges_suite(
    thresholds: QualityThresholds, context: Mapping[str, Any]
) -> list[ExpectationSpec]:
    """Similarity edges: no self-loops, each pair once, finite scores; ranks 1..k in top-k mode."""
    expectations = [
        *_table((similarity.SRC, similarity.DST, similarity.SCORE)),
        *(_not_null(column) for column in (similarity.SRC, similarity.DST, similarity.SCORE)),
        _rule_rows(
            RowsRule(RULE_COLUMNS_EQUAL, (similarity.SRC, similarity.DST)),
            (similarity.SRC, similarity.DST),
            severity=CRITICAL,
            description="no product is its own neighbour (src != dst)",
        ),
        _rule_rows(
            RowsRule(RULE_NOT_FINITE, (similarity.SCORE,)),
            (similarity.SRC, similarity.DST, similarity.SCORE),
            severity=CRITICAL,
            description="scores are finite (no NaN, no Infinity)",
        ),
        _expect(
            EXPECT_COMPOUND_UNIQUE,
            column_list=[similarity.SRC, similarity.DST],
            severity=CRITICAL,
            description="each (src, dst) pair once",
        ),
    ]
    top_k = context.get(TOP_K)
    if top_k is not None:
        expectations += [
            _not_null(similarity.RANK),
            _between(
                similarity.RANK, 1, int(top_k), severity=CRITICAL, description=f"1 <= rank <= {int(top_k)}"
            ),
            _rule_rows(
                RowsRule(RULE_GROUPS_ABOVE, (similarity.SRC,), int(top_k)),
                (),
                severity=CRITICAL,
                description=f"at most {int(top_k)} neighbours per product",
            ),
        ]
    return expectations


def gremlin_vertices_suite(
    thresholds: QualityThresholds, context: Mapping[str, Any]
) -> list[ExpectationSpec]:
    """Neptune vertices: every ``~id`` present and unique (duplicates would merge), labelled."""
    return [
        *_table((GREMLIN_ID, GREMLIN_LABEL)),
        _not_null(GREMLIN_ID),
        _expect(
            EXPECT_VALUES_UNIQUE,
            column=GREMLIN_ID,
            severity=CRITICAL,
            description="~id is unique (duplicates merge in Neptune)",
        ),
        _not_null(GREMLIN_LABEL),
    ]


def gremlin_edges_suite(thresholds: QualityThresholds, context: Mapping[str, Any]) -> list[ExpectationSpec]:
    """Neptune edges: required system columns present, no self-loops, a finite Double score."""
    return [
        *_table((GREMLIN_ID, GREMLIN_FROM, GREMLIN_TO, GREMLIN_LABEL, GREMLIN_SCORE)),
        *(_not_null(column) for column in (GREMLIN_ID, GREMLIN_FROM, GREMLIN_TO, GREMLIN_LABEL)),
        _expect(EXPECT_VALUES_UNIQUE, column=GREMLIN_ID, severity=CRITICAL, description="~id is unique"),
        _rule_rows(
            RowsRule(RULE_COLUMNS_EQUAL, (GREMLIN_FROM, GREMLIN_TO)),
            (GREMLIN_FROM, GREMLIN_TO),
            severity=CRITICAL,
            description="no self-loop edges (~from != ~to)",
        ),
        _rule_rows(
            RowsRule(RULE_TEXT_NOT_FINITE, (GREMLIN_SCORE,)),
            (GREMLIN_FROM, GREMLIN_TO, GREMLIN_SCORE),
            severity=CRITICAL,
            description="score:Double is a finite number on every edge",
        ),
    ]


def funnel_suite(thresholds: QualityThresholds, context: Mapping[str, Any]) -> list[ExpectationSpec]:
    """The stage's counts: something came in, and no more than the allowed share was rejected."""
    return [
        *_table((REJECT_FRACTION,)),
        _expect(
            EXPECT_VALUES_NOT_NULL,
            column=REJECT_FRACTION,
            severity=CRITICAL,
            description="the stage read at least one row",
        ),
        _between(
            REJECT_FRACTION,
            0.0,
            thresholds.max_reject_fraction,
            severity=thresholds.share_severity(context.get(ROWS_IN)),
            description=f"at most {thresholds.max_reject_fraction:.0%} of input rows rejected",
        ),
    ]


SUITES: dict[str, Suite] = {
    RAW_INTERACTIONS: raw_interactions_suite,
    TRAIN: ncf_train_suite,
    TEST: ncf_test_suite,
    EMBEDDINGS: embeddings_suite,
    SIMILARITY_EDGES: similarity_edges_suite,
    GREMLIN_VERTICES: gremlin_vertices_suite,
    GREMLIN_EDGES: gremlin_edges_suite,
    FUNNEL_DATASET: funnel_suite,
}
