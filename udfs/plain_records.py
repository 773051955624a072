"""One compiled pass over a block of plain CSV records: split, check and hash, or say "not sure".

A *plain* block holds whole records, one a line, with no quote, CR or NUL byte, as UTF-8 (the caller
checks both: a memchr per byte, a decode when not ASCII). :meth:`PlainScanner.scan` walks its bytes once
and, for every record, checks the field count, the required (non-blank) fields, each typed field's value,
and that each end field is in a set of 128-bit hashes (:class:`HashSet`); it also hashes one id field per
record exactly as
:func:`jobs.common.external_duplicates.string_hashes` does, so ids hashed here and ids hashed from an Arrow
array meet in the same duplicate pass.

It only ever accepts: a block it returns a record count for breaks none of those rules. When it is not sure
(a value it does not parse itself, a number near its type's limit, anything unusual) it returns
:data:`NOT_SURE` and the caller checks the block record by record, which words every problem.

Compiled with numba (``cache=True``: once per installation, then loaded from numba's cache).
"""

from __future__ import annotations

import numba
import numpy as np
import pyarrow as pa
from numba.cpython.unsafe.numbers import trailing_zeros

from jobs.common import external_duplicates as ed
from schemas import gremlin

NOT_SURE = -1

# What a field's value must be (besides blank, which any field but a required one may be).
ANY = 0  # a string: anything plain
BOOL = 1  # true/false in any case
FLOAT = 2  # a decimal number below 1e38 in magnitude (Float's limit is 3.4e38)
DOUBLE = 3  # a decimal number below 1e308 (Double's limit is 1.8e308)
BYTE, SHORT, INT, LONG = 4, 5, 6, 7  # an integer in the type's range
BLANK = 8  # only blank (types this pass does not parse: dates, arrays)

INTEGER_RANGES = {  # by kind, from the types' ranges
    kind: gremlin.INTEGER_RANGES[type_name]
    for kind, type_name in (
        (BYTE, gremlin.TYPE_BYTE),
        (SHORT, gremlin.TYPE_SHORT),
        (INT, gremlin.TYPE_INT),
        (LONG, gremlin.TYPE_LONG),
    )
}
MAX_HASHED_WORDS = 512  # fields hashed here are at most 4 KiB (longer: not sure)

_COMMA, _NEWLINE = 44, 10
_ZERO, _NINE, _DOT, _PLUS, _MINUS = 48, 57, 46, 43, 45


def hash_tables() -> tuple[np.ndarray, np.ndarray, np.uint64, np.uint64]:
    """The word multipliers and seeds of :func:`jobs.common.external_duplicates.string_hashes`."""
    return (
        ed.position_multipliers(0, MAX_HASHED_WORDS),
        ed.position_multipliers(1, MAX_HASHED_WORDS),
        np.uint64(ed.SEEDS[0]),
        np.uint64(ed.SEEDS[1]),
    )


_mix = ed.mix_one


_ONES = np.uint64(0x0101010101010101)
_HIGHS = np.uint64(0x8080808080808080)
_COMMAS = np.uint64(0x2C2C2C2C2C2C2C2C)
_NEWLINES = np.uint64(0x0A0A0A0A0A0A0A0A)


@numba.njit(cache=True, nogil=True, inline="always")
def _zero_bytes(x):  # non-zero when x has a zero byte; its lowest set bit is in the first one
    return (x - _ONES) & ~x & _HIGHS


