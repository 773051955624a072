"""jobs.transforms.gremlin, one pure transformation at a time: small frames with explicit schemas, a null
row and hostile strings (quotes, commas, newlines, NUL, leading spaces, emoji), compared whole.

Expected rows are written by hand from the documented rules (reasons in :mod:`schemas.gremlin`, first
applicable wins; ids ``product:<sku>`` and ``<label>:<len(from)>:<from>-><to>``).
"""
from __future__ import annotations

from chispa import assert_df_equality
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.transforms import gremlin as tg
from schemas import catalog, embeddings, gremlin, similarity

STRING = T.StringType()
INF = float("inf")
NAN = float("nan")

CATALOG_FIELDS = [T.StructField(column, STRING, True) for column in catalog.CATALOG_COLUMNS]
REASON_FIELD = T.StructField(gremlin.REASON, STRING, True)
ROW_ORDER_TYPE = T.StructType([T.StructField("file", STRING, True), T.StructField("pos", T.LongType(), True)])
EDGE_FIELDS = [
    T.StructField(similarity.SRC, STRING, True),
    T.StructField(similarity.DST, STRING, True),
    T.StructField(similarity.SCORE, T.DoubleType(), True),
    T.StructField(similarity.RANK, T.IntegerType(), True),
]
QUOTED = 'Q"1,x'  # a quote and a comma: the CSV writer must quote it
SPACED = " 8sp"  # leading space: data, never trimmed


def _frame(spark: SparkSession, rows: list[tuple], fields: list[T.StructField]) -> DataFrame:
    return spark.createDataFrame(rows, T.StructType(fields))


def _assert_same(actual: DataFrame, expected: DataFrame) -> None:
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True, allow_nan_equality=True)


def test_with_vertex_reject_reason_tags_malformed_missing_and_nul_skus(spark: SparkSession) -> None:
    fields = [*CATALOG_FIELDS, T.StructField(tg.CORRUPT_RECORD, STRING, True)]
    rows = [
        ("A1", 'Boot, "Chelsea"', "Acme", "Shoes", "Boots", "a1.jpg", None),
        (QUOTED, "multi\nline", "  lead", "Sandals", "Flat", "C:\\x\\", None),
        (None, "no sku", "b", "c", "d", "e", None),
        ("   ", "blank sku", "b", "c", "d", "e", None),
        ("Z\x00", "sku with a NUL", "b", "c", "d", "e", None),
        ("M1", None, None, None, None, None, "M1,too,many,fields,here,x,y"),
        (None, None, None, None, None, None, '"unclosed,quote'),
        (None, None, None, None, None, None, None),
    ]
    expected = [
        (*rows[0], None),
        (*rows[1], None),
        (*rows[2], gremlin.VERTEX_MISSING_SKU),
        (*rows[3], gremlin.VERTEX_MISSING_SKU),
        (*rows[4], gremlin.VERTEX_SKU_HAS_NUL),
        (*rows[5], gremlin.VERTEX_MALFORMED_ROW),  # a malformed row is that first, whatever its sku
        (*rows[6], gremlin.VERTEX_MALFORMED_ROW),
        (*rows[7], gremlin.VERTEX_MISSING_SKU),
    ]

    actual = _frame(spark, rows, fields).transform(tg.with_vertex_reject_reason)

    _assert_same(actual, _frame(spark, expected, [*fields, REASON_FIELD]))


