"""udfs.plain_records: the compiled scan of plain CSV blocks.

It must never accept what the record-by-record checks reject (the validator trusts a block it accepts),
must accept ordinary good blocks (else every block takes the slow path), and must hash ids exactly as
``external_duplicates.string_hashes`` does (ids hashed either way meet in one duplicate pass).
"""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest

from jobs import validate_gremlin_csv as V
from jobs.common import external_duplicates as ed
from schemas import gremlin as G
from udfs import plain_records as P

TYPES = {
    P.BOOL: G.TYPE_BOOL,
    P.FLOAT: G.TYPE_FLOAT,
    P.DOUBLE: G.TYPE_DOUBLE,
    P.BYTE: G.TYPE_BYTE,
    P.SHORT: G.TYPE_SHORT,
    P.INT: G.TYPE_INT,
    P.LONG: G.TYPE_LONG,
}


def scanner(kinds, required=None, ends=None, vertices=None, id_position=0):
    width = len(kinds)
    return P.PlainScanner(
        kinds,
        required if required is not None else [position == 0 for position in range(width)],
        ends if ends is not None else [False] * width,
        id_position,
        vertices,
    )


def vertex_set(ids):
    first, second = ed.string_hashes(pa.array(ids, pa.large_string()))
    return P.HashSet(first, second)


def test_ids_are_hashed_as_string_hashes_hashes_them():
    rng = random.Random(7)
    alphabet = "abcXYZ0189:_->é€"
    ids = ["".join(rng.choice(alphabet) for _ in range(length)) for length in range(1, 80)]
    rng.shuffle(ids)
    for tail in ("", "z", "1234567", "12345678"):  # the block's last bytes are read one at a time
        block_ids = [*ids, tail] if tail else ids
        block = "".join(f"{value},x\n" for value in block_ids).rstrip("\n").encode("utf-8")
        scan = scanner([P.ANY, P.ANY])
        assert scan.scan(block) == len(block_ids)
        first, second = ed.string_hashes(pa.array(block_ids, pa.large_string()))
        assert scan.first.tolist() == first.tolist()
        assert scan.second.tolist() == second.tolist()
        assert scan.ids().to_pylist() == block_ids


def test_id_hashes_of_a_long_block_match_and_reuse_no_stale_buffer():
    scan = scanner([P.ANY, P.DOUBLE])
    big = "".join(f"similar:{i}:product:sku{i:07d}->x,{i / 7}\n" for i in range(5000)).encode()
    assert scan.scan(big) == 5000
    small = b"a,1\nbb,2\n"
    assert scan.scan(small) == 2
    first, second = ed.string_hashes(pa.array(["a", "bb"], pa.large_string()))
    assert (scan.first.tolist(), scan.second.tolist()) == (first.tolist(), second.tolist())


def _values(rng: random.Random) -> list[str]:
    """Good, bad and borderline values for every type."""
    fixed = [
        "0", "-0", "+0", "00", "1", "-1", "+1", "127", "128", "-128", "-129", "32767", "32768", "-32769",
        "2147483647", "2147483648", "-2147483649", "9223372036854775807", "9223372036854775808",
        "-9223372036854775808", "-9223372036854775809", "000000000000000000000012", "1" * 30,
        "1.5", "-2E3", "1e38", "3.4e38", "3.5e38", "1e39", "1e308", "1.7e308", "1.8e308", "1e309", "1e-400",
        ".5", "5.", ".", "-.", "+", "-", "e5", "1e", "1e+", "1e-5", "1.0E-5", "1.5.5", "1e5e5", "--1",
        "0x10", "1_000", " 1", "1 ", "nan", "NaN", "inf", "-Infinity", "1e0000001", "1e999999",
        "0.000000000000000000000000000000000000000000001e40", "100000000000000000000000000000000000000",
        "true", "false", "TRUE", "False", "tRuE", "yes", "t", "truee", "fals", "1.0", "",
    ]
    alphabet = "0123456789+-.eEtrufalsTRUFALSn"
    fuzz = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(3000)]
    return fixed + fuzz


