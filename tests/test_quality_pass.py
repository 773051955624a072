"""The gate on the writers' counts: the Spark gate's results on good data, never a verdict on bad data,
and never a pass when the writers' batches could share a key."""

from __future__ import annotations

import json
import random
from collections import Counter

import pyarrow as pa
import pytest
from pyspark.sql.pandas.types import to_arrow_schema

from jobs.common import quality, quality_metrics, quality_pass
from schemas import expectations as ex
from schemas import quality_terms as terms
from tests.test_quality import CASES, HOSTILE, NAN

EDGES_SCHEMA = CASES[quality.SIMILARITY_EDGES][0]
TOP_K_CONTEXT = {quality.TOP_K: 2}


def _suite(dataset: str, context: dict) -> tuple[terms.ExpectationSpec, ...]:
    return tuple(ex.SUITES[dataset](quality.QualityThresholds(), context))


def _table(dataset: str, rows: list[tuple]) -> pa.Table:
    schema = to_arrow_schema(CASES[dataset][0])
    return pa.Table.from_pylist([dict(zip(schema.names, row, strict=True)) for row in rows], schema=schema)


def _partials(suite, dataset: str, *writers: list[list[tuple]]) -> list[dict]:
    """One partial per writer; a writer is a list of batches, a batch a list of rows."""
    schema = to_arrow_schema(CASES[dataset][0])
    partials = []
    for batches in writers:
        metrics = quality_pass.PassMetrics(suite, schema)
        for rows in batches:
            metrics.add(_table(dataset, rows))
        partials.append(metrics.partial())
    return partials


def _gate(
    spark, tmp_path, dataset: str, rows: list[tuple], partials: list[dict], suite, context: dict
) -> dict:
    counts = quality.WrittenCounts(
        suite, tuple(partials), staged=lambda: spark.createDataFrame(rows, CASES[dataset][0])
    )
    return quality.run_gate(
        "similarity",
        {dataset: counts},
        reports_root=str(tmp_path),
        run_date="2024-03-31",
        context=context,
        thresholds=terms.QualityThresholds(mode=terms.MODE_WARN),
    )


# Datasets whose whole suite the writers can count (the others hold SQL a pass does not run).
COUNTED = (quality.SIMILARITY_EDGES, quality.GREMLIN_VERTICES, quality.GREMLIN_EDGES, quality.EMBEDDINGS)


@pytest.mark.parametrize("dataset", COUNTED)
def test_writers_counts_decide_a_good_dataset_as_the_spark_gate_does(spark, dataset):
    schema, good, _, context, _ = CASES[dataset]
    suite = _suite(dataset, context)
    ordered = sorted(good, key=lambda row: row[0])  # two writers, each with its own keys
    partials = _partials(suite, dataset, [ordered[:2]], [ordered[2:3], ordered[3:]])
    written = quality_metrics.decide_written(dataset, suite, partials)
    on_frame = quality_metrics.validate_frame(dataset, spark.createDataFrame(good, schema), list(suite))
    assert written == on_frame["expectations"]


@pytest.mark.parametrize("dataset", sorted(CASES))
def test_writers_counts_never_decide_a_bad_dataset(spark, tmp_path, dataset):
    schema, _, bad, context, expected_failures = CASES[dataset]
    suite = _suite(dataset, context)
    assert quality_metrics.decide_written(dataset, suite, _partials(suite, dataset, [bad])) is None
    results = _gate(spark, tmp_path, dataset, bad, _partials(suite, dataset, [bad]), suite, context)
    checked = results["datasets"][dataset]
    assert checked["counted_by"] == "spark"
    assert {c["description"] for c in checked["expectations"] if not c["success"]} == expected_failures
    on_frame = quality_metrics.validate_frame(dataset, spark.createDataFrame(bad, schema), list(suite))
    assert checked["expectations"] == on_frame["expectations"]  # examples included


def test_a_pair_written_by_two_writers_is_not_passed(spark, tmp_path):
    # Each writer's edges are unique and sorted; together (a, b) is there twice and a has 3 neighbours.
    first = [("a", "b", 0.9, 1), ("a", "c", 0.8, 2)]
    second = [("a", "b", 0.7, 1), ("b", "a", 0.9, 1)]
    suite = _suite(quality.SIMILARITY_EDGES, TOP_K_CONTEXT)
    partials = _partials(suite, quality.SIMILARITY_EDGES, [first], [second])
    merged = quality_pass.merge_partials(suite, partials)
    assert [line.split(":")[0] for line in merged[quality_pass.UNPROVEN]] == [
        "at most 2 neighbours per product",
        "each (src, dst) pair once",
    ]
    assert quality_metrics.decide_written("edges", suite, partials) is None
    results = _gate(spark, tmp_path, quality.SIMILARITY_EDGES, first + second, partials, suite, TOP_K_CONTEXT)
    failed = {
        c["description"]
        for c in results["datasets"][quality.SIMILARITY_EDGES]["expectations"]
        if not c["success"]
    }
    assert failed == {"each (src, dst) pair once", "at most 2 neighbours per product"}


