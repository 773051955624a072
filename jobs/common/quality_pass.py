"""A suite's metrics counted on Arrow batches where they are written, and the proof that many writers'
counts add up.

Tasks that write a dataset from Arrow (the similarity tile tasks) give each batch to a
:class:`PassMetrics` as they write it and report its :meth:`~PassMetrics.partial` beside the file; a job
that reads a bounded sample of what it wrote back on the driver (the export's CSVs) counts that sample
as one batch (:func:`table_partial`).
The gate (:mod:`jobs.common.quality`) merges the partials (:func:`merge_partials`) and decides the
suite on them by the rules it applies to a Spark frame, when they prove every expectation met. In any
other case (an expectation this module does not count, a count it cannot prove exact, a single
unexpected row) the gate checks the staged files with Spark, which gives the full result with its
examples. The pass makes a good night cheap; it never decides a bad one.

Counted per batch:
- rows, and nulls per column (Arrow keeps them);
- values outside the bounds of ``expect_column_values_to_be_between`` (numeric columns and bounds);
- rows of a :class:`~schemas.quality_terms.RowsRule`: two columns equal, a float not finite, text not
  proven a finite double (exact when 0, else possibly more than Spark's count: then Spark decides),
  groups above a limit, and groups whose rows, repeated values or flagged rows compare to a limit;
- values outside the set of ``expect_column_values_to_be_in_set``;
- duplicated rows for ``expect_column_values_to_be_unique`` and ``expect_compound_columns_to_be_unique``.

Group counts (duplicates, groups above a limit) are exact within a batch: a batch sorted strictly by
its keys has no duplicate (one comparison per row), and otherwise a hash aggregation counts them. They
add up across batches only when no key is in two batches. So each batch records its extent over the
key columns: the [min, max] of each key column, its first and last key when the batch is sorted by the
keys, and for two key columns of one type which side of the other the first is on every row (``<`` or
``>``: all-pairs edges in each direction). Two batches are apart when the ranges of one key column do
not overlap, when both are sorted and their key intervals do not overlap, or when their sides differ;
for the groups of a ``groups_where`` rule (users of an NCF set) each batch also lists its keys (up to
:data:`MAX_LISTED_KEYS`), and batches that share no listed key are apart whatever their ranges.
:func:`merge_partials` checks every pair of batches whose ranges of the first key column overlap; if
one pair is not proven apart, the count stays unproven.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.quality_terms import (
    EXPECT_COLUMN_TO_EXIST,
    EXPECT_COMPOUND_UNIQUE,
    EXPECT_TABLE_ROW_COUNT_BETWEEN,
    EXPECT_VALUES_BETWEEN,
    EXPECT_VALUES_IN_SET,
    EXPECT_VALUES_NOT_NULL,
    EXPECT_VALUES_UNIQUE,
    GROUP_FLAGGED,
    GROUP_REPEATS,
    GROUP_ROWS,
    RULE_BAD_VECTORS,
    RULE_COLUMNS_EQUAL,
    RULE_GROUPS_ABOVE,
    RULE_GROUPS_WHERE,
    RULE_NOT_FINITE,
    RULE_TEXT_NOT_FINITE,
    UNEXPECTED_ROWS,
    ExpectationSpec,
)

# Keys of a partial (plain JSON: it travels from the tasks as a string column).
ROWS = "rows"
NULLS = "nulls"
COUNTS = "counts"  # expectation index -> unexpected rows (or groups) counted
UNPROVEN = "unproven"  # why a count cannot be trusted, one line each
EXTENTS = "extents"  # one per non-empty batch: {"ranges": {column: [min, max]}, "sorted": {keys: ...}, ...}
SIDES = "sides"  # ... and {keys: "<" or ">"}: the first column below (above) the second on every row
KEYED = "keyed"  # expectation indexes whose counts are group counts (need batches apart)
LISTED = "listed"  # ... and {keys: sorted distinct keys}: a batch's groups of a groups_where rule
# A batch lists its groups' keys (so that batches whose key ranges overlap can still be proven apart)
# up to this many.
MAX_LISTED_KEYS = 200_000

_BOUNDS = ("min_value", "max_value")


def _key_name(keys: Sequence[str]) -> str:
    return "\x1f".join(keys)


def group_keys(spec: ExpectationSpec) -> tuple[str, ...] | None:
    """The columns an expectation groups by (uniqueness, groups above a limit); None: a row count."""
    if spec.type == EXPECT_VALUES_UNIQUE:
        return (spec.kwargs["column"],)
    if spec.type == EXPECT_COMPOUND_UNIQUE:
        return tuple(spec.kwargs["column_list"])
    if spec.type == UNEXPECTED_ROWS and spec.rule is not None and spec.rule.kind == RULE_GROUPS_ABOVE:
        return tuple(spec.rule.columns)
    if spec.type == UNEXPECTED_ROWS and spec.rule is not None and spec.rule.kind == RULE_GROUPS_WHERE:
        return (spec.rule.columns[0],)
    return None


def counts_exactly(spec: ExpectationSpec) -> bool:
    """Whether the pass's count of an unexpected-rows rule is its query's row count whatever it is (the
    text rule's count is exact only at 0)."""
    return spec.type == UNEXPECTED_ROWS and spec.rule is not None and spec.rule.kind != RULE_TEXT_NOT_FINITE


def spec_columns(spec: ExpectationSpec) -> list[str]:
    """The columns an expectation reads (its rule's, else its ``column`` or ``column_list``)."""
    if spec.rule is not None:
        return list(spec.rule.columns)
    kwargs = spec.kwargs
    return [kwargs["column"]] if "column" in kwargs else list(kwargs.get("column_list") or [])


def _uncountable(spec: ExpectationSpec, schema: pa.Schema) -> str | None:
    """Why the pass cannot count this expectation on batches of ``schema`` (None: it can)."""
    kwargs = spec.kwargs
    if spec.type in (EXPECT_COLUMN_TO_EXIST, EXPECT_TABLE_ROW_COUNT_BETWEEN):
        return None
    used = spec_columns(spec)
    missing = [column for column in used if column not in schema.names]
    if missing:
        return f"{spec.type}: column(s) {missing} not in the batches"
    if (
        "mostly" in kwargs
        or kwargs.get("ignore_row_if", "all_values_are_missing") != "all_values_are_missing"
    ):
        return f"{spec.type}: mostly/ignore_row_if are left to Spark"
    if spec.type == EXPECT_VALUES_NOT_NULL:
        return None
    if spec.type == EXPECT_VALUES_BETWEEN:
        numeric = pa.types.is_integer(schema.field(used[0]).type) or pa.types.is_floating(
            schema.field(used[0]).type
        )
        bounds = [kwargs.get(b) for b in _BOUNDS]
        if numeric and all(
            b is None or (isinstance(b, (int, float)) and not isinstance(b, bool)) for b in bounds
        ):
            return None
        return f"{spec.type} on {used[0]}: not numbers"
    if spec.type == EXPECT_VALUES_IN_SET:
        if _same_in_set(schema.field(used[0]).type, kwargs.get("value_set")):
            return None
        return f"{spec.type} on {used[0]}: a value set Spark would compare otherwise"
    keys = group_keys(spec)
    if keys is not None:
        odd = [c for c in keys if not _is_exact_key(schema.field(c).type)]
        if odd:  # floats: -0.0 and 0.0 are one value to Spark, two to Arrow's grouping; NaN has no range
            return f"{spec.type}: key column(s) {odd} are not strings or integers"
    if spec.type in (EXPECT_VALUES_UNIQUE, EXPECT_COMPOUND_UNIQUE):
        return None
    if spec.type == UNEXPECTED_ROWS and spec.rule is not None:
        types = [schema.field(c).type for c in spec.rule.columns]
        if spec.rule.kind == RULE_NOT_FINITE and not pa.types.is_floating(types[0]):
            return f"{spec.rule.kind} on {types[0]}"
        if spec.rule.kind == RULE_TEXT_NOT_FINITE and not (
            pa.types.is_string(types[0]) or pa.types.is_large_string(types[0])
        ):
            return f"{spec.rule.kind} on {types[0]}"
        if spec.rule.kind == RULE_COLUMNS_EQUAL and (types[0] != types[1] or pa.types.is_floating(types[0])):
            return f"{spec.rule.kind} on {types}"  # NaN = NaN is true in Spark, false in Arrow
        if spec.rule.kind == RULE_GROUPS_WHERE and not (
            _is_exact_key(types[1]) and (pa.types.is_integer(types[2]) or pa.types.is_floating(types[2]))
        ):
            return f"{spec.rule.kind} on {types}"
        if spec.rule.kind == RULE_BAD_VECTORS and not (
            (pa.types.is_string(types[0]) or pa.types.is_large_string(types[0]))
            and (pa.types.is_list(types[1]) or pa.types.is_large_list(types[1]))
            and pa.types.is_floating(types[1].value_type)
        ):
            return f"{spec.rule.kind} on {types}"
        return None
    return f"{spec.type} ({spec.description}) is not counted on batches"


def _same_in_set(dtype: pa.DataType, value_set: Any) -> bool:
    """Whether Arrow's ``is_in`` on a column of ``dtype`` finds exactly the values Spark's ``isin`` finds:
    strings against strings, integers against integers, floats against numbers a float of the column's
    width holds exactly (Spark widens a float column to double before comparing: 0.1 is not 0.1f)."""
    if not isinstance(value_set, (list, tuple)) or not value_set:
        return False
    if any(isinstance(value, bool) for value in value_set):
        return False
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return all(isinstance(value, str) for value in value_set)
    if pa.types.is_integer(dtype):
        return all(isinstance(value, int) for value in value_set)
    if pa.types.is_floating(dtype):
        width: Any = {16: np.float16, 32: np.float32, 64: np.float64}[dtype.bit_width]
        return all(
            isinstance(value, (int, float)) and float(width(value)) == value and value == value
            for value in value_set
        )
    return False


@dataclass(frozen=True)
class _Order:
    """A batch's order by a key set: ascending, strictly ascending, and (two keys, ascending) where the
    first key changes (``breaks[i]``: between rows i and i + 1)."""

    ascending: bool
    strictly: bool
    breaks: pa.Array | None = None


def _is_exact_key(dtype: pa.DataType) -> bool:
    """Key types whose equality and order are the same in Arrow, Python and Spark, and whose values are
    plain JSON (the extents travel as JSON): strings and integers."""
    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_integer(dtype)


def _order(table: pa.Table, keys: Sequence[str]) -> _Order:
    """The rows' order by ``keys`` (key columns without nulls), in as few comparisons as it takes: the
    first key ascending, then each later key ascending wherever all earlier ones are tied."""
    if table.num_rows < 2:
        return _Order(True, True)

    def pairs(column: str) -> tuple[pa.Array, pa.Array]:
        values = table.column(column)
        return values.slice(0, len(values) - 1), values.slice(1)

    before, after = pairs(keys[0])
    if len(keys) == 1:
        if not pc.all(pc.less_equal(before, after)).as_py():
            return _Order(False, False)
        return _Order(True, bool(pc.all(pc.less(before, after)).as_py()))
    if not pc.all(pc.less_equal(before, after)).as_py():
        return _Order(False, False)
    changed = pc.not_equal(before, after)  # no tie on the keys so far
    breaks = changed
    for column in keys[1:-1]:
        before, after = pairs(column)
        if not pc.all(pc.or_(changed, pc.less_equal(before, after))).as_py():
            return _Order(False, False)
        changed = pc.or_(changed, pc.not_equal(before, after))
    before, after = pairs(keys[-1])
    if pc.all(pc.or_(changed, pc.less(before, after))).as_py():
        return _Order(True, True, breaks if len(keys) == 2 else None)
    ascending = bool(pc.all(pc.or_(changed, pc.less_equal(before, after))).as_py())
    return _Order(ascending, False, breaks if ascending and len(keys) == 2 else None)


def _second_key_range(table: pa.Table, keys: Sequence[str], breaks: pa.Array) -> list[Any]:
    """[min, max] of the second key of a batch sorted by two keys: the second key ascends within each
    run of the first, so its minimum is among the runs' first rows and its maximum among their last."""
    ends = pc.indices_nonzero(breaks).cast(pa.int64())  # the last row of every run but the final one
    values = table.column(keys[1])
    firsts = pc.take(values, pa.concat_arrays([pa.array([0], pa.int64()), pc.add(ends, 1)]))
    lasts = pc.take(values, pa.concat_arrays([ends, pa.array([table.num_rows - 1], pa.int64())]))
    return [pc.min(firsts).as_py(), pc.max(lasts).as_py()]


def _side(table: pa.Table, keys: Sequence[str], ranges: Mapping[str, list[Any]]) -> str | None:
    """``<`` when the first key is below the second on every row, ``>`` when above, else None (two key
    columns of one type; from their ranges when those are apart, else one comparison per row)."""
    first, second = (table.column(column) for column in keys)
    if first.type != second.type:
        return None
    (low, high), (other_low, other_high) = ranges[keys[0]], ranges[keys[1]]
    if high < other_low:
        return "<"
    if other_high < low:
        return ">"
    if pc.all(pc.less(first, second)).as_py():
        return "<"
    if pc.all(pc.greater(first, second)).as_py():
        return ">"
    return None


# Text that Spark's try_cast and Arrow's cast both read as the same double (Java's parseDouble takes all
# of it); other forms Spark reads too (" 1", "+1", "1d", "Infinity") are counted, not parsed.
PLAIN_DECIMAL = r"^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$"


def _text_not_finite(values: pa.ChunkedArray) -> int:
    """Rows whose text is not proven a finite double: null, not a plain decimal, or one that overflows.
    Exact when 0; a larger count may include text Spark reads as a finite double (the gate then runs the
    rule's SQL), never less than Spark's count."""
    plain = pc.fill_null(pc.match_substring_regex(values, PLAIN_DECIMAL), False)
    numbers = pc.cast(pc.filter(values, plain), pa.float64())
    finite = int(pc.sum(pc.is_finite(numbers)).as_py() or 0)
    return len(values) - finite


_GROUP_OPS: dict[str, np.ufunc] = {"!=": np.not_equal, "<": np.less, ">": np.greater}


def _bad_vectors(table: pa.Table, rule: Any) -> int:
    """Rows where ``rule.columns[0]`` is ``rule.value`` and the vector ``rule.columns[1]`` is null, of
    another size than ``rule.size`` (none given: empty), or holds a null, NaN or infinite element: what
    the rule's query selects. Counted record batch by record batch (memory: one batch's flags)."""
    found = 0
    for batch in table.select(list(rule.columns)).to_batches():
        status, vectors = batch.column(0), batch.column(1)
        chosen = pc.fill_null(pc.equal(status, rule.value), False).to_numpy(zero_copy_only=False)
        lengths = pc.list_value_length(vectors)
        wrong = pc.not_equal(lengths, rule.size) if rule.size is not None else pc.equal(lengths, 0)
        bad = np.array(pc.fill_null(wrong, True).to_numpy(zero_copy_only=False))  # a null vector is bad
        values = pc.list_flatten(vectors)  # the elements of the non-null vectors, in row order
        if len(values):
            rows = np.repeat(np.arange(len(vectors)), pc.fill_null(lengths, 0).to_numpy(zero_copy_only=False))
            not_finite = pc.fill_null(pc.invert(pc.is_finite(values)), True).to_numpy(zero_copy_only=False)
            bad[rows[not_finite]] = True
        found += int(np.count_nonzero(chosen & bad))
    return found


def _group_stats(table: pa.Table, columns: Sequence[str]) -> dict[str, np.ndarray]:
    """Per group of ``columns[0]``: its rows, its repeated ``columns[1]`` values and its rows with
    ``columns[2]`` = 1 (key and value columns free of nulls). A batch whose integer keys come in runs
    of ascending keys (an NCF file: a user's rows together, users sorted) is counted by one sort of
    (key, value) codes; any other by a hash aggregation."""
    key, value, flag = (table.column(column) for column in columns)
    flagged = pc.cast(pc.fill_null(pc.equal(flag, 1), False), pa.int64())
    if pa.types.is_integer(key.type) and pa.types.is_integer(value.type):
        keys = key.to_numpy().astype(np.int64)
        values = value.to_numpy().astype(np.int64)
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        low, span = int(values.min()), int(values.max()) - int(values.min()) + 1
        fits = (int(keys[-1]) - int(keys[0]) + 1) * span < 2**62
        if fits and bool(np.all(keys[starts][1:] > keys[starts][:-1])):
            codes = np.sort((keys - keys[0]) * span + (values - low))
            repeated = np.r_[False, codes[1:] == codes[:-1]].astype(np.int64)
            return {
                GROUP_ROWS: np.diff(np.r_[starts, len(keys)]),
                GROUP_REPEATS: np.add.reduceat(repeated, starts),
                GROUP_FLAGGED: np.add.reduceat(flagged.to_numpy(), starts),
            }
    columns_table = pa.table({"k": key, "v": value, "f": flagged})
    groups = columns_table.group_by("k").aggregate([([], "count_all"), ("v", "count_distinct"), ("f", "sum")])
    rows = groups.column("count_all").to_numpy()
    return {
        GROUP_ROWS: rows,
        GROUP_REPEATS: rows - groups.column("v_count_distinct").to_numpy(),
        GROUP_FLAGGED: groups.column("f_sum").to_numpy(),
    }


def _groups_where(stats: Mapping[str, np.ndarray], rule: Any) -> int:
    """The groups whose statistic meets the rule."""
    return int(np.count_nonzero(_GROUP_OPS[rule.op](stats[rule.stat], rule.limit)))


def _group_sizes(table: pa.Table, keys: Sequence[str]) -> pa.Array:
    return table.group_by(list(keys)).aggregate([([], "count_all")]).column("count_all").combine_chunks()


class PassMetrics:
    """The metrics of ``expectations`` over the batches given to :meth:`add` (one writer's share)."""

    def __init__(self, expectations: Sequence[ExpectationSpec], schema: pa.Schema) -> None:
        self.expectations = list(expectations)
        self.schema = schema
        self.rows = 0
        self.nulls = {name: 0 for name in schema.names}
        self.counts = {index: 0 for index in range(len(self.expectations))}
        self.unproven: list[str] = []
        self.extents: list[dict[str, Any]] = []
        self.keysets: dict[str, tuple[str, ...]] = {}
        self.keyed: list[int] = []
        self.countable: list[int] = []
        self.listed: dict[str, str] = {}  # key set name -> its column, for groups_where rules
        self.grouped_values: set[str] = set()
        for index, spec in enumerate(self.expectations):
            reason = _uncountable(spec, schema)
            if reason is not None:
                self.unproven.append(reason)
                continue
            self.countable.append(index)
            keys = group_keys(spec)
            if keys is not None:
                self.keysets[_key_name(keys)] = keys
                self.keyed.append(index)
            if spec.rule is not None and spec.rule.kind == RULE_GROUPS_WHERE:
                self.listed[_key_name(keys or ())] = spec.rule.columns[0]
                self.grouped_values.add(spec.rule.columns[1])

    def add(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Count one batch of ``schema`` (before or as it is written)."""
        if batch.num_rows == 0:
            return
        table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
        self.rows += table.num_rows
        for name in self.schema.names:
            self.nulls[name] += table.column(name).null_count
        key_columns = sorted({column for keys in self.keysets.values() for column in keys})
        valued = sorted({column for column in self.grouped_values if column in table.column_names})
        if any(table.column(column).null_count for column in [*key_columns, *valued]):
            self.unproven.append(f"nulls in key column(s) {[*key_columns, *valued]}")
            return
        order = {name: _order(table, keys) for name, keys in self.keysets.items()}
        extent = self._extent(table, key_columns, order)
        group_stats: dict[tuple[str, ...], dict[str, np.ndarray]] = {}
        for index in self.countable:
            spec = self.expectations[index]
            try:
                self.counts[index] += self._unexpected(spec, table, order, extent, group_stats)
            except (pa.ArrowException, TypeError, ValueError) as error:  # e.g. a bound the column can't hold
                self.unproven.append(f"{spec.description}: not counted ({type(error).__name__}: {error})")
        if self.keysets:
            self.extents.append(extent)

    def _unexpected(
        self,
        spec: ExpectationSpec,
        table: pa.Table,
        order: Mapping[str, _Order],
        extent: Mapping[str, Any],
        group_stats: dict[tuple[str, ...], dict[str, np.ndarray]],
    ) -> int:
        kwargs = spec.kwargs
        if spec.type in (EXPECT_COLUMN_TO_EXIST, EXPECT_TABLE_ROW_COUNT_BETWEEN, EXPECT_VALUES_NOT_NULL):
            return 0  # decided on the schema, the rows and the nulls
        if spec.type == EXPECT_VALUES_BETWEEN:
            values = table.column(kwargs["column"])
            low, high = kwargs.get("min_value"), kwargs.get("max_value")
            inside = pc.is_valid(values)
            if low is not None:
                inside = pc.and_(
                    inside, (pc.greater if kwargs.get("strict_min") else pc.greater_equal)(values, low)
                )
            if high is not None:
                inside = pc.and_(
                    inside, (pc.less if kwargs.get("strict_max") else pc.less_equal)(values, high)
                )
            return table.num_rows - values.null_count - int(pc.sum(pc.fill_null(inside, False)).as_py() or 0)
        if spec.type == EXPECT_VALUES_IN_SET:
            values = table.column(kwargs["column"])
            value_set = pa.array(list(kwargs["value_set"])).cast(values.type)  # exact: _same_in_set
            inside = pc.sum(pc.is_in(values, value_set=value_set, skip_nulls=True)).as_py() or 0
            return table.num_rows - values.null_count - int(inside)
        rule = spec.rule
        if rule is not None and rule.kind == RULE_GROUPS_WHERE:
            columns = tuple(rule.columns)
            if columns not in group_stats:  # one count per batch for every rule over these columns
                group_stats[columns] = _group_stats(table, columns)
            return _groups_where(group_stats[columns], rule)
        if rule is not None and rule.kind == RULE_COLUMNS_EQUAL:
            pair = tuple(rule.columns)
            if any(extent[SIDES].get(_key_name(keys)) for keys in (pair, pair[::-1])):
                return 0  # one column is below the other on every row: none equal
            return int(
                pc.sum(pc.equal(table.column(rule.columns[0]), table.column(rule.columns[1]))).as_py() or 0
            )
        if rule is not None and rule.kind == RULE_NOT_FINITE:
            values = table.column(rule.columns[0])
            return int(pc.sum(pc.invert(pc.is_finite(values))).as_py() or 0)
        if rule is not None and rule.kind == RULE_TEXT_NOT_FINITE:
            return _text_not_finite(table.column(rule.columns[0]))
        if rule is not None and rule.kind == RULE_BAD_VECTORS:
            return _bad_vectors(table, rule)
        keys = group_keys(spec)
        assert keys is not None
        if rule is not None:  # groups above a limit
            return int(pc.sum(pc.greater(_group_sizes(table, keys), rule.limit)).as_py() or 0)
        if order[_key_name(keys)].strictly:  # no key twice
            return 0
        sizes = _group_sizes(table, keys)
        return int(pc.sum(pc.filter(sizes, pc.greater(sizes, 1))).as_py() or 0)

    def _extent(self, table: pa.Table, columns: Sequence[str], order: Mapping[str, _Order]) -> dict[str, Any]:
        """The batch's [min, max] per key column and, per key set it is sorted by, its first and last key
        (in a sorted batch the first key's range is its first and last values, the second key's range
        comes from the runs of the first: no scan)."""
        ends: dict[str, list[list[Any]]] = {}
        ranges: dict[str, list[Any]] = {}
        for name, keys in self.keysets.items():
            if order[name].ascending:
                first, last = ([table.column(c)[row].as_py() for c in keys] for row in (0, -1))
                ends[name] = [first, last]
                ranges[keys[0]] = [first[0], last[0]]
                breaks = order[name].breaks
                if breaks is not None and keys[1] not in ranges:
                    ranges[keys[1]] = _second_key_range(table, keys, breaks)
        for column in columns:
            if column not in ranges:
                low_high = pc.min_max(table.column(column)).as_py()
                ranges[column] = [low_high["min"], low_high["max"]]
        sides = {}
        for name, keys in self.keysets.items():
            side = _side(table, keys, ranges) if len(keys) == 2 else None
            if side is not None:
                sides[name] = side
        listed = {}
        for name, column in self.listed.items():
            distinct = pc.unique(table.column(column))
            if len(distinct) <= MAX_LISTED_KEYS:
                listed[name] = sorted(distinct.to_pylist())
        return {"ranges": ranges, "sorted": ends, SIDES: sides, LISTED: listed}

    def partial(self) -> dict[str, Any]:
        """What this writer counted, as plain JSON data (:func:`merge_partials` adds them up)."""
        return {
            ROWS: self.rows,
            NULLS: self.nulls,
            COUNTS: {str(index): n for index, n in self.counts.items()},
            UNPROVEN: sorted(set(self.unproven)),
            EXTENTS: self.extents,
            KEYED: self.keyed,
        }


def _apart(one: Mapping[str, Any], other: Mapping[str, Any], name: str, keys: Sequence[str]) -> bool:
    """Whether two batches share no key of ``keys`` (see the module docstring)."""
    for column in keys:
        (low, high), (other_low, other_high) = one["ranges"][column], other["ranges"][column]
        if high < other_low or other_high < low:
            return True
    side, other_side = one[SIDES].get(name), other[SIDES].get(name)
    if side is not None and other_side is not None and side != other_side:
        return True  # every key of one has first < second, every key of the other first > second
    ends, other_ends = one["sorted"].get(name), other["sorted"].get(name)
    if ends is None or other_ends is None:
        return False
    return bool(ends[1] < other_ends[0] or other_ends[1] < ends[0])


def _listed_apart(extents: Sequence[Mapping[str, Any]], name: str) -> bool:
    """Every batch listed its keys of ``name`` and no key is listed twice."""
    lists = [extent.get(LISTED, {}).get(name) for extent in extents]
    if any(keys is None for keys in lists):
        return False
    listed = list(itertools.chain.from_iterable(lists))
    return len(set(listed)) == len(listed)


def _all_apart(extents: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> bool:
    """Every pair of batches apart over ``keys``: pairs compared only where the first column overlaps,
    or no key listed by two batches."""
    name, first = _key_name(keys), keys[0]
    if _listed_apart(extents, name):
        return True
    ordered = sorted(extents, key=lambda extent: extent["ranges"][first][0])
    open_: list[Mapping[str, Any]] = []
    for extent in ordered:
        low = extent["ranges"][first][0]
        open_ = [other for other in open_ if other["ranges"][first][1] >= low]
        if any(not _apart(extent, other, name, keys) for other in open_):
            return False
        open_.append(extent)
    return True


def merge_partials(
    expectations: Sequence[ExpectationSpec], partials: Iterable[Mapping[str, Any]]
) -> dict[str, Any]:
    """The writers' partials added up: ``rows``, ``nulls``, ``counts`` and ``unproven`` (a group count
    whose batches are not proven apart is unproven)."""
    partials = list(partials)
    merged: dict[str, Any] = {ROWS: 0, NULLS: {}, COUNTS: {}, UNPROVEN: []}
    for partial in partials:
        merged[ROWS] += partial[ROWS]
        for column, n in partial[NULLS].items():
            merged[NULLS][column] = merged[NULLS].get(column, 0) + n
        for index, n in partial[COUNTS].items():
            merged[COUNTS][index] = merged[COUNTS].get(index, 0) + n
        merged[UNPROVEN] += partial[UNPROVEN]
    extents = list(itertools.chain.from_iterable(partial[EXTENTS] for partial in partials))
    counted = set.intersection(*(set(partial[KEYED]) for partial in partials)) if partials else set()
    for index, spec in enumerate(expectations):
        keys = group_keys(spec)
        if keys is None:
            continue
        if index not in counted:  # a writer did not count it (its extents lack the keys): said why already
            merged[UNPROVEN].append(f"{spec.description}: not counted by every writer")
        elif not _all_apart(extents, keys):
            merged[UNPROVEN].append(f"{spec.description}: batches not proven apart on {list(keys)}")
    merged[UNPROVEN] = sorted(set(merged[UNPROVEN]))
    return merged


def unread_partial(reason: str) -> dict[str, Any]:
    """The partial of a batch that could not be read: nothing counted, so nothing proven."""
    return {ROWS: 0, NULLS: {}, COUNTS: {}, UNPROVEN: [reason], EXTENTS: [], KEYED: []}


def table_partial(expectations: Sequence[ExpectationSpec], table: pa.Table) -> dict[str, Any]:
    """The partial of one whole table (a writer of one batch)."""
    metrics = PassMetrics(expectations, table.schema)
    metrics.add(table)
    return metrics.partial()