@numba.njit(cache=True, nogil=True, inline="always")
def _field(buf, words, start, hashing, mult1, mult2):
    """(end, word sums, ok) of the field at ``start``: it ends before the next comma or newline (or the
    block's end). ``words[at]`` is the 8 bytes from ``at`` (little-endian): the field is read a word at a
    time and, when ``hashing``, its words summed with the hash multipliers on the way (ok is False when
    it has more words than multipliers)."""
    size = buf.size
    sum1 = np.uint64(0)
    sum2 = np.uint64(0)
    index = 0
    at = start
    while at + 8 <= size:
        word = words[at]
        hit = _zero_bytes(word ^ _COMMAS) | _zero_bytes(word ^ _NEWLINES)
        if hit:
            taken = trailing_zeros(hit) >> 3
            if hashing and taken:
                if index >= mult1.size:
                    return at, sum1, sum2, False
                word &= (np.uint64(1) << np.uint64(8 * taken)) - np.uint64(1)
                sum1 += word * mult1[index]
                sum2 += word * mult2[index]
            return at + taken, sum1, sum2, True
        if hashing:
            if index >= mult1.size:
                return at, sum1, sum2, False
            sum1 += word * mult1[index]
            sum2 += word * mult2[index]
            index += 1
        at += 8
    word = np.uint64(0)  # the block's last (fewer than 8) bytes, one at a time
    shift = np.uint64(0)
    while at < size:
        byte = buf[at]
        if byte in (_COMMA, _NEWLINE):
            break
        word |= np.uint64(byte) << shift
        shift += np.uint64(8)
        at += 1
    if hashing and shift:
        if index >= mult1.size:
            return at, sum1, sum2, False
        sum1 += word * mult1[index]
        sum2 += word * mult2[index]
    return at, sum1, sum2, True


@numba.njit(cache=True, nogil=True, inline="always")
def _is_decimal_within(buf, start, end, limit_exponent):
    """``[+-]digits[.digits][e[+-]digits]`` (a digit on one side of the point) below 10**limit_exponent in
    magnitude; False also when not sure (an exponent of more than 6 digits)."""
    at = start
    if buf[at] == _PLUS or buf[at] == _MINUS:
        at += 1
    integer_digits = 0
    digits = 0
    first_significant = -1
    while at < end and _ZERO <= buf[at] <= _NINE:
        if first_significant < 0 and buf[at] != _ZERO:
            first_significant = digits
        digits += 1
        integer_digits += 1
        at += 1
    if at < end and buf[at] == _DOT:
        at += 1
        while at < end and _ZERO <= buf[at] <= _NINE:
            if first_significant < 0 and buf[at] != _ZERO:
                first_significant = digits
            digits += 1
            at += 1
    if digits == 0:
        return False
    exponent = 0
    if at < end and (buf[at] == 101 or buf[at] == 69):  # e E
        at += 1
        negative = False
        if at < end and (buf[at] == _PLUS or buf[at] == _MINUS):
            negative = buf[at] == _MINUS
            at += 1
        exponent_digits = 0
        while at < end and _ZERO <= buf[at] <= _NINE:
            exponent = exponent * 10 + (buf[at] - _ZERO)
            exponent_digits += 1
            at += 1
        if exponent_digits == 0 or exponent_digits > 6:
            return False
        if negative:
            exponent = -exponent
    if at != end:
        return False
    if first_significant < 0:  # zero
        return True
    return integer_digits - first_significant + exponent <= limit_exponent  # |value| < 10**that


@numba.njit(cache=True, nogil=True, inline="always")
def _is_integer_within(buf, start, end, low, high):
    """``[+-]digits`` within [low, high]; False also when not sure (more than 18 significant digits)."""
    at = start
    negative = False
    if buf[at] == _PLUS or buf[at] == _MINUS:
        negative = buf[at] == _MINUS
        at += 1
    if at == end:
        return False
    value = 0
    significant = 0
    while at < end:
        byte = buf[at]
        if byte < _ZERO or byte > _NINE:
            return False
        if significant or byte != _ZERO:
            significant += 1
            if significant > 18:
                return False
            value = value * 10 + (byte - _ZERO)
        at += 1
    if negative:
        value = -value
    return low <= value <= high


@numba.njit(cache=True, nogil=True, inline="always")
def _is_bool(buf, start, end):
    """true or false, in any case."""
    length = end - start
    if length == 4:
        return (
            buf[start] | 32 == 116 and buf[start + 1] | 32 == 114
            and buf[start + 2] | 32 == 117 and buf[start + 3] | 32 == 101
        )
    if length == 5:
        return (
            buf[start] | 32 == 102 and buf[start + 1] | 32 == 97 and buf[start + 2] | 32 == 108
            and buf[start + 3] | 32 == 115 and buf[start + 4] | 32 == 101
        )
    return False