def test_batches_are_apart_by_a_key_range_or_by_their_sorted_key_intervals(spark, tmp_path):
    # All-pairs tiles: one row block (same src range) against two column blocks (dst ranges apart), and
    # one tile cut in two batches (src and dst ranges overlap, sorted key intervals apart).
    suite = _suite(quality.SIMILARITY_EDGES, {})
    tiles = [[("a", "c", 0.5), ("b", "c", 0.5)], [("a", "d", 0.5), ("b", "d", 0.5)]]
    cut = [[("c", "d", 0.5), ("c", "e", 0.5)], [("c", "f", 0.5), ("d", "e", 0.5)]]
    rows = [(*row, None) for batch in tiles + cut for row in batch]  # rank: null in all-pairs mode
    dataset = quality.SIMILARITY_EDGES
    partials = _partials(
        suite, dataset, [[(*r, None) for r in b] for b in tiles], [[(*r, None) for r in b] for b in cut]
    )
    assert quality_pass.merge_partials(suite, partials)[quality_pass.UNPROVEN] == []
    written = quality_metrics.decide_written("edges", suite, partials)
    assert written is not None and all(c["success"] for c in written)
    # The same rows unsorted in one batch are counted by a hash aggregation: still unique, still decided.
    assert quality_metrics.decide_written("edges", suite, _partials(suite, dataset, [rows[::-1]])) == written
    # A duplicate inside an unsorted batch is found by the aggregation.
    twice = _partials(suite, dataset, [rows + rows[:1]])[0]
    assert twice[quality_pass.COUNTS][str(_index(suite, "each (src, dst) pair once"))] == 2


def test_batches_of_the_two_directions_are_apart_by_side(spark, tmp_path):
    # Directed all-pairs on a diagonal tile: (a, b), (a, c), (b, c) one way and the mirror the other way.
    # Ranges and sorted intervals overlap; every forward edge has src < dst and every mirrored one src > dst.
    suite = _suite(quality.SIMILARITY_EDGES, {})
    forward = [("a", "b", 0.5, None), ("a", "c", 0.5, None), ("b", "c", 0.5, None)]
    mirrored = sorted((dst, src, score, rank) for src, dst, score, rank in forward)
    dataset = quality.SIMILARITY_EDGES
    partials = _partials(suite, dataset, [forward], [mirrored])
    assert [extent[quality_pass.SIDES] for p in partials for extent in p[quality_pass.EXTENTS]] == [
        {"src\x1fdst": "<"},
        {"src\x1fdst": ">"},
    ]
    assert quality_pass.merge_partials(suite, partials)[quality_pass.UNPROVEN] == []
    # Two batches on the same side are not apart by it: (a, b) written twice is not passed.
    same_side = _partials(suite, dataset, [forward], [forward[:1]])
    assert quality_metrics.decide_written("edges", suite, same_side) is None
    # A mirrored batch with one forward edge in it has no side: not apart, and (a, b) twice is caught.
    mixed = sorted([*mirrored, ("a", "b", 0.4, None)])
    partials = _partials(suite, dataset, [forward], [mixed])
    assert quality_metrics.decide_written("edges", suite, partials) is None
    results = _gate(spark, tmp_path, dataset, forward + mixed, partials, suite, {})
    failed = [c["description"] for c in results["datasets"][dataset]["expectations"] if not c["success"]]
    assert failed == ["each (src, dst) pair once"]


def _index(suite, description: str) -> int:
    return next(i for i, spec in enumerate(suite) if spec.description == description)


