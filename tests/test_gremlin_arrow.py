"""udfs.gremlin_arrow, the export's Arrow CSV helpers: small Arrow batches with a null row and hostile
strings in, whole arrays and CSV text out, written by hand from RFC 4180 and the documented ids."""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from schemas import gremlin, similarity
from udfs import gremlin_arrow

QUOTED = 'Q"1,x'  # a quote and a comma
SPACED = " 8sp"  # a leading space: data, written bare
SKUS = pa.array(["A1", QUOTED, SPACED, "👟"])
EDGE_SCHEMA = pa.schema(
    [
        (similarity.SRC, pa.string()),
        (similarity.DST, pa.string()),
        (similarity.SCORE, pa.float64()),
        (similarity.RANK, pa.int32()),
    ]
)
CODE = {reason: code for code, reason in enumerate(gremlin_arrow.REASON_CODES, start=1)}


def test_csv_field_quotes_only_what_needs_quotes_and_keeps_nulls() -> None:
    values = pa.array(["plain", "a,b", 'say "hi"', "two\nlines", "cr\r", SPACED, "", None, "👟"])

    assert gremlin_arrow.csv_field(values).to_pylist() == [
        "plain", '"a,b"', '"say ""hi"""', '"two\nlines"', '"cr\r"', SPACED, "", None, "👟",
    ]


def test_property_field_strips_nul_and_writes_null_and_empty_as_blank() -> None:
    values = pa.array(["nul\x00name", "\x00", "", None, 'Boot, "Chelsea"'])

    assert gremlin_arrow.property_field(values).to_pylist() == ["nulname", "", "", "", '"Boot, ""Chelsea"""']


def _edge_batch() -> pa.RecordBatch:
    rows = [
        ("A1", QUOTED, 0.5, 1),
        (None, "A1", 0.3, 1),
        ("A1", SPACED, None, 2),
        ("A1", SPACED, math.nan, 3),
        ("A1", "A1", 1.0, 4),
        ("GHOST", "A1", 0.3, 1),
        ("A1", "GHOST", 0.3, 5),
        ("👟", SPACED, 1e-5, None),
        (SPACED, "A1", math.inf, 1),
        ("A1", None, None, None),
    ]
    return pa.RecordBatch.from_pylist(
        [dict(zip(EDGE_SCHEMA.names, row, strict=True)) for row in rows], EDGE_SCHEMA
    )


def test_check_batch_gives_the_first_applicable_reason_and_the_good_rows_vertex_indexes() -> None:
    checked = gremlin_arrow.check_batch(_edge_batch(), SKUS)

    assert checked.reasons.tolist() == [
        gremlin_arrow.GOOD,
        CODE[gremlin.EDGE_MISSING_ENDPOINT],
        CODE[gremlin.EDGE_MISSING_SCORE],
        CODE[gremlin.EDGE_NON_FINITE_SCORE],
        CODE[gremlin.EDGE_SELF_LOOP],
        CODE[gremlin.EDGE_FROM_MISSING],
        CODE[gremlin.EDGE_TO_MISSING],
        gremlin_arrow.GOOD,
        CODE[gremlin.EDGE_NON_FINITE_SCORE],
        CODE[gremlin.EDGE_MISSING_ENDPOINT],
    ]
    assert checked.from_index.tolist() == [0, 3]
    assert checked.to_index.tolist() == [1, 2]


def test_format_edges_writes_the_csv_records_of_the_good_rows() -> None:
    batch = _edge_batch()
    checked = gremlin_arrow.check_batch(batch, SKUS)
    good = batch.filter(pa.array(checked.reasons == gremlin_arrow.GOOD))
    pieces = gremlin_arrow.vertex_pieces(SKUS, label="similar")

    records = gremlin_arrow.format_edges(
        good,
        checked.from_index,
        checked.to_index,
        pieces,
        has_rank=True,
        tail=gremlin_arrow.record_tail("cosine", True),
    )

    # An id with a quote in either end is quoted whole; len() counts characters ("product:👟" is 9); a
    # double is written in its shortest round-trip form.
    assert bytes(records).decode() == (
        '"similar:10:product:A1->product:Q""1,x",product:A1,"product:Q""1,x",similar,0.5,1,cosine,true\n'
        "similar:9:product:👟->product: 8sp,product:👟,product: 8sp,similar,0.00001,,cosine,true\n"
    )


def test_format_edges_of_no_rows_is_empty_and_record_tail_quotes_the_metric() -> None:
    pieces = gremlin_arrow.vertex_pieces(SKUS, label="similar")
    empty = _edge_batch().slice(0, 0)
    none = np.array([], dtype=np.int64)

    assert bytes(gremlin_arrow.format_edges(empty, none, none, pieces, has_rank=False, tail="x")) == b""
    assert gremlin_arrow.record_tail("l2", False) == "l2,false\n"
    assert gremlin_arrow.record_tail('a,"b"', True) == '"a,""b""",true\n'


def test_format_vertices_writes_one_record_per_row_and_record_bytes_reads_slices() -> None:
    rows = pa.table(
        {
            "sku": ["A1", QUOTED, SPACED],
            "name": ['Boot, "Chelsea"', "nul\x00name", "multi\nline"],
            "brand": ["Acme", None, ""],
        }
    )
    expected = [
        'product:A1,product,A1,"Boot, ""Chelsea""",Acme\n',
        '"product:Q""1,x",product,"Q""1,x",nulname,\n',
        'product: 8sp,product, 8sp,"multi\nline",\n',
    ]

    records = gremlin_arrow.format_vertices(
        rows, label="product", property_columns=("sku", "name", "brand"), sku="sku"
    )

    assert records.to_pylist() == expected
    assert bytes(gremlin_arrow.record_bytes(records)) == "".join(expected).encode()
    assert bytes(gremlin_arrow.record_bytes(records.slice(1))) == "".join(expected[1:]).encode()
    assert bytes(gremlin_arrow.record_bytes(records.slice(3))) == b""


def test_edge_keys_are_equal_exactly_for_equal_pairs() -> None:
    from_index = np.array([0, 3, 0, 1], dtype=np.int64)
    to_index = np.array([1, 2, 1, 0], dtype=np.int64)

    assert gremlin_arrow.edge_keys(from_index, to_index, 4).tolist() == [1, 14, 1, 4]
