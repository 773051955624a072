"""jobs.transforms.gremlin_diff: rows to load, ids to remove and properties to clear between exports."""

from __future__ import annotations

from chispa import assert_df_equality

from jobs.transforms import gremlin_diff as gd

V_HEADER = ["~id", "~label", "name:String(single)", "brand:String(single)"]
V_SCHEMA = ", ".join(f"`{column}` string" for column in V_HEADER)
STATUS = "embeddingStatus:String(single)"
HOSTILE = 'product:Q"1,x\nline'


def vertices(spark, rows, header=V_HEADER):
    return spark.createDataFrame(rows, ", ".join(f"`{column}` string" for column in header))


def test_property_name_unescapes_the_header():
    assert gd.property_name("name:String(single)") == "name"
    assert gd.property_name("a\\:b:Int") == "a:b"
    assert gd.property_name("score:Double") == "score"


def compare(current_df, bases, columns):
    hashed_df = current_df.transform(gd.with_property_hash, columns)
    return [
        hashed_df.transform(gd.compare_with_base, base_df.transform(gd.with_property_hash, columns), columns)
        for base_df in bases
    ]


def test_rows_to_load_are_the_new_and_the_changed_rows_whole(spark):
    base_df = vertices(
        spark,
        [
            ("product:A", "product", "Boot", "Acme"),
            (HOSTILE, "product", "same", None),
            ("product:C", "product", "old name", "Acme"),
            ("product:GONE", "product", "x", "y"),
        ],
    )
    current_df = vertices(
        spark,
        [
            ("product:A", "product", "Boot", "Acme"),  # unchanged
            (HOSTILE, "product", "same", None),  # unchanged, hostile id, a null
            ("product:C", "product", "new name", "Acme"),  # changed
            ("product:NEW", "product", "n", None),  # added
        ],
    )
    comparisons = compare(current_df, [base_df], V_HEADER)

    rows_df = gd.filter_rows_to_load(comparisons, V_HEADER)
    expected_df = vertices(
        spark, [("product:C", "product", "new name", "Acme"), ("product:NEW", "product", "n", None)]
    )
    assert_df_equality(rows_df, expected_df, ignore_row_order=True, ignore_nullable=True)

    kinds_df = comparisons[0].select("~id", gd.KIND)
    expected_kinds_df = spark.createDataFrame(
        [
            ("product:A", "unchanged"),
            (HOSTILE, "unchanged"),
            ("product:C", "changed"),
            ("product:NEW", "added"),
            ("product:GONE", "removed"),
        ],
        f"`~id` string, {gd.KIND} string",
    )
    assert_df_equality(kinds_df, expected_kinds_df, ignore_row_order=True, ignore_nullable=True)

    removed_df = gd.ids_to_remove(comparisons)
    assert_df_equality(
        removed_df, spark.createDataFrame([("product:GONE",)], "`~id` string"), ignore_nullable=True
    )
    assert gd.properties_to_clear(comparisons).collect() == []


def test_a_value_moving_to_another_column_is_a_change(spark):
    base_df = vertices(spark, [("product:A", "product", "x", None), ("product:B", "product", "", None)])
    current_df = vertices(spark, [("product:A", "product", None, "x"), ("product:B", "product", None, "")])
    rows_df = gd.filter_rows_to_load(compare(current_df, [base_df], V_HEADER), V_HEADER)
    assert_df_equality(rows_df, current_df, ignore_row_order=True, ignore_nullable=True)


def test_a_blank_or_dropped_property_is_cleared_and_a_new_column_is_a_change(spark):
    with_status = [*V_HEADER, STATUS]
    base_df = vertices(
        spark,
        [
            ("product:A", "product", "Boot", "Acme", "ok"),
            ("product:B", "product", "Shoe", "Acme", None),
            ("product:GONE", "product", "x", "y", "ok"),
        ],
        header=with_status,
    )
    current_df = vertices(  # tonight without the status column, and B lost its brand
        spark, [("product:A", "product", "Boot", "Acme"), ("product:B", "product", "Shoe", None)]
    )
    columns = [*V_HEADER, STATUS]
    comparisons = compare(current_df, [base_df], columns)
    clears_df = gd.properties_to_clear(comparisons)
    expected_df = spark.createDataFrame(
        [("product:A", "embeddingStatus"), ("product:B", "brand")], "`~id` string, property string"
    )
    assert_df_equality(clears_df, expected_df, ignore_row_order=True, ignore_nullable=True)

    rows_df = gd.filter_rows_to_load(comparisons, V_HEADER)
    assert_df_equality(rows_df, current_df, ignore_row_order=True, ignore_nullable=True)


def test_two_bases_remove_and_reload_what_an_unfinished_load_may_have_left(spark):
    loaded_df = vertices(spark, [("product:A", "product", "a", "b"), ("product:B", "product", "b", "b")])
    # A load that stopped half-way: it may have removed B, added C and changed A.
    attempted_df = vertices(spark, [("product:A", "product", "A!", "b"), ("product:C", "product", "c", "c")])
    current_df = vertices(spark, [("product:A", "product", "a", "b"), ("product:B", "product", "b", "b")])
    comparisons = compare(current_df, [loaded_df, attempted_df], V_HEADER)

    rows_df = gd.filter_rows_to_load(comparisons, V_HEADER)
    assert_df_equality(rows_df, current_df, ignore_row_order=True, ignore_nullable=True)
    removed_df = gd.ids_to_remove(comparisons)
    assert_df_equality(
        removed_df, spark.createDataFrame([("product:C",)], "`~id` string"), ignore_nullable=True
    )