@pytest.mark.parametrize(
    "description",
    [
        "no product is its own neighbour (src != dst)",
        "scores are finite (no NaN, no Infinity)",
        "at most 2 neighbours per product",
    ],
)
def test_each_row_rule_counts_what_its_query_returns(spark, description):
    rows = [
        ("a", "a", 1.0, 1),
        ("a", "b", NAN, 2),
        ("a", "c", float("inf"), 3),
        ("b", "b", -float("inf"), 1),
        ("b", "a", None, 2),
        (HOSTILE, HOSTILE, 0.5, 1),
        ("c", "a", 0.1, 1),
        ("c", "b", 0.2, 2),
        ("c", "d", 0.3, 3),
        ("c", "e", 0.3, 4),
    ]
    suite = _suite(quality.SIMILARITY_EDGES, TOP_K_CONTEXT)
    index = _index(suite, description)
    counted = _partials(suite, quality.SIMILARITY_EDGES, [rows])[0][quality_pass.COUNTS][str(index)]
    spark.createDataFrame(rows, EDGES_SCHEMA).createOrReplaceTempView("rule_rows")
    query = suite[index].kwargs["unexpected_rows_query"].format(batch="rule_rows")
    assert counted == spark.sql(query).count() > 0


@pytest.mark.parametrize("dim", [2, None])
def test_the_vector_rule_counts_what_its_query_returns(spark, dim):
    rows = [
        ("a", [0.5, 1.0], "ok", None),
        ("b", [NAN, 1.0], "ok", None),
        ("c", [1.0, float("inf")], "ok", None),
        ("d", [1.0, None], "ok", None),
        ("e", None, "ok", None),
        ("f", [], "ok", None),
        ("g", [1.0, 2.0, 3.0], "ok", None),
        ("h", [NAN], "error", "corrupt_image: x"),
        ("i", None, None, None),
        ("j", [-float("inf"), 0.0], "ok", None),
    ]
    context = {quality.EMBEDDING_DIM: dim} if dim else {}
    suite = _suite(quality.EMBEDDINGS, context)
    index = _index(suite, "every ok row has a finite embedding" + (f" of {dim} floats" if dim else ""))
    counted = _partials(suite, quality.EMBEDDINGS, [rows])[0][quality_pass.COUNTS][str(index)]
    spark.createDataFrame(rows, CASES[quality.EMBEDDINGS][0]).createOrReplaceTempView("vector_rows")
    query = suite[index].kwargs["unexpected_rows_query"].format(batch="vector_rows")
    selected = sorted(row["sku"] for row in spark.sql(query).collect())
    assert selected == (["b", "c", "d", "e", "f", "g", "j"] if dim else ["b", "c", "d", "e", "f", "j"])
    assert counted == len(selected)
    # Without a size, the sizes are compared with each other (a query the pass leaves to Spark).
    descriptions = [spec.description for spec in suite]
    assert ("all embeddings have the same size" in descriptions) is (dim is None)


def test_the_text_score_rule_counts_what_its_query_returns_and_never_less():
    # Plain decimals Spark and Arrow read alike; anything else is counted, which can only send the gate to
    # Spark: " 1", "+1" and "1d" Spark reads as finite doubles, the pass does not try to.
    suite = _suite(quality.GREMLIN_EDGES, {})
    index = _index(suite, "score:Double is a finite number on every edge")
    schema = to_arrow_schema(CASES[quality.GREMLIN_EDGES][0])
    plain = ["0.9", "-1.5E-3", "1e-07", "12", "-0", "5e-324", "1.7976931348623157e308"]
    spark_reject = [None, "", "NaN", "-Infinity", "abc", "1e999", "1..2", "0x10"]
    spark_accept = [" 1", "+1", "1d"]

    def counted(scores: list) -> int:
        rows = [
            {**dict.fromkeys(schema.names, "x"), "~id": f"e{i}", "score:Double": score}
            for i, score in enumerate(scores)
        ]
        partial = quality_pass.table_partial(suite, pa.Table.from_pylist(rows, schema=schema))
        return partial[quality_pass.COUNTS][str(index)]

    assert counted(plain) == 0
    assert [counted([s]) for s in spark_reject] == [1] * len(spark_reject)
    assert [counted([s]) for s in spark_accept] == [1] * len(spark_accept)