def test_mark_duplicate_skus_keeps_the_first_untagged_row_of_each_sku(spark: SparkSession) -> None:
    fields = [*CATALOG_FIELDS, T.StructField(gremlin.ROW_ORDER, ROW_ORDER_TYPE, True), REASON_FIELD]
    boot = ("A1", 'Boot, "Chelsea"', "Acme", "Shoes", "Boots", "a1.jpg")
    rows = [
        ("A1", None, None, None, None, None, ("f0", 0), gremlin.VERTEX_MALFORMED_ROW),  # tagged: not compared
        (*boot, ("f0", 1), None),
        (*boot, ("f1", 0), None),
        ("A1", "Other name", "Acme", "Shoes", "Boots", "other.jpg", ("f1", 1), None),
        ("A2", None, "B", None, "", "a2.jpg", ("f0", 2), None),
        ("A2", None, "B", None, "", "a2.jpg", ("f0", 3), None),  # equal, nulls included
        (QUOTED, "multi\nline", None, None, None, None, ("f0", 4), None),
        (None, "no sku", None, None, None, None, ("f0", 5), gremlin.VERTEX_MISSING_SKU),
        (None, "no sku", None, None, None, None, ("f0", 6), gremlin.VERTEX_MISSING_SKU),
    ]
    reasons = [
        gremlin.VERTEX_MALFORMED_ROW,
        None,
        gremlin.VERTEX_DUPLICATE_IDENTICAL,
        gremlin.VERTEX_DUPLICATE_SKU,
        None,
        gremlin.VERTEX_DUPLICATE_IDENTICAL,
        None,
        gremlin.VERTEX_MISSING_SKU,
        gremlin.VERTEX_MISSING_SKU,
    ]
    expected = [(*row[:-1], reason) for row, reason in zip(rows, reasons, strict=True)]

    actual = _frame(spark, rows, fields).transform(tg.mark_duplicate_skus)

    _assert_same(actual, _frame(spark, expected, fields))


def test_vertex_skus_are_the_distinct_skus_of_good_rows(spark: SparkSession) -> None:
    fields = [*CATALOG_FIELDS, T.StructField(tg.CORRUPT_RECORD, STRING, True)]
    rows = [
        ("A1", "n", "b", "c", "d", "e", None),
        ("A1", "other", "b", "c", "d", "e", None),
        (SPACED, "n", "b", "c", "d", "e", None),
        (None, "n", "b", "c", "d", "e", None),
        ("Z\x00", "n", "b", "c", "d", "e", None),
        ("M1", None, None, None, None, None, "M1,x"),
    ]

    actual = _frame(spark, rows, fields).transform(tg.vertex_skus)

    _assert_same(actual, _frame(spark, [("A1",), (SPACED,)], [T.StructField(catalog.SKU, STRING, True)]))


def test_embedding_status_by_sku_prefers_ok_then_the_smallest_status(spark: SparkSession) -> None:
    fields = [T.StructField(embeddings.SKU, STRING, True), T.StructField(embeddings.STATUS, STRING, True)]
    rows = [
        ("A1", embeddings.STATUS_ERROR),
        ("A1", embeddings.STATUS_OK),
        (QUOTED, embeddings.STATUS_ERROR),
        ("B2", "zzz"),
        ("B2", embeddings.STATUS_ERROR),
        (None, embeddings.STATUS_OK),
        ("N1", None),
    ]
    expected = [
        ("A1", embeddings.STATUS_OK),
        (QUOTED, embeddings.STATUS_ERROR),
        ("B2", embeddings.STATUS_ERROR),
        (None, embeddings.STATUS_OK),
        ("N1", None),
    ]

    actual = _frame(spark, rows, fields).transform(tg.embedding_status_by_sku)

    expected_fields = [T.StructField(catalog.SKU, STRING, True), fields[1]]
    _assert_same(actual, _frame(spark, expected, expected_fields))


def test_to_vertex_rows_strips_nul_blanks_empty_strings_and_drops_tagged_rows(spark: SparkSession) -> None:
    fields = [*CATALOG_FIELDS, T.StructField(embeddings.STATUS, STRING, True), REASON_FIELD]
    rows = [
        ("A1", 'Boot, "Chelsea"', "Acme", "Shoes", "Boots", "a1.jpg", embeddings.STATUS_OK, None),
        ("N1", "nul\x00name", "", "\x00", None, "👟.jpg", None, None),
        (QUOTED, "multi\nline", "  lead", "Sandals", "Flat", "C:\\x\\", embeddings.STATUS_ERROR, None),
        ("A1", "Other name", "Acme", "Shoes", "Boots", "o.jpg", None, gremlin.VERTEX_DUPLICATE_SKU),
        (None, None, None, None, None, None, None, gremlin.VERTEX_MISSING_SKU),
    ]
    header = gremlin.VERTEX_HEADER_WITH_STATUS
    expected = [
        ("product:A1", "product", "A1", 'Boot, "Chelsea"', "Acme", "Shoes", "Boots", "a1.jpg", "ok"),
        ("product:N1", "product", "N1", "nulname", None, None, None, "👟.jpg", None),
        (f"product:{QUOTED}", "product", QUOTED, "multi\nline", "  lead", "Sandals", "Flat", "C:\\x\\",
         "error"),
    ]

    actual = _frame(spark, rows, fields).transform(tg.to_vertex_rows, label="product", with_status=True)

    _assert_same(actual, _frame(spark, expected, [T.StructField(name, STRING, True) for name in header]))