@numba.njit(cache=True, nogil=True, inline="always")
def _value_ok(buf, start, end, kind, lows, highs):
    if kind == BOOL:
        return _is_bool(buf, start, end)
    if kind == FLOAT:
        return _is_decimal_within(buf, start, end, 38)
    if kind == DOUBLE:
        return _is_decimal_within(buf, start, end, 308)
    if BYTE <= kind <= LONG:
        return _is_integer_within(buf, start, end, lows[kind], highs[kind])
    return False  # BLANK: a value here is checked record by record


@numba.njit(cache=True, nogil=True)
def _build_table(first):
    """An open-addressing table over the first hashes: slot -> 1 + index in ``first`` (0: empty), at
    least twice as many slots as hashes."""
    slots = 1
    while slots < 2 * first.size:
        slots *= 2
    table = np.zeros(slots, np.int32)
    mask = np.uint64(slots - 1)
    for index in range(first.size):
        slot = first[index] & mask
        while table[slot]:
            slot = (slot + np.uint64(1)) & mask
        table[slot] = index + 1
    return table


@numba.njit(cache=True, nogil=True, inline="always")
def _is_member(first, second, table, set_first, set_second):
    mask = np.uint64(table.size - 1)
    slot = first & mask
    while table[slot]:
        index = table[slot] - 1
        if set_first[index] == first and set_second[index] == second:
            return True
        slot = (slot + np.uint64(1)) & mask
    return False


@numba.njit(cache=True, nogil=True)
def _scan(
    buf, words, kinds, required, ends, id_position, check_ends, table, set_first, set_second,
    mult1, mult2, seed1, seed2, lows, highs, out_first, out_second, out_start, out_end,
):
    width = kinds.size
    size = buf.size
    # the last end value found among the vertices, per field (an export sorted by ~from repeats it)
    last_first = np.zeros(width, np.uint64)
    last_second = np.zeros(width, np.uint64)
    records = 0
    at = 0
    while at < size:
        field = 0
        start = at
        while True:
            hashing = field == id_position or (check_ends and ends[field])
            if hashing:
                stop, sum1, sum2, ok = _field(buf, words, start, True, mult1, mult2)
            else:  # the same without the sums (a constant flag: a loop of its own)
                stop, sum1, sum2, ok = _field(buf, words, start, False, mult1, mult2)
            if not ok or field >= width:
                return NOT_SURE
            if stop == start:
                if required[field]:
                    return NOT_SURE
            else:
                kind = kinds[field]
                if kind != ANY and not _value_ok(buf, start, stop, kind, lows, highs):
                    return NOT_SURE
                length = np.uint64(stop - start)
                if field == id_position:
                    if records >= out_first.size:
                        return NOT_SURE
                    out_first[records] = _mix(sum1 + length * seed1)
                    out_second[records] = _mix(sum2 + length * seed2)
                    out_start[records] = start
                    out_end[records] = stop
                if check_ends and ends[field]:
                    first = _mix(sum1 + length * seed1)
                    second = _mix(sum2 + length * seed2)
                    if first != last_first[field] or second != last_second[field]:
                        if not _is_member(first, second, table, set_first, set_second):
                            return NOT_SURE
                        last_first[field] = first
                        last_second[field] = second
            field += 1
            if stop >= size or buf[stop] == _NEWLINE:
                at = stop + 1
                break
            start = stop + 1
        if field != width:
            return NOT_SURE
        records += 1
    return records


class HashSet:
    """A set of strings as their two hashes (``string_hashes``), with an open-addressing table over the
    first one (4 bytes a slot, 2 to 4 slots a string)."""

    def __init__(self, first: np.ndarray, second: np.ndarray) -> None:
        self.first = np.ascontiguousarray(first, np.uint64)
        self.second = np.ascontiguousarray(second, np.uint64)
        self.table = _build_table(self.first)