def test_the_text_score_rule_agrees_with_its_query(spark):
    suite = _suite(quality.GREMLIN_EDGES, {})
    index = _index(suite, "score:Double is a finite number on every edge")
    scores = ["0.9", "-1.5E-3", "1e-07", None, "", "NaN", "-Infinity", "abc", "1e999", " 1", "+1"]
    rows = [(f"e{i}", "a", "b", "similar", s) for i, s in enumerate(scores)]
    spark.createDataFrame(rows, CASES[quality.GREMLIN_EDGES][0]).createOrReplaceTempView("score_rows")
    query = suite[index].kwargs["unexpected_rows_query"].format(batch="score_rows")
    rejected = {row["score:Double"] for row in spark.sql(query).collect()}
    assert rejected == {None, "", "NaN", "-Infinity", "abc", "1e999"}
    schema = to_arrow_schema(CASES[quality.GREMLIN_EDGES][0])
    table = pa.Table.from_pylist([dict(zip(schema.names, row, strict=True)) for row in rows], schema=schema)
    counted = quality_pass.table_partial(suite, table)[quality_pass.COUNTS][str(index)]
    assert counted == len(rejected) + 2  # " 1" and "+1": counted, left to Spark


def test_the_funnel_is_counted_on_the_driver_and_a_failing_one_is_checked_with_spark(spark, tmp_path):
    results = quality.run_gate(
        "embed",
        {},
        reports_root=str(tmp_path),
        run_date="2024-03-31",
        context={quality.ROWS_IN: 1000, quality.ROWS_REJECTED: 5},
    )
    assert results["datasets"]["funnel"]["counted_by"] == "driver" and results["success"]
    with pytest.raises(quality.QualityGateError, match="at most 10% of input rows rejected"):
        quality.run_gate(
            "embed",
            {},
            reports_root=str(tmp_path),
            run_date="2024-03-31",
            context={quality.ROWS_IN: 1000, quality.ROWS_REJECTED: 500},
        )
    assert (
        quality.storage.read_json(quality.quality_uri(str(tmp_path), "embed", "2024-03-31"))["datasets"][
            "funnel"
        ]["counted_by"]
        == "spark"
    )


def test_counts_made_for_another_suite_are_not_used(spark, tmp_path):
    # Counted for top-k 5, checked for top-k 2: the gate reads the data instead.
    schema, good, _, context, _ = CASES[quality.SIMILARITY_EDGES]
    other = _suite(quality.SIMILARITY_EDGES, {quality.TOP_K: 5})
    results = _gate(
        spark,
        tmp_path,
        quality.SIMILARITY_EDGES,
        good,
        _partials(other, quality.SIMILARITY_EDGES, [good]),
        other,
        context,
    )
    assert results["datasets"][quality.SIMILARITY_EDGES]["counted_by"] == "spark"


@pytest.mark.parametrize("seed", range(6))
def test_a_batch_counts_and_extent_match_brute_force(seed):
    # Random edges, sorted or not, with and without repeated pairs and self-loops: the batch's counts and
    # key ranges are what plain Python finds.
    rng = random.Random(seed)
    skus = [f"s{rng.randrange(30):02d}" for _ in range(rng.randrange(2, 60))]
    pairs = [(rng.choice(skus), rng.choice(skus)) for _ in range(rng.randrange(1, 80))]
    if seed % 2:
        pairs.sort()
    if seed % 3 == 0:
        pairs = sorted(set(pairs))
    rows = [(src, dst, 0.5, None) for src, dst in pairs]
    suite = _suite(quality.SIMILARITY_EDGES, {})
    partial = _partials(suite, quality.SIMILARITY_EDGES, [rows])[0]
    counts = partial[quality_pass.COUNTS]
    repeated = Counter(pairs)
    assert counts[str(_index(suite, "each (src, dst) pair once"))] == sum(
        n for n in repeated.values() if n > 1
    )
    assert counts[str(_index(suite, "no product is its own neighbour (src != dst)"))] == sum(
        src == dst for src, dst in pairs
    )
    (extent,) = partial[quality_pass.EXTENTS]
    assert extent["ranges"] == {
        "src": [min(p[0] for p in pairs), max(p[0] for p in pairs)],
        "dst": [min(p[1] for p in pairs), max(p[1] for p in pairs)],
    }
    assert bool(extent["sorted"]) == (pairs == sorted(pairs))


