"""Unit tests of jobs/transforms/interactions.py on small hand-made frames, null and hostile rows too."""

from __future__ import annotations

import datetime as dt

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.transforms import interactions as tx
from schemas import interactions as S

RUN_DATE = dt.date(2024, 3, 31)
UTC = dt.UTC


def ts(text: str) -> dt.datetime:
    """A naive UTC datetime, which is how Spark (session time zone UTC) hands timestamps to Python."""
    return dt.datetime.fromisoformat(text).astimezone(UTC).replace(tzinfo=None)


def good(
    event_id: str = "e1",
    user: str = "u1",
    item: str = "sku-1",
    etype: str = "view",
    time: str = "2024-03-31T10:00:00+00:00",
    extra: str = "",
) -> str:
    return (
        f'{{"event_id":"{event_id}","user_id":"{user}","item_id":"{item}","event_type":"{etype}",'
        f'"event_time":"{time}"{extra}}}'
    )


# (line, expected reason or None, expected event_ts for valid lines)
PARSE_CASES = [
    (good(), None, ts("2024-03-31T10:00:00+00:00")),
    # Offsets are honoured: 01:30+02:00 is 23:30 UTC the day before.
    (good("e2", time="2024-03-31T01:30:00+02:00"), None, ts("2024-03-30T23:30:00+00:00")),
    (good("e3", time="2024-03-31T23:59:59.123Z"), None, ts("2024-03-31T23:59:59.123+00:00")),
    # Unknown extra fields are ignored; a null or absent session is fine; hostile but valid text passes.
    (good("e4", extra=',"session_id":null,"ref":{"a":[1,2]}'), None, ts("2024-03-31T10:00:00+00:00")),
    (good("e5", user='u \\"quoted\\" ,;\\n名前', item="123"), None, ts("2024-03-31T10:00:00+00:00")),
    (good("e6", extra=',"session_id":"s1"'), None, ts("2024-03-31T10:00:00+00:00")),
    # Invalid JSON in its forms.
    ("not json", S.REASON_INVALID_JSON, None),
    ("", S.REASON_INVALID_JSON, None),
    (good("e7")[:-5], S.REASON_INVALID_JSON, None),
    ('[{"event_id":"e8"}]', S.REASON_INVALID_JSON, None),
    (good("e9") + " trailing", S.REASON_INVALID_JSON, None),
    ('"just a string"', S.REASON_INVALID_JSON, None),
    (None, S.REASON_INVALID_JSON, None),
    # Missing (absent or JSON null) required fields.
    ('{"event_id":"e10","user_id":"u1","item_id":"sku-1","event_type":"view"}', S.REASON_MISSING_FIELD, None),
    (good("e11").replace('"user_id":"u1"', '"user_id":null'), S.REASON_MISSING_FIELD, None),
    # A number or an object where an id belongs, even with the digits of a valid id.
    (good("e12").replace('"user_id":"u1"', '"user_id":123'), S.REASON_NON_STRING_ID, None),
    (good("e13").replace('"item_id":"sku-1"', '"item_id":{"sku":"sku-1"}'), S.REASON_NON_STRING_ID, None),
    (good("e14").replace('"event_id":"e14"', '"event_id":true'), S.REASON_NON_STRING_ID, None),
    (good("e15", extra=',"session_id":42'), S.REASON_NON_STRING_ID, None),
    # Spaces around the colon, the name also as a value, the name also inside a nested object.
    (good("e28").replace('"user_id":"u1"', '"user_id" : "u1"'), None, ts("2024-03-31T10:00:00+00:00")),
    (good("e29").replace('"user_id":"u1"', '"user_id": 7'), S.REASON_NON_STRING_ID, None),
    (good("e30", extra=',"note":"user_id"'), None, ts("2024-03-31T10:00:00+00:00")),
    (
        good("e31", extra=',"ref":{"user_id":"u1"}').replace('"user_id":"u1",', '"user_id":5,', 1),
        S.REASON_NON_STRING_ID,
        None,
    ),
    # Empty (or blank) required fields.
    (good("e16", item=""), S.REASON_EMPTY_FIELD, None),
    (good("e17", user="   "), S.REASON_EMPTY_FIELD, None),
    (good("e18", etype="VIEW"), S.REASON_UNKNOWN_EVENT_TYPE, None),
    (good("e19", etype="refund"), S.REASON_UNKNOWN_EVENT_TYPE, None),
    (good("e20", time="2024-03-31T12:00:00"), S.REASON_BAD_EVENT_TIME, None),  # no offset
    (good("e21", time="2024-02-30T10:00:00Z"), S.REASON_BAD_EVENT_TIME, None),
    (good("e22", time="31/03/2024 10:00:00"), S.REASON_BAD_EVENT_TIME, None),
    (good("e23", time="not-a-time"), S.REASON_BAD_EVENT_TIME, None),
    (
        good("e24").replace('"event_time":"2024-03-31T10:00:00+00:00"', '"event_time":1711879200'),
        S.REASON_BAD_EVENT_TIME,
        None,
    ),
    # The run date ends at midnight UTC: 00:00 of the next day is in the future, 01:00+02:00 is not.
    (good("e25", time="2024-04-01T00:00:00Z"), S.REASON_FUTURE_EVENT_TIME, None),
    (good("e26", time="2024-04-01T01:00:00+02:00"), None, ts("2024-03-31T23:00:00+00:00")),
    (good("e27", time="2024-03-31T20:00:00-08:00"), S.REASON_FUTURE_EVENT_TIME, None),
]


