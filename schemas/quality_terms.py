"""The terms a data-quality gate and its suites share: dataset names, severities, context keys, limits.

:mod:`schemas.expectations` declares a suite per dataset name below; :mod:`jobs.common.quality` runs the
suites on a job's staged output. Both read these names from here, so the suites know no job.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

# What a failed expectation does: critical fails the job before it publishes, warning is recorded only.
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


# great-expectations' names of the expectation types the suites declare (``ExpectationSpec.type``).
EXPECT_COLUMN_TO_EXIST = "expect_column_to_exist"
EXPECT_TABLE_ROW_COUNT_BETWEEN = "expect_table_row_count_to_be_between"
EXPECT_VALUES_NOT_NULL = "expect_column_values_to_not_be_null"
EXPECT_VALUES_BETWEEN = "expect_column_values_to_be_between"
EXPECT_VALUES_IN_SET = "expect_column_values_to_be_in_set"
EXPECT_VALUES_UNIQUE = "expect_column_values_to_be_unique"
EXPECT_COMPOUND_UNIQUE = "expect_compound_columns_to_be_unique"
UNEXPECTED_ROWS = "unexpected_rows_expectation"


# Row rules: what an unexpected-rows query selects, as data, so that a gate can also count it on Arrow
# batches where they are written (jobs.common.quality_pass); the suite writes the same rule as its SQL.
RULE_COLUMNS_EQUAL = "columns_equal"  # rows where columns[0] = columns[1] (both non-null)
RULE_NOT_FINITE = "not_finite"  # rows where columns[0] is NaN or +-Infinity
RULE_GROUPS_ABOVE = "groups_above"  # groups of the columns with more than `limit` rows (one row each)
RULE_TEXT_NOT_FINITE = "text_not_finite"  # rows where the text columns[0] is null or not a finite double
# groups of columns[0] whose statistic `stat` is `op` `limit` (one row each); the statistics of a group:
GROUP_ROWS = "rows"  # its rows
GROUP_REPEATS = "repeats"  # its rows whose columns[1] repeats another row's (nulls count as one value)
GROUP_FLAGGED = "flagged"  # its rows where columns[2] = 1
GROUP_STATS = (GROUP_ROWS, GROUP_REPEATS, GROUP_FLAGGED)
GROUP_OPS = ("!=", "<", ">")
RULE_GROUPS_WHERE = "groups_where"
# rows where columns[0] = `value` and the float list columns[1] is null, not of `size` elements (no `size`:
# empty), or holds a null, NaN or +-Infinity
RULE_BAD_VECTORS = "bad_vectors"
RULES = (
    RULE_COLUMNS_EQUAL, RULE_NOT_FINITE, RULE_GROUPS_ABOVE, RULE_TEXT_NOT_FINITE, RULE_GROUPS_WHERE,
    RULE_BAD_VECTORS,
)


@dataclass(frozen=True)
class RowsRule:
    """The rows an unexpected-rows query returns, as data: ``kind`` (one of :data:`RULES`) over
    ``columns``; ``limit`` is the largest allowed group (``groups_above``) or what a group's statistic
    ``stat`` is compared to with ``op`` (``groups_where``: groups of ``columns = (key, value, flag)``);
    ``value`` and ``size`` are the status and vector size of ``bad_vectors``."""

    kind: str
    columns: tuple[str, ...]
    limit: int | None = None
    stat: str | None = None
    op: str | None = None
    value: str | None = None
    size: int | None = None

    def __post_init__(self) -> None:
        arity = {
            RULE_COLUMNS_EQUAL: 2, RULE_NOT_FINITE: 1, RULE_TEXT_NOT_FINITE: 1, RULE_GROUPS_WHERE: 3,
            RULE_BAD_VECTORS: 2,
        }
        if self.kind not in RULES:
            raise ValueError(f"rule kind must be one of {RULES}, got {self.kind!r}")
        if self.kind in arity and len(self.columns) != arity[self.kind]:
            raise ValueError(f"{self.kind} takes {arity[self.kind]} column(s), got {self.columns}")
        limited = self.kind in (RULE_GROUPS_ABOVE, RULE_GROUPS_WHERE)
        if limited != (self.limit is not None) or not self.columns:
            raise ValueError(f"{self.kind}: columns {self.columns}, limit {self.limit}")
        compared = self.kind == RULE_GROUPS_WHERE
        if compared != (self.stat in GROUP_STATS and self.op in GROUP_OPS) or (
            not compared and (self.stat, self.op) != (None, None)
        ):
            raise ValueError(f"{self.kind}: statistic {self.stat!r} {self.op!r}")
        vectors = self.kind == RULE_BAD_VECTORS
        if vectors != (self.value is not None) or (not vectors and self.size is not None):
            raise ValueError(f"{self.kind}: value {self.value!r}, size {self.size!r}")
        if self.value is not None and "'" in self.value:
            raise ValueError(f"{self.kind}: a value with a quote cannot be written in its query")


@dataclass(frozen=True)
class ExpectationSpec:
    """One expectation as plain data: great-expectations' type name and kwargs, plus what a failure does.

    ``kwargs`` are the ones great-expectations reports for the expectation (its configuration's
    ``kwargs``: defaults left out, bounds of ``expect_column_values_to_be_between`` as floats), so the
    results read the same whichever engine evaluated it.

    Attributes:
        type: the expectation type, e.g. ``expect_column_values_to_not_be_null``.
        kwargs: its arguments (``column``, ``mostly``, ``unexpected_rows_query``...).
        severity: ``critical`` (fails the job before it publishes) or ``warning`` (recorded only).
        description: what it checks, in words; unique within a suite.
        rule: an unexpected-rows query's rows as data (:class:`RowsRule`; the query is its SQL).
    """

    type: str
    kwargs: Mapping[str, Any]
    severity: str = CRITICAL
    description: str = ""
    rule: RowsRule | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kwargs", MappingProxyType(dict(self.kwargs)))
        if self.severity not in (CRITICAL, WARNING):
            raise ValueError(f"severity must be {CRITICAL!r} or {WARNING!r}, got {self.severity!r}")

    def with_rule(self, rule: RowsRule) -> ExpectationSpec:
        """This spec, declaring the rows its query selects as ``rule``."""
        return ExpectationSpec(self.type, self.kwargs, self.severity, self.description, rule)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickled with its kwargs as a dict (a mapping proxy does not pickle): specs travel to tasks."""
        return (ExpectationSpec, (self.type, dict(self.kwargs), self.severity, self.description, self.rule))


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