def test_what_the_pass_cannot_count_exactly_is_left_to_spark(spark):
    # Float keys (-0.0 and 0.0 are one value to Spark, NaN has no range), a bound the column cannot hold,
    # a between without bounds: never decided by the writers, and the writer itself never fails.
    unique_k = terms.ExpectationSpec(terms.EXPECT_VALUES_UNIQUE, {"column": "k"}, description="k unique")
    cases = [
        ((unique_k,), [pa.table({"k": [-0.0, 0.0]})]),
        ((unique_k,), [pa.table({"k": [float("nan"), 1.0]}), pa.table({"k": [float("nan"), 2.0]})]),
        (
            (
                terms.ExpectationSpec(
                    terms.EXPECT_VALUES_BETWEEN,
                    {"column": "k", "max_value": 2**53 + 1},
                    description="k small",
                ),
            ),
            [pa.table({"k": [1.0, 2.0]})],
        ),
        (
            (terms.ExpectationSpec(terms.EXPECT_VALUES_BETWEEN, {"column": "k"}, description="no bounds"),),
            [pa.table({"k": [1.0, 2.0]})],
        ),
    ]
    for suite, tables in cases:
        partials = [quality_pass.table_partial(suite, table) for table in tables]
        json.dumps(partials)  # what the tasks send
        assert quality_metrics.decide_written("k", suite, partials) is None, suite
    spark_result = quality_metrics.validate_frame(
        "k", spark.createDataFrame([(-0.0,), (0.0,)], "k double"), [unique_k]
    )
    assert spark_result["success"] is False  # what the writers' counts must not have passed


def test_a_suite_with_one_key_the_writers_cannot_count_is_left_to_spark():
    # (src, dst) is counted and has extents; the float key is not, and no extent holds its ranges: the
    # merge says so instead of failing on the missing ranges.
    suite = (
        terms.ExpectationSpec(
            terms.EXPECT_COMPOUND_UNIQUE, {"column_list": ["src", "dst"]}, description="pairs"
        ),
        terms.ExpectationSpec(terms.EXPECT_VALUES_UNIQUE, {"column": "score"}, description="scores"),
    )
    table = pa.table({"src": ["a", "b"], "dst": ["b", "a"], "score": [0.5, 0.6]})
    partials = [quality_pass.table_partial(suite, table), quality_pass.table_partial(suite, table)]
    merged = quality_pass.merge_partials(suite, partials)
    assert "scores: not counted by every writer" in merged[quality_pass.UNPROVEN]
    assert quality_metrics.decide_written("t", suite, partials) is None


def _ncf_rows(users: dict[int, list[tuple[int, float]]]) -> list[tuple]:
    return [(user, item, label) for user, items in users.items() for item, label in items]


@pytest.mark.parametrize("dataset", [quality.TRAIN, quality.TEST])
def test_ncf_counts_decide_a_good_set_as_the_spark_gate_does_when_users_are_apart(spark, dataset):
    # Batches hold whole users, their user ranges overlap ({0, 2} and {1, 3}): only their listed users
    # prove them apart.
    context = {quality.N_USERS: 4, quality.N_ITEMS: 5, quality.TEST_NEGATIVES: 2}
    suite = _suite(dataset, context)
    users = {u: [(u, 1.0), ((u + 1) % 5, 0.0), ((u + 3) % 5, 0.0)] for u in range(4)}
    first, second = _ncf_rows({0: users[0], 2: users[2]}), _ncf_rows({1: users[1], 3: users[3]})
    partials = _partials(suite, dataset, [first], [second])
    written = quality_metrics.decide_written(dataset, suite, partials)
    on_frame = quality_metrics.validate_frame(
        dataset, spark.createDataFrame(first + second, CASES[dataset][0]), list(suite)
    )
    assert on_frame["success"] and written == on_frame["expectations"]
    # A user whose rows are in two batches is not proven: its items could repeat across them.
    split = _partials(suite, dataset, [first + second[:1]], [second[1:]])
    merged = quality_pass.merge_partials(suite, split)
    assert any("not proven apart on ['user_idx']" in reason for reason in merged[quality_pass.UNPROVEN])
    assert quality_metrics.decide_written(dataset, suite, split) is None


@pytest.mark.parametrize("seed", range(4))
def test_each_per_user_rule_counts_what_its_query_returns(spark, seed):
    rng = random.Random(seed)
    labels = [0.0, 1.0, 1.0, 0.5]
    rows = [(rng.randrange(6), rng.randrange(5), rng.choice(labels)) for _ in range(rng.randrange(10, 40))]
    spark.createDataFrame(rows, CASES[quality.TEST][0]).createOrReplaceTempView("per_user_rows")
    # In any order (a hash aggregation), and with each user's rows together, users ascending (one sort).
    clustered = sorted(rows, key=lambda row: row[0])
    for leave_one_out in (True, False):
        suite = _suite(quality.TEST, {quality.TEST_NEGATIVES: 3, quality.LEAVE_ONE_OUT: leave_one_out})
        for index, spec in enumerate(suite):
            if spec.rule is None:
                continue
            returned = spark.sql(spec.kwargs["unexpected_rows_query"].format(batch="per_user_rows")).count()
            for table in (_table(quality.TEST, rows), _table(quality.TEST, clustered)):
                counted = quality_pass.table_partial(suite, table)[quality_pass.COUNTS]
                assert counted[str(index)] == returned, spec.description


