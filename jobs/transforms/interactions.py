"""Pure transformations from raw interaction log lines to NCF train and test rows.

Each function takes and returns DataFrames (or Columns) and never reads or writes a path, so the job
(``jobs/preprocess_interactions.py``) chains them with ``DataFrame.transform`` and the tests call them on
small frames. The one exception is :func:`filter_k_core`, which must run actions to know when the
repeated filtering has converged.

Determinism: nothing here depends on the number of partitions, executors or the order of input files.
Ties are broken by explicit orderings and random choices come from ``xxhash64(seed, salt, user, ...)``.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import NamedTuple

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, Observation, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from schemas import interactions

LOG = logging.getLogger(__name__)

# Internal columns.
_PARSED = "_parsed"
_IS_ONE_VALUE = "_is_one_value"
_WRAPPED = "_wrapped"
_HIST = "_hist"
_N_POS = "_n_pos"
_N_TEST = "_n_test"
POS_SET = "_pos_set"
_TRAIN_ITEMS = "_train_items"
_TEST_ITEMS = "_test_items"
_TEST_POS = "_test_pos"
_Q = "_q"
_NEGS = "_negs"
ITEM_RANK = "item_rank"
N_ITEMS = "n_items"

# Salts keep the train and test random streams independent for the same (seed, user).
TRAIN_SALT = 1
TEST_SALT = 2
FALLBACK_SALT = 3
# Extra candidates drawn per user beyond what the expected rejection rate needs; users still short after
# that (rare: users who interacted with most items) take the slow exact path.
CANDIDATE_MARGIN = 32
CANDIDATE_SLACK = 1.5

_PARSE_SCHEMA = T.ArrayType(interactions.RAW_EVENT_SCHEMA)


# --------------------------------------------------------------------------------------------------
# 1. Parse and check


def _raw_token(wrapped: Column, field: str) -> Column:
    """The field's raw JSON token, quotes kept (``"abc"`` for a string, ``12`` for a number).

    ``get_json_object`` with a wildcard over ``[<line>]`` re-serialises what it matched, so a string
    keeps its quotes and anything else does not start with one. This is how a number where an id belongs
    is told apart from the string of the same digits, which ``from_json`` with a string schema cannot do.
    """
    return F.get_json_object(wrapped, f"$[*].{field}")


def _occurrences(text: Column, part: str) -> Column:
    """How many times ``part`` occurs in ``text`` (plain bytes, no regex)."""
    removed = F.octet_length(text) - F.octet_length(F.replace(text, F.lit(part), F.lit("")))
    return removed / len(part.encode())


def _is_string_value(line: Column, wrapped: Column, field: str) -> Column:
    """True when the line's top-level ``field`` holds a JSON string.

    Compact lines (no regex, no parse): when ``"field"`` occurs exactly once, followed by ``:"``, its value
    is a string. Otherwise the fast path (a regex, no parse): ``"field":`` with both quotes unescaped can
    only be a key, so when it occurs exactly once its value is a string iff a quote follows the colon.
    Otherwise (absent, repeated, or nested objects using the same key) the exact path re-parses the line
    (:func:`_raw_token`). The first test gives the second's answer wherever it applies (the one ``"field"``
    is the regex's one match); it only saves the two regex scans per field on the usual line.
    """
    compact = (_occurrences(line, f'"{field}"') == 1) & (F.instr(line, f'"{field}":"') > 0)
    key = f'"{field}"\\s*:'
    fast = line.rlike(f"{key}\\s*\"")
    exact = _raw_token(wrapped, field).startswith('"')
    return (
        F.when(compact, F.lit(True))
        .when(F.regexp_count(line, F.lit(key)) == 1, fast)
        .otherwise(exact)
    )


def _reject_reason(event_ts: Column, end_of_day: dt.datetime) -> Column:
    """The first reason a flattened line (``line``, its ``[line]`` wrapping, the one-value flag and the
    event's fields) must be rejected for; null when valid."""
    line = F.rtrim(F.col(interactions.LINE))
    is_invalid_json = (
        ~F.col(_IS_ONE_VALUE)
        | ~F.ltrim(line).startswith("{")
        | ~line.endswith("}")
    )
    is_missing = F.lit(False)
    for name in interactions.REQUIRED_FIELDS:
        is_missing = is_missing | F.col(name).isNull()
    is_non_string = F.lit(False)
    for name in interactions.ID_FIELDS:
        is_non_string = is_non_string | ~_is_string_value(F.col(interactions.LINE), F.col(_WRAPPED), name)
    for name in interactions.OPTIONAL_ID_FIELDS:
        is_non_string = is_non_string | (
            F.col(name).isNotNull() & ~_is_string_value(F.col(interactions.LINE), F.col(_WRAPPED), name)
        )
    is_empty = F.lit(False)
    for name in interactions.REQUIRED_FIELDS:
        is_empty = is_empty | (F.trim(F.col(name)) == F.lit(""))
    return (
        F.when(is_invalid_json, F.lit(interactions.REASON_INVALID_JSON))
        .when(is_missing, F.lit(interactions.REASON_MISSING_FIELD))
        .when(is_non_string, F.lit(interactions.REASON_NON_STRING_ID))
        .when(is_empty, F.lit(interactions.REASON_EMPTY_FIELD))
        .when(
            ~F.col(interactions.EVENT_TYPE).isin(*interactions.EVENT_TYPES),
            F.lit(interactions.REASON_UNKNOWN_EVENT_TYPE),
        )
        .when(event_ts.isNull(), F.lit(interactions.REASON_BAD_EVENT_TIME))
        .when(event_ts >= F.lit(end_of_day), F.lit(interactions.REASON_FUTURE_EVENT_TIME))
    )


def with_parsed_events(lines_df: DataFrame, *, run_date: dt.date) -> DataFrame:
    """Parse JSON lines and give each the first reason it must be rejected for (null when valid).

    Args:
        lines_df: ``line`` (the raw text) and ``input_file``.
        run_date: events at or after the end of this day (UTC) are ``future_event_time``.

    Returns:
        ``line, input_file, event_id, user_id, item_id, event_type, event_time, session_id, event_ts,
        reason``; ``event_ts`` is the parsed timestamp (UTC), ``reason`` one of
        ``interactions.REJECT_REASONS``.
    """
    end_of_day = dt.datetime.combine(run_date + dt.timedelta(days=1), dt.time(0, 0))
    wrapped = F.concat(F.lit("["), F.col(interactions.LINE), F.lit("]"))
    # One parse per line: "[line]" as an array of events. from_json on the bare line would read the first
    # JSON value and ignore what follows; as an array, trailing text is a syntax error (null) and a second
    # value a second element, so "[line]" must parse to exactly one element.
    parsed_df = lines_df.select(
        F.col(interactions.LINE),
        F.col(interactions.INPUT_FILE),
        F.from_json(wrapped, _PARSE_SCHEMA).alias(_PARSED),
        wrapped.alias(_WRAPPED),
    )
    fields = [f.name for f in interactions.RAW_EVENT_SCHEMA.fields]
    flat_df = parsed_df.select(
        interactions.LINE,
        interactions.INPUT_FILE,
        _WRAPPED,
        F.coalesce(F.size(_PARSED) == 1, F.lit(False)).alias(_IS_ONE_VALUE),
        *[F.col(_PARSED)[0][name].alias(name) for name in fields],
    )
    event_ts = F.to_timestamp(F.col(interactions.EVENT_TIME), interactions.EVENT_TIME_FORMAT)
    reason = _reject_reason(event_ts, end_of_day)
    return flat_df.select(
        interactions.LINE,
        interactions.INPUT_FILE,
        *fields,
        event_ts.alias(interactions.EVENT_TS),
        reason.alias(interactions.REASON),
    )


def filter_rejected(parsed_df: DataFrame) -> DataFrame:
    """The rejected lines: ``line, input_file, reason`` (``interactions.REJECT_SCHEMA``)."""
    return parsed_df.filter(F.col(interactions.REASON).isNotNull()).select(
        interactions.LINE, interactions.INPUT_FILE, interactions.REASON
    )


def filter_valid(parsed_df: DataFrame) -> DataFrame:
    """The valid events: ``event_id, user_id, item_id, event_ts``."""
    return parsed_df.filter(F.col(interactions.REASON).isNull()).select(
        interactions.EVENT_ID, interactions.USER_ID, interactions.ITEM_ID, interactions.EVENT_TS
    )


# --------------------------------------------------------------------------------------------------
# 2. De-duplicate and collapse to positives


def drop_duplicate_events(events_df: DataFrame) -> DataFrame:
    """One row per ``event_id``: among repeats, the one with the earliest (event_ts, user_id, item_id).

    A re-delivered event is normally the same line twice; the ordering only makes a conflicting repeat
    resolve the same way on every run.
    """
    first = F.min(F.struct(interactions.EVENT_TS, interactions.USER_ID, interactions.ITEM_ID)).alias("_first")
    return (
        events_df.groupBy(interactions.EVENT_ID)
        .agg(first)
        .select(
            interactions.EVENT_ID,
            F.col(f"_first.{interactions.USER_ID}").alias(interactions.USER_ID),
            F.col(f"_first.{interactions.ITEM_ID}").alias(interactions.ITEM_ID),
            F.col(f"_first.{interactions.EVENT_TS}").alias(interactions.EVENT_TS),
        )
    )


def to_positives(events_df: DataFrame) -> DataFrame:
    """Implicit feedback: one positive per (user, item), timed by its latest event
    (``interactions.POSITIVE_SCHEMA``)."""
    return events_df.groupBy(interactions.USER_ID, interactions.ITEM_ID).agg(
        F.max(interactions.EVENT_TS).alias(interactions.EVENT_TS),
        F.min(interactions.EVENT_TS).alias(interactions.FIRST_TS),
        F.count(F.lit(1)).alias(interactions.EVENT_COUNT),
    )


# --------------------------------------------------------------------------------------------------
# 3. k-core


def filter_min_degree(positives_df: DataFrame, *, min_user: int, min_item: int) -> DataFrame:
    """One round: keep the positives whose user has >= ``min_user`` items and item >= ``min_item`` users.

    Both degrees are counted on the same input, so one round may leave new low-degree users or items;
    :func:`filter_k_core` repeats it until nothing changes.
    """
    users_df = (
        positives_df.groupBy(interactions.USER_ID).count()
        .filter(F.col("count") >= min_user)
        .select(interactions.USER_ID)
    )
    items_df = (
        positives_df.groupBy(interactions.ITEM_ID).count()
        .filter(F.col("count") >= min_item)
        .select(interactions.ITEM_ID)
    )
    return positives_df.join(users_df, on=interactions.USER_ID, how="left_semi").join(
        items_df, on=interactions.ITEM_ID, how="left_semi"
    )


class KCore(NamedTuple):
    """What :func:`filter_k_core` found: the rows, the rounds run, and the ids left on each side."""

    core_df: DataFrame
    rounds: int
    users_df: DataFrame  # ``user_id`` of every user in ``core_df`` (small, checkpointed)
    items_df: DataFrame  # ``item_id`` of every item in ``core_df`` (small, checkpointed)


def filter_k_core(
    positives_df: DataFrame, *, min_user: int, min_item: int, max_iterations: int = 100
) -> KCore:
    """Repeat :func:`filter_min_degree` until both thresholds hold for every remaining row.

    Each round counts the degrees of the current rows (one small table per side, local-checkpointed),
    stops when no user and no item is below its threshold, and otherwise keeps the rows of
    ``positives_df`` whose user and item pass. Filtering the original rows by the latest lists is the same
    as filtering the latest rows: degrees only fall from round to round, so an id dropped once never
    passes again. Every round's plan is thus ``positives_df`` joined with two checkpointed lists: the
    lineage stays one round long, and only the current round's rows are cached (persisted, columnar), not
    a copy per round. A round that removes nothing costs two aggregations and no join.

    Returns:
        The filtered positives, the number of rounds run (the last one finds nothing to remove) and the
        ids of the filtered rows (the last round's degree lists: no pass over the rows to find them). The
        frame is ``positives_df`` itself when nothing was removed, else a persisted frame the caller
        unpersists when done.

    Raises:
        RuntimeError: if it has not converged after ``max_iterations`` rounds (it always converges: each
            round that goes on removes at least one row).
    """
    current_df = positives_df
    for iteration in range(1, max_iterations + 1):
        users_df, users = _degrees(current_df, interactions.USER_ID, min_user)
        items_df, items = _degrees(current_df, interactions.ITEM_ID, min_item)
        LOG.info(
            "k-core round %d: %d positives, %d of %d users below %d, %d of %d items below %d",
            iteration, users["rows"], users["low"], users["ids"], min_user,
            items["low"], items["ids"], min_item,
        )
        if users["low"] == 0 and items["low"] == 0:
            return KCore(
                current_df,
                iteration,
                users_df.select(interactions.USER_ID),
                items_df.select(interactions.ITEM_ID),
            )
        next_df = (
            positives_df.join(
                _keep(users_df, users, interactions.USER_ID, min_user),
                on=interactions.USER_ID,
                how="left_semi",
            )
            .join(
                _keep(items_df, items, interactions.ITEM_ID, min_item),
                on=interactions.ITEM_ID,
                how="left_semi",
            )
            .persist(StorageLevel.MEMORY_AND_DISK)
        )
        if current_df is not positives_df:
            current_df.unpersist()
        current_df = next_df
    raise RuntimeError(f"k-core did not converge in {max_iterations} rounds")


_DEGREE = "_degree"
# Up to this many kept ids, the k-core's semi joins broadcast the id list instead of shuffling the
# positives (a few tens of MB at most); above it they are ordinary shuffled joins.
BROADCAST_MAX_IDS = 2_000_000


def _degrees(rows_df: DataFrame, id_col: str, minimum: int) -> tuple[DataFrame, dict[str, int]]:
    """``id_col, _degree`` of every id in ``rows_df`` (checkpointed: small), and its totals.

    Totals: ``rows`` (the sum of degrees: the rows of ``rows_df``), ``ids`` and ``low`` (ids below
    ``minimum``). They are observed as the checkpoint is written, not counted by a second query: on the
    sample's week a round was six Spark jobs, four of them the two sides' totals.
    """
    observed = Observation()
    degrees_df = (
        rows_df.groupBy(id_col)
        .agg(F.count(F.lit(1)).alias(_DEGREE))
        .observe(
            observed,
            F.sum(_DEGREE).alias("rows"),
            F.count(F.lit(1)).alias("ids"),
            F.count(F.when(F.col(_DEGREE) < minimum, 1)).alias("low"),
        )
        .localCheckpoint(eager=True)
    )
    totals = observed.get
    return degrees_df, {key: int(totals[key] or 0) for key in ("rows", "ids", "low")}


def _keep(degrees_df: DataFrame, totals: dict[str, int], id_col: str, minimum: int) -> DataFrame:
    """The ids at or above ``minimum``; broadcast when there are few enough of them."""
    kept_df = degrees_df.filter(F.col(_DEGREE) >= minimum).select(id_col)
    return F.broadcast(kept_df) if totals["ids"] - totals["low"] <= BROADCAST_MAX_IDS else kept_df


# --------------------------------------------------------------------------------------------------
# 4. Index maps


def first_seen(positives_df: DataFrame, kept_df: DataFrame, id_col: str) -> DataFrame:
    """``id_col, first_seen`` of the ids in ``kept_df``: the earliest event of the id among all positives.

    ``positives_df`` holds every positive of the window (before the k-core), so an id's first-seen time
    does not depend on which of its items survived the filter.
    """
    return (
        positives_df.groupBy(id_col)
        .agg(F.min(interactions.FIRST_TS).alias(interactions.FIRST_SEEN))
        .join(kept_df.select(id_col).distinct(), on=id_col, how="left_semi")
    )


def extend_index(
    index_df: DataFrame, ids_df: DataFrame, *, id_col: str, idx_col: str, run_date: dt.date
) -> DataFrame:
    """Append the ids not yet in ``index_df`` with the next contiguous integers.

    New ids are numbered after the largest existing index, ordered by ``first_seen`` then id, so the same
    data always gets the same numbers. Existing rows are kept unchanged: an index never changes meaning.

    Args:
        index_df: ``id_col, idx_col, first_seen, added_run_date`` (may be empty).
        ids_df: ``id_col, first_seen`` of tonight's ids.
        run_date: written in ``added_run_date`` of the new rows.

    Returns:
        The whole index, same columns as ``index_df``.
    """
    new_df = ids_df.join(index_df.select(id_col), on=id_col, how="left_anti")
    offset_df = index_df.agg(F.coalesce(F.max(idx_col) + 1, F.lit(0)).alias("_offset"))
    # A single global ordering is needed for contiguous numbers; ids are few compared with events.
    order = Window.orderBy(F.col(interactions.FIRST_SEEN).asc_nulls_last(), F.col(id_col).asc())
    numbered_df = (
        new_df.crossJoin(F.broadcast(offset_df))
        .withColumn(idx_col, (F.row_number().over(order) - 1 + F.col("_offset")).cast(T.IntegerType()))
        .select(
            id_col,
            idx_col,
            interactions.FIRST_SEEN,
            F.lit(run_date.isoformat()).alias(interactions.ADDED_RUN_DATE),
        )
    )
    return index_df.select(
        id_col, idx_col, interactions.FIRST_SEEN, interactions.ADDED_RUN_DATE
    ).unionByName(numbered_df)


def with_indices(positives_df: DataFrame, users_index_df: DataFrame, items_index_df: DataFrame) -> DataFrame:
    """Positives with ``user_idx`` and ``item_idx`` (inner joins: every id must be in its index)."""
    users_df = users_index_df.select(interactions.USER_ID, interactions.USER_IDX)
    items_df = items_index_df.select(interactions.ITEM_ID, interactions.ITEM_IDX)
    return positives_df.join(users_df, on=interactions.USER_ID, how="inner").join(
        items_df, on=interactions.ITEM_ID, how="inner"
    )


def item_ranks(positives_df: DataFrame) -> DataFrame:
    """``item_idx, item_rank, n_items``: tonight's items numbered 0..n-1 in index order.

    Negatives are drawn from tonight's items (those left after the k-core), which need not be contiguous in
    the index once items drop out; the rank makes them so.
    """
    items_df = positives_df.select(interactions.ITEM_IDX).distinct()
    order = Window.orderBy(interactions.ITEM_IDX)
    return items_df.select(
        interactions.ITEM_IDX,
        (F.row_number().over(order) - 1).cast(T.IntegerType()).alias(ITEM_RANK),
        F.count(F.lit(1)).over(Window.partitionBy()).cast(T.IntegerType()).alias(N_ITEMS),
    )


# --------------------------------------------------------------------------------------------------
# 5. Split


def to_user_histories(positives_df: DataFrame, ranks_df: DataFrame) -> DataFrame:
    """One row per user: ``user_idx, _hist`` (positives sorted by time, item_id), ``_pos_set`` (item ranks),
    ``n_items``.
    """
    ranked_df = positives_df.join(F.broadcast(ranks_df), on=interactions.ITEM_IDX, how="inner")
    entry = F.struct(interactions.EVENT_TS, interactions.ITEM_ID, interactions.ITEM_IDX, ITEM_RANK)
    return (
        ranked_df.groupBy(interactions.USER_IDX)
        # sort_array, not array_sort: the same order for these never-null structs, faster (docs/preprocess.md)
        # (array_sort evaluates its default comparator as a lambda).
        .agg(F.sort_array(F.collect_list(entry)).alias(_HIST), F.first(N_ITEMS).alias(N_ITEMS))
        .withColumn(POS_SET, F.transform(_HIST, lambda e: e[ITEM_RANK]))
    )


def with_split(histories_df: DataFrame, *, split: str, test_fraction: float | None = None) -> DataFrame:
    """Split each user's history into ``_train_items`` and ``_test_items`` (arrays of item_idx).

    ``loo``: the latest positive is the test positive; ties on time go to the greatest ``item_id``.
    ``chrono``: the latest ``ceil(test_fraction * n)`` positives (at least 1, at most n - 1 for n >= 2).
    A user with a single positive has it as test positive and no training positive.
    """
    n = F.size(_HIST)
    if split == interactions.SPLIT_LOO:
        n_test = F.lit(1)
    elif split == interactions.SPLIT_CHRONO:
        if test_fraction is None or not 0.0 < test_fraction < 1.0:
            raise ValueError(f"chrono split needs 0 < test_fraction < 1, got {test_fraction!r}")
        n_test = F.when(n <= 1, n).otherwise(
            F.least(n - 1, F.greatest(F.lit(1), F.ceil(F.lit(test_fraction) * n).cast(T.IntegerType())))
        )
    else:
        raise ValueError(f"unknown split {split!r}; expected one of {interactions.SPLITS}")
    n_train = n - F.col(_N_TEST)
    return (
        histories_df.withColumn(_N_TEST, n_test.cast(T.IntegerType()))
        .withColumn(_TRAIN_ITEMS, F.transform(F.slice(_HIST, 1, n_train), lambda e: e[interactions.ITEM_IDX]))
        .withColumn(
            _TEST_ITEMS,
            F.transform(F.slice(_HIST, n_train + 1, F.col(_N_TEST)), lambda e: e[interactions.ITEM_IDX]),
        )
    )


# --------------------------------------------------------------------------------------------------
# 6. Negatives


def _hashed_rank(seed: int, salt: int, parts: Sequence[Column], n_items: Column) -> Column:
    hashed = F.xxhash64(F.lit(seed), F.lit(salt), *parts)
    return F.pmod(hashed, n_items.cast(T.LongType())).cast(T.IntegerType())


def _empty_ints() -> Column:
    return F.array().cast(T.ArrayType(T.IntegerType()))


def _candidates(seed: int, salt: int, parts: Sequence[Column], count: Column, n_items: Column) -> Column:
    """``count`` hashed item ranks in [0, n_items) for the key ``parts``; empty when count <= 0.

    The lambda refers only to plain columns: a lambda that refers to another array expression makes
    Spark re-evaluate that expression for every element.
    """
    drawn = F.transform(
        F.sequence(F.lit(0), F.greatest(count, F.lit(1)) - 1),
        lambda j: _hashed_rank(seed, salt, [*parts, j], n_items),
    )
    return F.when(count > 0, drawn).otherwise(_empty_ints())


def _by_hash(pos_set: Column, n_items: Column, seed: int, parts: Sequence[Column]) -> Column:
    """Every item rank not in ``pos_set``, ordered by ``xxhash64(seed, parts, rank)``: O(n_items)."""
    complement = F.array_except(F.sequence(F.lit(0), n_items - 1), pos_set)
    keyed = F.transform(
        complement,
        lambda r: F.struct(F.xxhash64(F.lit(seed), F.lit(FALLBACK_SALT), *parts, r).alias("h"), r.alias("r")),
    )
    return F.transform(F.sort_array(keyed), lambda e: e["r"])


def with_distinct_negatives(
    df: DataFrame,
    *,
    parts: Sequence[str],
    count: Column,
    seed: int,
    salt: int,
    out_col: str,
) -> DataFrame:
    """Add ``out_col``: ``least(count, available)`` distinct item ranks not in the row's ``_pos_set``.

    ``df`` needs ``_pos_set`` (the user's item ranks) and ``n_items``; ``parts`` name the columns that
    key the random stream (the user, and for test rows the test positive's position).

    Fast path: enough hashed candidates for the user's rejection rate, minus the positives
    (``array_except``: a hash set, keeps the first occurrence, so this is sampling without replacement by
    rejection). Slow path, when that falls short (users who interacted with most items, or asked for
    most of what is left): every non-positive rank ordered by its hash. Both depend only on the seed,
    the key and the data.
    """
    pos_set, n_items = F.col(POS_SET), F.col(N_ITEMS)
    keys = [F.col(c) for c in parts]
    available = n_items - F.size(pos_set)
    wanted = F.least(count, available)
    n_draw = F.ceil(wanted * n_items / F.greatest(available, F.lit(1)) * F.lit(CANDIDATE_SLACK)).cast(
        T.IntegerType()
    ) + F.lit(CANDIDATE_MARGIN)
    fast_col = f"{out_col}_fast"
    fast = F.slice(
        F.array_except(_candidates(seed, salt, keys, n_draw, n_items), pos_set),
        1,
        F.greatest(wanted, F.lit(1)),
    )
    with_fast_df = df.withColumn(
        fast_col, F.when((wanted > 0) & (wanted * 2 <= available), fast).otherwise(_empty_ints())
    )
    chosen = (
        F.when(wanted <= 0, _empty_ints())
        .when(F.size(fast_col) >= wanted, F.col(fast_col))
        .otherwise(F.slice(_by_hash(pos_set, n_items, seed, keys), 1, F.greatest(wanted, F.lit(1))))
    )
    return with_fast_df.withColumn(out_col, chosen).drop(fast_col)


def explode_train_rows(split_df: DataFrame, ranks_df: DataFrame, *, negatives: int, seed: int) -> DataFrame:
    """Training rows: every training positive (label 1) and ``negatives`` per positive (label 0).

    Returns ``user_idx, item_idx, label`` (``interactions.NCF_ROW_SCHEMA``). A user's training negatives are
    drawn from the items the user never interacted with (train and test positives), distinct within the user
    while enough such items exist; a user with fewer such items than needed gets each of them in turn
    (the list repeated), and a user who interacted with every item gets none (reported by the job).
    """
    count = F.size(_TRAIN_ITEMS) * F.lit(negatives)
    distinct_df = split_df.select(interactions.USER_IDX, _TRAIN_ITEMS, POS_SET, N_ITEMS).transform(
        with_distinct_negatives,
        parts=[interactions.USER_IDX],
        count=count,
        seed=seed,
        salt=TRAIN_SALT,
        out_col=_NEGS,
    )
    repeats = F.ceil(count / F.greatest(F.size(_NEGS), F.lit(1))).cast(T.IntegerType())
    tiled = F.slice(F.flatten(F.array_repeat(_NEGS, repeats)), 1, F.greatest(count, F.lit(1)))
    with_negs_df = distinct_df.select(
        interactions.USER_IDX,
        _TRAIN_ITEMS,
        F.when((count > 0) & (F.size(_NEGS) > 0), tiled).otherwise(_empty_ints()).alias(_NEGS),
    )
    return _user_rows(with_negs_df, ranks_df, positives=F.col(_TRAIN_ITEMS))


def explode_test_rows(split_df: DataFrame, ranks_df: DataFrame, *, negatives: int, seed: int) -> DataFrame:
    """Test rows: each test positive (label 1) with ``negatives`` distinct never-interacted items (label 0).

    A user with fewer than ``negatives`` such items gets all of them (the job reports how many users did).
    """
    tests_df = split_df.select(
        interactions.USER_IDX, POS_SET, N_ITEMS, F.posexplode(_TEST_ITEMS).alias(_Q, _TEST_POS)
    )
    with_negs_df = tests_df.transform(
        with_distinct_negatives,
        parts=[interactions.USER_IDX, _Q],
        count=F.lit(negatives),
        seed=seed,
        salt=TEST_SALT,
        out_col=_NEGS,
    )
    return _user_rows(with_negs_df, ranks_df, positives=F.array(F.col(_TEST_POS)))


_ROW_ITEM = "_row_item"


def _user_rows(with_negs_df: DataFrame, ranks_df: DataFrame, *, positives: Column) -> DataFrame:
    """Each row's ``positives`` (item indexes, label 1) then its ``_NEGS`` (item ranks, mapped to indexes,
    label 0), in one explode and one broadcast join, both of which keep the rows' order and partition: a
    user's rows stay together, in the partition (so the output file) of the user's history, which lets
    the quality gate count each file's users on their own.

    explode_outer, not explode: for explode Spark infers a "size(array) > 0" filter and pushes it below
    the projections, inlining the whole sampling expression into it (computed again per user: 8 of 11 s
    of the train write at 1 M events). The null row of an empty array, like a rank with no item, has no
    item index and is dropped.
    """

    def row(item: Column, rank: Column, label: float) -> Column:
        return F.struct(
            item.cast(T.IntegerType()).alias(_ROW_ITEM),
            rank.cast(T.IntegerType()).alias(ITEM_RANK),
            F.lit(label).cast(T.FloatType()).alias(interactions.LABEL),
        )

    rows = F.concat(
        F.transform(positives, lambda item: row(item, F.lit(None), 1.0)),
        F.transform(F.col(_NEGS), lambda rank: row(F.lit(None), rank, 0.0)),
    )
    exploded_df = with_negs_df.select(interactions.USER_IDX, F.explode_outer(rows).alias("_row")).select(
        interactions.USER_IDX, "_row.*"
    )
    joined_df = exploded_df.join(
        F.broadcast(ranks_df.select(ITEM_RANK, interactions.ITEM_IDX)), on=ITEM_RANK, how="left"
    )
    return _to_ncf_rows(
        joined_df.select(
            interactions.USER_IDX,
            F.coalesce(F.col(_ROW_ITEM), F.col(interactions.ITEM_IDX)).alias(interactions.ITEM_IDX),
            interactions.LABEL,
        ).where(F.col(interactions.ITEM_IDX).isNotNull())
    )


def _to_ncf_rows(rows_df: DataFrame) -> DataFrame:
    return rows_df.select(
        F.col(interactions.USER_IDX).cast(T.IntegerType()).alias(interactions.USER_IDX),
        F.col(interactions.ITEM_IDX).cast(T.IntegerType()).alias(interactions.ITEM_IDX),
        F.col(interactions.LABEL).cast(T.FloatType()).alias(interactions.LABEL),
    )