def test_with_edge_reject_reason_first_applicable_reason_wins(spark: SparkSession) -> None:
    skus = _frame(spark, [("A1",), (QUOTED,), (SPACED,)], [T.StructField(catalog.SKU, STRING, True)])
    rows = [
        ("A1", QUOTED, 0.9, 1),
        (QUOTED, SPACED, 1e-5, 2),
        (None, "A1", 0.3, 1),
        ("A1", None, None, 1),  # missing end and missing score: the end comes first
        ("A1", SPACED, None, 3),
        ("A1", SPACED, NAN, 4),
        ("A1", SPACED, -INF, 5),
        ("A1", "A1", 1.0, 6),
        ("GHOST", "GHOST", 0.5, 1),  # a self-loop before a missing vertex
        ("GHOST", "A1", 0.3, 1),
        ("A1", "GHOST", 0.3, 7),
        ("8sp", "A1", 0.3, 1),  # " 8sp" without its space is another sku
        (None, None, None, None),
    ]
    reasons = [
        None,
        None,
        gremlin.EDGE_MISSING_ENDPOINT,
        gremlin.EDGE_MISSING_ENDPOINT,
        gremlin.EDGE_MISSING_SCORE,
        gremlin.EDGE_NON_FINITE_SCORE,
        gremlin.EDGE_NON_FINITE_SCORE,
        gremlin.EDGE_SELF_LOOP,
        gremlin.EDGE_SELF_LOOP,
        gremlin.EDGE_FROM_MISSING,
        gremlin.EDGE_TO_MISSING,
        gremlin.EDGE_FROM_MISSING,
        gremlin.EDGE_MISSING_ENDPOINT,
    ]
    expected = [(*row, reason) for row, reason in zip(rows, reasons, strict=True)]

    actual = _frame(spark, rows, EDGE_FIELDS).transform(tg.with_edge_reject_reason, skus)

    _assert_same(actual, _frame(spark, expected, [*EDGE_FIELDS, REASON_FIELD]))


def test_mark_duplicate_edges_keeps_the_best_rank_then_score(spark: SparkSession) -> None:
    rows = [
        ("A1", "B2", 0.9, 1, None),
        ("A1", "B2", 0.9, 1, None),  # an exact copy: dropped on purpose
        ("A1", "B2", 0.95, 2, None),  # better score, worse rank: rank decides
        ("B2", "A1", 0.5, 1, None),  # the reverse direction is another edge
        (QUOTED, "A1", 0.4, None, None),
        (QUOTED, "A1", 0.7, None, None),  # no rank: the higher score wins
        ("A1", "C3", 0.3, 1, gremlin.EDGE_TO_MISSING),  # tagged rows are neither kept nor compared
        ("A1", "C3", 0.3, 1, gremlin.EDGE_TO_MISSING),
        (None, "A1", 0.3, 1, gremlin.EDGE_MISSING_ENDPOINT),
    ]
    reasons = [
        None,
        gremlin.EDGE_DUPLICATE_IDENTICAL,
        gremlin.EDGE_DUPLICATE,
        None,
        gremlin.EDGE_DUPLICATE,
        None,
        gremlin.EDGE_TO_MISSING,
        gremlin.EDGE_TO_MISSING,
        gremlin.EDGE_MISSING_ENDPOINT,
    ]
    expected = [(*row[:-1], reason) for row, reason in zip(rows, reasons, strict=True)]
    keyed = _frame(spark, rows, [*EDGE_FIELDS, REASON_FIELD]).transform(tg.with_edge_key)
    good = keyed.filter(F.col(gremlin.REASON).isNull())

    actual = keyed.transform(tg.mark_duplicate_edges, tg.duplicate_edge_keys(good), higher_is_closer=True)

    _assert_same(actual.drop(gremlin.EDGE_KEY), _frame(spark, expected, [*EDGE_FIELDS, REASON_FIELD]))