@pytest.mark.parametrize("kind", list(TYPES))
def test_a_value_the_scan_accepts_parses_as_its_type(kind):
    rng = random.Random(kind)
    type_name = TYPES[kind]
    scan = scanner([P.ANY, kind])
    accepted = 0
    for value in _values(rng):
        if scan.scan(f"id,{value}\n".encode()) == 1:
            accepted += 1
            if value:  # blank: allowed in any column not required
                assert V.type_error(value, type_name, allow_non_finite=False) is None, value
    assert accepted >= 5  # it does accept values (the fixed good ones at least)


@pytest.mark.parametrize("kind", list(TYPES))
def test_ordinary_good_values_are_accepted(kind):
    rng = np.random.default_rng(kind)
    if kind == P.BOOL:
        values = ["true", "false", "TRUE", "False", ""]
    elif kind in (P.FLOAT, P.DOUBLE):
        values = [repr(float(v)) for v in rng.normal(0, 1e6, 200)] + [repr(float(v)) for v in rng.random(50)]
        values += ["0", "-0.0", "1e37", "-2.5E-300", ""]
    else:
        low, high = P.INTEGER_RANGES[kind]
        values = [str(int(v)) for v in rng.integers(low, high, 200, endpoint=True)] + [str(low), str(high)]
        if kind == P.LONG:  # 19 digits: not sure, left to the record by record check
            values = [value for value in values if len(value.lstrip("-")) <= 18]
    scan = scanner([P.ANY, kind])
    block = "".join(f"id{i},{value}\n" for i, value in enumerate(values)).encode()
    assert scan.scan(block) == len(values)


@pytest.mark.parametrize(
    "block",
    [
        b"a,1\nb\n",  # a record with too few fields
        b"a,1\nb,2,3\n",  # too many
        b"a,1\n\nb,2\n",  # an empty line
        b"a,1\n,2\n",  # a blank required field
        b"a,1\nb,x\n",  # not a number
        b"a,1\nb,1e400\n",  # over the type's range
        b"a,1\nb,1.7e308\n",  # a good Double, too near the limit for the scan to be sure
        b"a,1\n" + b"b" * (8 * P.MAX_HASHED_WORDS + 1) + b",2\n",  # an id too long to hash here
    ],
)
def test_blocks_the_scan_is_not_sure_of(block):
    assert scanner([P.ANY, P.DOUBLE]).scan(block) == P.NOT_SURE


def test_blank_and_unparsed_kinds():
    scan = scanner([P.ANY, P.BLANK, P.INT])
    assert scan.scan(b"a,,\nb,,7\n") == 2  # blank values, an optional typed one included
    assert scan.scan(b"a,2024-01-01,\n") == P.NOT_SURE  # a date: checked record by record
    assert scan.scan(b"a,,\nb,,7") == 2  # the last record may lack its newline


def test_ends_must_be_vertices_even_after_a_repeated_one():
    vertices = vertex_set(["v1", "v2", "v3"])
    scan = scanner(
        [P.ANY, P.ANY, P.ANY], required=[True, True, True], ends=[False, True, True], vertices=vertices
    )
    assert scan.scan(b"e1,v1,v2\ne2,v1,v3\ne3,v3,v1\n") == 3
    assert scan.scan(b"e1,v1,v2\ne2,v1,ghost\n") == P.NOT_SURE  # ~from repeats, ~to is not a vertex
    assert scan.scan(b"e1,v1,v2\ne2,v4,v2\n") == P.NOT_SURE
    assert scan.scan(b"e1,v1,v2\ne2,v1,v2x\n") == P.NOT_SURE
    empty = scanner([P.ANY, P.ANY, P.ANY], ends=[False, True, True], vertices=vertex_set([]))
    assert empty.scan(b"e1,v1,v2\n") == P.NOT_SURE
    unchecked = scanner([P.ANY, P.ANY, P.ANY], ends=[False, True, True], vertices=None)
    assert unchecked.scan(b"e1,v1,v2\n") == 1