def test_label_in_set_counts_every_value_outside_it():
    suite = _suite(quality.TRAIN, {})
    index = _index(suite, "label is 0 or 1")
    table = _table(quality.TRAIN, [(0, 0, 1.0), (0, 1, 0.0), (1, 0, 0.5), (1, 1, None), (2, 0, NAN)])
    assert quality_pass.table_partial(suite, table)[quality_pass.COUNTS][str(index)] == 2


def test_a_warning_counted_exactly_is_decided_with_spark_gates_result_and_a_critical_one_is_not(spark):
    # A user who repeats an item in train is a warning: an exact count, Spark's result has no examples.
    context = {quality.N_USERS: 2, quality.N_ITEMS: 3}
    suite = _suite(quality.TRAIN, context)
    rows = [(0, 0, 1.0), (0, 1, 0.0), (0, 1, 0.0), (1, 1, 1.0), (1, 2, 0.0)]
    written = quality_metrics.decide_written("train", suite, _partials(suite, quality.TRAIN, [rows]))
    frame = spark.createDataFrame(rows, CASES[quality.TRAIN][0])
    on_frame = quality_metrics.validate_frame("train", frame, list(suite))
    assert on_frame["success"] and written == on_frame["expectations"]
    failed = [c for c in written if not c["success"]]
    assert [(c["severity"], c["observed_value"]) for c in failed] == [(quality.WARNING, 1)]
    # The same repeat in a test set is critical: left to Spark.
    test_suite = _suite(quality.TEST, context)
    test_rows = [(0, 0, 1.0), (0, 1, 0.0), (0, 1, 0.0), (1, 1, 1.0), (1, 2, 0.0)]
    test_partials = _partials(test_suite, quality.TEST, [test_rows])
    assert quality_metrics.decide_written("test", test_suite, test_partials) is None


@pytest.mark.parametrize(
    ("dtype", "value_set", "countable"),
    [
        (pa.float32(), [0.0, 1.0], True),
        (pa.float32(), [0.1, 0.2], False),  # Spark compares double(0.1f) with 0.1: not equal
        (pa.float64(), [0.1, 0.2], True),
        (pa.string(), ["view", "click"], True),
        (pa.string(), [1.0], False),  # Spark compares "1" with "1.0"
        (pa.int32(), [True], False),
        (pa.int64(), [1, 2], True),
        (pa.int64(), [1.5], False),
    ],
)
def test_a_value_set_is_counted_only_where_arrow_compares_as_spark_does(dtype, value_set, countable):
    spec = terms.ExpectationSpec(
        terms.EXPECT_VALUES_IN_SET, {"column": "x", "value_set": value_set}, description="x in set"
    )
    partial = quality_pass.table_partial((spec,), pa.table({"x": pa.array([], dtype)}))
    assert (partial[quality_pass.UNPROVEN] == []) is countable


def test_a_staged_file_that_is_not_parquet_is_left_to_spark(spark, tmp_path):
    # Spark reads every file whose name does not start with "_" or "."; so do the counting tasks, and one
    # they cannot read leaves the set to Spark, whose reading fails the bad row.
    folder = tmp_path / "train"
    # One partition, so one file, the row's (Spark also writes partition 0's file when it is empty).
    spark.createDataFrame([(0, 0, 1.0)], CASES[quality.TRAIN][0]).coalesce(1).write.parquet(str(folder))
    (good,) = folder.glob("part-*.parquet")
    (folder / "part-99999.snappy").write_bytes(good.read_bytes())  # another Parquet file, odd name
    (folder / "part-00000-bad.txt").write_text("not parquet")
    suite = _suite(quality.TRAIN, {quality.N_USERS: 1, quality.N_ITEMS: 1})
    checked = quality.read_back(spark, str(folder), suite)
    assert isinstance(checked, quality.WrittenCounts)
    merged = quality_pass.merge_partials(suite, checked.partials)
    assert merged[quality_pass.ROWS] == 2  # the Parquet file under an odd name is counted too
    assert any("part-00000-bad.txt not read as Parquet" in reason for reason in merged[quality_pass.UNPROVEN])
    assert quality_metrics.decide_written("train", suite, checked.partials) is None