@pytest.fixture(scope="module")
def parsed_df(spark):
    lines_df = spark.createDataFrame(
        [(line, f"file:/in/dt=2024-03-31/part-{n}.jsonl") for n, (line, _, _) in enumerate(PARSE_CASES)],
        T.StructType([T.StructField(S.LINE, T.StringType()), T.StructField(S.INPUT_FILE, T.StringType())]),
    )
    return lines_df.transform(tx.with_parsed_events, run_date=RUN_DATE).cache()


def test_with_parsed_events_gives_each_line_its_reason_and_time(spark, parsed_df):
    expected = spark.createDataFrame(
        [(line, reason, event_ts) for line, reason, event_ts in PARSE_CASES],
        "line string, reason string, event_ts timestamp",
    )
    actual = parsed_df.select(
        S.LINE, S.REASON, F.when(F.col(S.REASON).isNull(), F.col(S.EVENT_TS)).alias(S.EVENT_TS)
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_filter_rejected_keeps_line_file_and_reason(spark, parsed_df):
    expected = spark.createDataFrame(
        [
            (line, f"file:/in/dt=2024-03-31/part-{n}.jsonl", reason)
            for n, (line, reason, _) in enumerate(PARSE_CASES)
            if reason is not None
        ],
        S.REJECT_SCHEMA,
    )
    assert_df_equality(
        parsed_df.transform(tx.filter_rejected), expected, ignore_row_order=True, ignore_nullable=True
    )


def test_filter_valid_keeps_ids_exactly(spark, parsed_df):
    expected = spark.createDataFrame(
        [
            ("e1", "u1", "sku-1", ts("2024-03-31T10:00:00+00:00")),
            ("e2", "u1", "sku-1", ts("2024-03-30T23:30:00+00:00")),
            ("e3", "u1", "sku-1", ts("2024-03-31T23:59:59.123+00:00")),
            ("e4", "u1", "sku-1", ts("2024-03-31T10:00:00+00:00")),
            ("e5", 'u "quoted" ,;\n名前', "123", ts("2024-03-31T10:00:00+00:00")),
            ("e6", "u1", "sku-1", ts("2024-03-31T10:00:00+00:00")),
            ("e26", "u1", "sku-1", ts("2024-03-31T23:00:00+00:00")),
            ("e28", "u1", "sku-1", ts("2024-03-31T10:00:00+00:00")),
            ("e30", "u1", "sku-1", ts("2024-03-31T10:00:00+00:00")),
        ],
        S.EVENT_SCHEMA,
    )
    assert_df_equality(
        parsed_df.transform(tx.filter_valid), expected, ignore_row_order=True, ignore_nullable=True
    )


def test_drop_duplicate_events_keeps_one_per_event_id_deterministically(spark):
    events = spark.createDataFrame(
        [
            ("e1", "u1", "i1", ts("2024-03-01T10:00:00+00:00")),
            ("e1", "u1", "i1", ts("2024-03-01T10:00:00+00:00")),  # exact re-delivery
            ("e1", "u1", "i1", ts("2024-03-01T10:00:00+00:00")),
            ("e2", "u2", "i9", ts("2024-03-02T10:00:00+00:00")),  # conflicting repeat: earliest wins
            ("e2", "u2", "i1", ts("2024-03-01T09:00:00+00:00")),
            ("e3", "u3", "i1", ts("2024-03-01T10:00:00+00:00")),
            ("e4", "u1", "i1", ts("2024-03-01T10:00:00+00:00")),  # same content, other id: kept
        ],
        S.EVENT_SCHEMA,
    )
    expected = spark.createDataFrame(
        [
            ("e1", "u1", "i1", ts("2024-03-01T10:00:00+00:00")),
            ("e2", "u2", "i1", ts("2024-03-01T09:00:00+00:00")),
            ("e3", "u3", "i1", ts("2024-03-01T10:00:00+00:00")),
            ("e4", "u1", "i1", ts("2024-03-01T10:00:00+00:00")),
        ],
        S.EVENT_SCHEMA,
    )
    actual = events.repartition(3).transform(tx.drop_duplicate_events)
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_to_positives_collapses_pairs_to_latest_event(spark):
    events = spark.createDataFrame(
        [
            ("e1", "u1", "i1", ts("2024-03-01T10:00:00+00:00")),
            ("e2", "u1", "i1", ts("2024-03-03T10:00:00+00:00")),
            ("e3", "u1", "i1", ts("2024-03-02T10:00:00+00:00")),
            ("e4", "u1", "i2", ts("2024-03-01T11:00:00+00:00")),
            ("e5", "u2", "i1", ts("2024-03-01T12:00:00+00:00")),
        ],
        S.EVENT_SCHEMA,
    )
    expected = spark.createDataFrame(
        [
            ("u1", "i1", ts("2024-03-03T10:00:00+00:00"), ts("2024-03-01T10:00:00+00:00"), 3),
            ("u1", "i2", ts("2024-03-01T11:00:00+00:00"), ts("2024-03-01T11:00:00+00:00"), 1),
            ("u2", "i1", ts("2024-03-01T12:00:00+00:00"), ts("2024-03-01T12:00:00+00:00"), 1),
        ],
        S.POSITIVE_SCHEMA,
    )
    assert_df_equality(
        events.transform(tx.to_positives), expected, ignore_row_order=True, ignore_nullable=True
    )


def _pairs_df(spark, pairs):
    t0 = ts("2024-03-01T00:00:00+00:00")
    return spark.createDataFrame([(u, i, t0, t0, 1) for u, i in pairs], S.POSITIVE_SCHEMA)


def test_filter_k_core_repeats_until_both_thresholds_hold(spark):
    # Round 1 drops u4 (1 item); then item c has 1 user; then u3 has 1 item. One pass would keep u3 and c.
    pairs = [("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b"), ("u3", "b"), ("u3", "c"), ("u4", "c")]
    one_pass = tx.filter_min_degree(_pairs_df(spark, pairs), min_user=2, min_item=2)
    assert sorted((r[S.USER_ID], r[S.ITEM_ID]) for r in one_pass.collect()) == [
        ("u1", "a"),
        ("u1", "b"),
        ("u2", "a"),
        ("u2", "b"),
        ("u3", "b"),
        ("u3", "c"),
    ]
    core_df, rounds, users_df, items_df = tx.filter_k_core(_pairs_df(spark, pairs), min_user=2, min_item=2)
    expected = _pairs_df(spark, [("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b")])
    assert_df_equality(
        core_df.select(*expected.columns), expected, ignore_row_order=True, ignore_nullable=True
    )
    assert rounds == 4
    # the ids of the filtered rows, each once, from the last round's degree lists
    assert sorted(r[S.USER_ID] for r in users_df.collect()) == ["u1", "u2"]
    assert sorted(r[S.ITEM_ID] for r in items_df.collect()) == ["a", "b"]


def test_filter_k_core_can_empty_everything(spark):
    core = tx.filter_k_core(_pairs_df(spark, [("u1", "a"), ("u2", "b")]), min_user=2, min_item=1)
    assert core.core_df.collect() == []
    assert core.rounds == 2
    assert core.users_df.collect() == [] and core.items_df.collect() == []


INDEX_SCHEMA = S.USER_INDEX_SCHEMA


def test_extend_index_appends_new_ids_by_first_seen_then_id(spark):
    old = spark.createDataFrame(
        [
            ("x", 0, ts("2024-01-01T00:00:00+00:00"), "2024-01-01"),
            ("y", 1, ts("2024-01-02T00:00:00+00:00"), "2024-01-01"),
        ],
        INDEX_SCHEMA,
    )
    tonight = spark.createDataFrame(
        [
            ("z", ts("2024-03-02T00:00:00+00:00")),
            ("w", ts("2024-03-01T00:00:00+00:00")),
            ("y", ts("2023-12-01T00:00:00+00:00")),
            ("v", ts("2024-03-01T00:00:00+00:00")),
        ],
        "user_id string, first_seen timestamp",
    )
    actual = tx.extend_index(
        old, tonight.repartition(3), id_col=S.USER_ID, idx_col=S.USER_IDX, run_date=RUN_DATE
    )
    expected = spark.createDataFrame(
        [
            ("x", 0, ts("2024-01-01T00:00:00+00:00"), "2024-01-01"),
            ("y", 1, ts("2024-01-02T00:00:00+00:00"), "2024-01-01"),  # unchanged, not renumbered
            ("v", 2, ts("2024-03-01T00:00:00+00:00"), "2024-03-31"),
            ("w", 3, ts("2024-03-01T00:00:00+00:00"), "2024-03-31"),
            ("z", 4, ts("2024-03-02T00:00:00+00:00"), "2024-03-31"),
        ],
        INDEX_SCHEMA,
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_extend_index_starts_at_zero(spark):
    empty = spark.createDataFrame([], INDEX_SCHEMA)
    tonight = spark.createDataFrame(
        [("b", ts("2024-03-01T00:00:00+00:00")), ("a", ts("2024-03-01T00:00:00+00:00"))],
        "user_id string, first_seen timestamp",
    )
    actual = tx.extend_index(empty, tonight, id_col=S.USER_ID, idx_col=S.USER_IDX, run_date=RUN_DATE)
    expected = spark.createDataFrame(
        [
            ("a", 0, ts("2024-03-01T00:00:00+00:00"), "2024-03-31"),
            ("b", 1, ts("2024-03-01T00:00:00+00:00"), "2024-03-31"),
        ],
        INDEX_SCHEMA,
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def _indexed(spark, rows):
    """rows: (user_idx, item_idx, item_id, hour) -> indexed positives."""
    t0 = ts("2024-03-01T00:00:00+00:00")
    return spark.createDataFrame(
        [(u, i, item_id, t0 + dt.timedelta(hours=h)) for u, i, item_id, h in rows],
        "user_idx int, item_idx int, item_id string, event_ts timestamp",
    )


def _split_sets(split_df):
    return {r[S.USER_IDX]: (list(r["_train_items"]), list(r["_test_items"])) for r in split_df.collect()}


def test_leave_one_out_takes_latest_with_item_id_tie_break(spark):
    positives = _indexed(
        spark,
        [
            (0, 5, "b", 1),
            (0, 6, "a", 3),
            (0, 7, "c", 3),  # tie at hour 3: greatest item_id "c" is the test
            (1, 5, "b", 9),
            (1, 6, "a", 2),
            (2, 6, "a", 1),  # a single positive goes to test
        ],
    )
    ranks_df = tx.item_ranks(positives)
    split_df = positives.transform(tx.to_user_histories, ranks_df).transform(tx.with_split, split=S.SPLIT_LOO)
    assert _split_sets(split_df) == {0: ([5, 6], [7]), 1: ([6], [5]), 2: ([], [6])}


def test_chrono_split_keeps_latest_fraction(spark):
    positives = _indexed(
        spark, [(0, i, f"i{i}", 10 - i) for i in range(5)] + [(1, 1, "i1", 1), (1, 2, "i2", 2)]
    )
    ranks_df = tx.item_ranks(positives)
    split_df = positives.transform(tx.to_user_histories, ranks_df).transform(
        tx.with_split, split=S.SPLIT_CHRONO, test_fraction=0.3
    )
    # user 0: 5 positives, ceil(1.5) = 2 latest in test (items 1 and 0 are the latest: hours 9, 10)
    assert _split_sets(split_df) == {0: ([4, 3, 2], [1, 0]), 1: ([1], [2])}
    with pytest.raises(ValueError, match="test_fraction"):
        tx.with_split(split_df, split=S.SPLIT_CHRONO, test_fraction=1.0)


def test_item_ranks_are_dense_over_tonights_items(spark):
    positives = _indexed(spark, [(0, 7, "a", 1), (1, 3, "b", 1), (1, 7, "a", 2), (2, 12, "c", 1)])
    expected = spark.createDataFrame(
        [(3, 0, 3), (7, 1, 3), (12, 2, 3)], "item_idx int, item_rank int, n_items int"
    )
    assert_df_equality(tx.item_ranks(positives), expected, ignore_row_order=True, ignore_nullable=True)


def _negative_fixture(spark):
    """20 users over 30 items (indexes 100..129, so ranks differ from indexes); two hostile users."""
    rows = []
    for u in range(18):
        for k in range(3 + u % 5):
            i = (u * 7 + k * 3) % 30
            rows.append((u, 100 + i, f"i{i:02d}", k))
    rows += [(18, 100 + i, f"i{i:02d}", i) for i in range(27)]  # only 3 items left for 5 test negatives
    rows += [(19, 100 + i, f"i{i:02d}", i) for i in range(30)]  # interacted with every item
    return _indexed(spark, rows), rows


def _run_negatives(spark, positives, partitions, *, seed=11):
    ranks_df = tx.item_ranks(positives)
    split_df = (
        positives.repartition(partitions)
        .transform(tx.to_user_histories, ranks_df)
        .transform(tx.with_split, split=S.SPLIT_LOO)
        .repartition(partitions)
    )
    train = [tuple(r) for r in tx.explode_train_rows(split_df, ranks_df, negatives=4, seed=seed).collect()]
    test = [tuple(r) for r in tx.explode_test_rows(split_df, ranks_df, negatives=5, seed=seed).collect()]
    return sorted(train), sorted(test)


def test_negatives_are_never_positives_and_have_the_right_counts(spark):
    positives, rows = _negative_fixture(spark)
    train, test = _run_negatives(spark, positives, 2)
    items_of: dict[int, set[int]] = {}
    for u, i, _, _ in rows:
        items_of.setdefault(u, set()).add(i)
    latest = {u: max((h, item_id, i) for uu, i, item_id, h in rows if uu == u)[2] for u in items_of}
    all_items = set(range(100, 130))
    for u, items in items_of.items():
        test_pos = [i for uu, i, y in test if uu == u and y == 1.0]
        test_neg = [i for uu, i, y in test if uu == u and y == 0.0]
        train_pos = [i for uu, i, y in train if uu == u and y == 1.0]
        train_neg = [i for uu, i, y in train if uu == u and y == 0.0]
        assert test_pos == [latest[u]]
        assert sorted(train_pos + test_pos) == sorted(items)
        available = all_items - items
        assert len(set(test_neg)) == len(test_neg) == min(5, len(available))
        assert set(test_neg) <= available and set(train_neg) <= available
        expected_train_neg = 4 * len(train_pos) if available else 0
        assert len(train_neg) == expected_train_neg
        if len(available) >= expected_train_neg:
            assert len(set(train_neg)) == expected_train_neg  # distinct while enough items exist
    # user 18 takes the slow path: all 3 remaining items; user 19 has none to take.
    assert sorted(i for u, i, y in test if u == 18 and y == 0.0) == [127, 128, 129]
    assert [r for r in test if r[0] == 19] == [(19, 129, 1.0)]


def test_negatives_depend_on_seed_not_partitioning(spark):
    positives, _ = _negative_fixture(spark)
    first = _run_negatives(spark, positives, 1)
    assert _run_negatives(spark, positives, 5) == first
    assert _run_negatives(spark, positives, 3, seed=12) != first