def test_mark_duplicate_edges_lower_is_closer_keeps_the_lowest_score(spark: SparkSession) -> None:
    fields = [*EDGE_FIELDS[:3], REASON_FIELD]  # all pairs: no rank
    rows = [("A1", SPACED, 0.3, None), ("A1", SPACED, 0.2, None), ("A1", SPACED, None, None)]
    expected = [
        ("A1", SPACED, 0.3, gremlin.EDGE_DUPLICATE),
        ("A1", SPACED, 0.2, None),
        ("A1", SPACED, None, gremlin.EDGE_DUPLICATE),  # a null score sorts last whatever the direction
    ]
    keyed = _frame(spark, rows, fields).transform(tg.with_edge_key)

    actual = keyed.transform(tg.mark_duplicate_edges, tg.duplicate_edge_keys(keyed), higher_is_closer=False)

    _assert_same(actual.drop(gremlin.EDGE_KEY), _frame(spark, expected, fields))


def test_duplicate_edge_keys_are_the_keys_of_repeated_pairs_with_both_ends(spark: SparkSession) -> None:
    rows = [
        ("A1", "B2", 0.9, 1),
        ("A1", "B2", 0.8, 2),
        ("B2", "A1", 0.9, 1),
        (None, "A1", 0.1, 1),
        (None, "A1", 0.2, 2),
    ]
    keyed = _frame(spark, rows, EDGE_FIELDS).transform(tg.with_edge_key)

    actual = tg.duplicate_edge_keys(keyed)

    expected = keyed.filter((F.col(similarity.SRC) == "A1") & (F.col(similarity.DST) == "B2"))
    _assert_same(actual, expected.select(gremlin.EDGE_KEY).distinct())


def test_to_edge_rows_writes_ids_that_decode_and_drops_tagged_rows(spark: SparkSession) -> None:
    rows = [
        (QUOTED, SPACED, 0.5, 1, None),
        ("👟", "A1", 1e-5, None, None),
        ("A1", "A1", 1.0, 2, gremlin.EDGE_SELF_LOOP),
        (None, None, None, None, gremlin.EDGE_MISSING_ENDPOINT),
    ]
    header = gremlin.EDGE_HEADER_TOPK
    # len("product:" + sku) counts characters: 'product:Q"1,x' is 13, "product:👟" is 9.
    expected = [
        (f'similar:13:product:{QUOTED}->product:{SPACED}', f"product:{QUOTED}", f"product:{SPACED}",
         "similar", 0.5, 1, "cosine", True),
        ("similar:9:product:👟->product:A1", "product:👟", "product:A1", "similar", 1e-5, None, "cosine",
         True),
    ]
    types = [STRING, STRING, STRING, STRING, T.DoubleType(), T.IntegerType(), STRING, T.BooleanType()]

    actual = _frame(spark, rows, [*EDGE_FIELDS, REASON_FIELD]).transform(
        tg.to_edge_rows, label="similar", metric="cosine", higher_is_closer=True
    )

    expected_fields = [T.StructField(name, kind, True) for name, kind in zip(header, types, strict=True)]
    _assert_same(actual, _frame(spark, expected, expected_fields))


def test_select_edge_contract_casts_the_columns_the_export_reads(spark: SparkSession) -> None:
    fields = [
        T.StructField(similarity.SRC, STRING, True),
        T.StructField(similarity.DST, STRING, True),
        T.StructField(similarity.SCORE, T.FloatType(), True),
        T.StructField(similarity.RANK, T.LongType(), True),
        T.StructField("extra", STRING, True),
    ]
    rows = [(QUOTED, SPACED, 0.5, 3, "x"), (None, None, None, None, None)]

    actual = _frame(spark, rows, fields).transform(tg.select_edge_contract, has_rank=True)

    _assert_same(actual, _frame(spark, [(QUOTED, SPACED, 0.5, 3), (None, None, None, None)], EDGE_FIELDS))