class PlainScanner:
    """Scans plain blocks of one file: its header's field kinds, the required fields, the id field, the
    end fields and the vertex set they must be in (None: ends are not checked)."""

    def __init__(
        self,
        kinds: list[int],
        required: list[bool],
        ends: list[bool],
        id_position: int,
        vertices: HashSet | None,
    ) -> None:
        self.kinds = np.asarray(kinds, np.int8)
        self.required = np.asarray(required, np.bool_)
        self.ends = np.asarray(ends, np.bool_)
        self.id_position = id_position
        self.check_ends = vertices is not None and bool(self.ends.any())
        self.vertices = vertices if vertices is not None else HashSet(np.zeros(0), np.zeros(0))
        self.mult1, self.mult2, self.seed1, self.seed2 = hash_tables()
        self.lows = np.zeros(BLANK + 1, np.int64)
        self.highs = np.zeros(BLANK + 1, np.int64)
        for kind, (low, high) in INTEGER_RANGES.items():
            self.lows[kind], self.highs[kind] = low, high
        self._capacity = 0

    def _outputs(self, lines: int) -> None:
        if lines > self._capacity:
            self._capacity = max(lines, 2 * self._capacity)
            self._first = np.empty(self._capacity, np.uint64)
            self._second = np.empty(self._capacity, np.uint64)
            self._start = np.empty(self._capacity, np.int64)
            self._end = np.empty(self._capacity, np.int64)

    def scan(self, block: bytes) -> int:
        """The block's record count when every record keeps the rules, else NOT_SURE. The records' id
        hashes are then in :attr:`first`/:attr:`second` and their byte ranges in :meth:`ids`."""
        # a record holds a comma between each two fields and a non-blank id: at least width + 1 bytes with
        # its newline (the block's last record may lack the newline)
        self._outputs(len(block) // (self.kinds.size + 1) + 1)
        self.block = block
        buf = np.frombuffer(block, np.uint8)
        # words[at]: the 8 bytes from ``at`` as one little-endian integer (unaligned reads of the block;
        # a short block is padded so that the view always has the same type: read-only and unaligned)
        source = block if len(block) >= 16 else block + bytes(16)
        words: np.ndarray = np.ndarray((len(source) - 7,), np.uint64, source, 0, (1,))
        vertices = self.vertices
        self.records = _scan(
            buf, words, self.kinds, self.required, self.ends, self.id_position, self.check_ends,
            vertices.table, vertices.first, vertices.second, self.mult1, self.mult2, self.seed1, self.seed2,
            self.lows, self.highs, self._first, self._second, self._start, self._end,
        )
        return self.records

    @property
    def first(self) -> np.ndarray:
        return self._first[: self.records]

    @property
    def second(self) -> np.ndarray:
        return self._second[: self.records]

    def ids(self) -> pa.Array:
        """The scanned records' ids (large strings; the caller checked that the block is UTF-8)."""
        starts, ends = self._start[: self.records], self._end[: self.records]
        lengths = ends - starts
        offsets = np.zeros(self.records + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        # byte i of the ids is block byte i - offsets[id] + starts[id]
        gather = np.repeat(starts - offsets[:-1], lengths) + np.arange(int(offsets[-1]))
        data = np.frombuffer(self.block, np.uint8)[gather]
        return pa.LargeStringArray.from_buffers(self.records, pa.py_buffer(offsets), pa.py_buffer(data))


def no_strings() -> pa.Array:
    """An empty large-string array (built from buffers: ``pa.array`` would import pandas)."""
    return pa.LargeStringArray.from_buffers(0, pa.py_buffer(np.zeros(1, np.int64)), pa.py_buffer(b""))


def compile_scan() -> None:
    """Compile the scan (or load it from numba's cache) in this process: a parent calls it once before
    starting workers, so that they load it from the cache instead of each compiling it."""
    scanner = PlainScanner([ANY, DOUBLE], [True, False], [False, False], 0, None)
    if scanner.scan(b"a,1.5\n") != 1:
        raise AssertionError("the plain-record scan is broken")
