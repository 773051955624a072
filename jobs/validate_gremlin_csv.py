"""A strict validator of a Gremlin CSV export against Amazon Neptune's documented bulk-load rules.

    python -m jobs.validate_gremlin_csv --vertices <export>/vertices --edges <export>/edges \
        [--allow-non-finite] [--max-problems 1000] [--report-dir R --run-date D]

Works on any export (not only this suite's) and as a library (:func:`validate_export`). Files are checked
by a process pool over every core (``--workers``, forked from a server that has loaded numpy, pyarrow and
numba once); each streams its file through gzip/bzip2/plain in blocks of whole records: a plain block (no
quote, CR or NUL; UTF-8) is checked in one compiled pass (:mod:`udfs.plain_records`: fields, types,
blanks, ends, id hashes), any other block, or one that pass is not sure of, record by record (records
assembled across quoted newlines, an exact RFC 4180 grammar), which words every problem with its line.
Memory does not grow with the edges: every ``~id``'s hash is spilled to disk (8 bytes, ``--spill-dir``)
and the duplicates are found a partition at a time (:mod:`jobs.common.external_duplicates`), then
confirmed by rereading the suspects' ids. What stays in memory: the vertex ``~id``s (their hashes and a
hash table in each worker, about 40 bytes an id, and the exact set once a record is checked on its own,
about 100 bytes an id: 50,000 to 5 M vertices), one block, and the spill buffer.

Rules checked (the ``rule`` of each :class:`Problem`):
    no_files, non_data_file  the prefix holds data files, and nothing else the loader would read
                             (``_SUCCESS``, ``.crc``, hidden or ``_`` files)
    compression              ``.gz``/``.bz2`` match their content; no tar/zip; the archive is intact
    encoding                 UTF-8 only, no byte order mark
    nul                      no NUL character
    header_missing           every file starts with a header line
    header_system            system columns: required ones present (vertex ``~id``; edge ``~id``, ``~from``,
                             ``~to``), none unknown for the file's kind, none twice
    header_syntax            ``name:Type``, ``name:Type[]``, ``name:Type(single|set)``; known type; no
                             space, comma or newline; no property twice; no ``(single)`` array
    edge_cardinality         edge properties are single: no array type, no ``(set)``
    quoting                  RFC 4180: a field with a quote, comma or newline is quoted and its quotes
                             doubled (``\\"`` is not an escape); nothing after a closing quote; no bare CR
    field_count              every record has as many fields as the header
    blank_required           ``~id``, ``~from``, ``~to`` never blank
    type                     every non-blank value parses as its column's type (arrays element by element)
    non_finite               no NaN/Infinity in Float/Double columns (allowed with ``--allow-non-finite``:
                             Neptune accepts them, a similarity score never should be one)
    value_too_large          no value over 55 MB
    duplicate_id             no vertex ``~id`` twice, no edge ``~id`` twice (the loader would merge them)
    missing_vertex           every edge ``~from``/``~to`` is a vertex ``~id`` of the vertex prefix
"""

from __future__ import annotations

import argparse
import bz2
import concurrent.futures
import datetime as dt
import gzip
import io
import itertools
import logging
import math
import multiprocessing
import multiprocessing.forkserver
import os
import posixpath
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
import pyarrow as pa

from jobs.common import external_duplicates as ed
from jobs.common import storage
from jobs.common.cli import JobError, job_parser, positive_int, run
from jobs.common.report import Funnel, write_report
from schemas import gremlin
from udfs import plain_records

LOG = logging.getLogger("stylegraph.validate")

STAGE = "validate"
VERTEX = "vertex"
EDGE = "edge"
DEFAULT_MAX_PROBLEMS = 1000

GZIP_MAGIC = b"\x1f\x8b"
BZIP2_MAGIC = b"BZh"
UNSUPPORTED_ARCHIVES = (".zip", ".tar", ".tgz", ".tar.gz", ".tar.bz2", ".7z", ".xz", ".zst")
BOM = "\ufeff"
BLOCK_BYTES = 8 * 2**20  # decompressed bytes checked at once (whole records; a longer record grows it)
SUSPECT_LIMIT = 100_000  # repeated id hashes reread for their ids (beyond: counted from the hashes)

# One RFC 4180 field: a quoted field (quotes inside doubled) or an unquoted one (no quote, comma, CR, LF).
_FIELD = re.compile(r'"((?:[^"]|"")*)"|([^,"\r\n]*)')
_INTEGER = re.compile(r"^[+-]?[0-9]+$")
_DECIMAL = re.compile(r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$")
_NON_FINITE = re.compile(r"^(?:nan|[+-]?inf(?:inity)?)$", re.IGNORECASE)
_DATE = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(?:T[0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,6})?)?(?:Z|[+-][0-9]{2}:?[0-9]{2})?)?$"
)
_ARRAY_SPLIT = re.compile(r"(?<!\\);")
_PROPERTY_HEADER = re.compile(
    r"^(?P<name>(?:[^:\\]|\\.)+)"
    r"(?::(?P<type>[A-Za-z]+)(?P<card1>\((?:single|set)\))?(?P<array>\[\])?(?P<card2>\((?:single|set)\))?)?$"
)
FLOAT_MAX = 3.4028234663852886e38
_TYPES_BY_LOWER = {name.lower(): name for name in gremlin.PROPERTY_TYPES} | gremlin.TYPE_ALIASES


@dataclass(frozen=True)
class Problem:
    """One broken rule: where (file URI, 1-based line of the record's start, None for the whole file)."""

    file: str
    line: int | None
    rule: str
    reason: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: [{self.rule}] {self.reason}"


@dataclass
class Column:
    """A parsed header cell."""

    header: str
    name: str
    type_name: str = gremlin.TYPE_STRING
    is_array: bool = False
    cardinality: str | None = None
    is_system: bool = False


@dataclass
class ValidationResult:
    """What a validation found: problems (the first ``max_problems`` kept), counts, files and records."""

    problems: list[Problem] = field(default_factory=list)
    problem_counts: Counter = field(default_factory=Counter)
    files: dict[str, list[str]] = field(default_factory=lambda: {VERTEX: [], EDGE: []})
    records: dict[str, int] = field(default_factory=lambda: {VERTEX: 0, EDGE: 0})
    bad_records: Counter = field(default_factory=Counter)  # first rule broken, per record with a problem
    max_problems: int = DEFAULT_MAX_PROBLEMS

    @property
    def ok(self) -> bool:
        return not self.problem_counts

    @property
    def rules(self) -> set[str]:
        return set(self.problem_counts)

    def add(self, file: str, line: int | None, rule: str, reason: str) -> None:
        self.problem_counts[rule] += 1
        if len(self.problems) < self.max_problems:
            self.problems.append(Problem(file, line, rule, reason))

    def merge(self, other: ValidationResult) -> None:
        """Add another result's problems (as many as still fit), counts and records."""
        self.problems.extend(other.problems[: max(0, self.max_problems - len(self.problems))])
        self.problem_counts.update(other.problem_counts)
        self.bad_records.update(other.bad_records)
        for kind, count in other.records.items():
            self.records[kind] = self.records.get(kind, 0) + count


# ------------------------------------------------------------------------------------------------ files
def is_non_data_name(name: str) -> bool:
    """Files a Spark write leaves behind that the loader would still try to read."""
    return name.startswith((".", "_")) or name.endswith(".crc")


class _RawAdapter(io.RawIOBase):
    """Lets io.BufferedReader (and so line iteration) sit on a pyarrow stream."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._stream.close()
        super().close()


def open_binary(uri: str) -> IO[bytes]:
    """The stored bytes of a file (local or S3), buffered."""
    if not storage.is_remote(uri):
        return open(storage.local_path(uri), "rb")  # noqa: SIM115 - the caller closes it
    fs, path = storage.filesystem(uri)
    return io.BufferedReader(_RawAdapter(fs.open_input_stream(path, compression=None)), buffer_size=1 << 20)


def compression_of(name: str) -> str:
    if name.endswith(".gz"):
        return gremlin.COMPRESSION_GZIP
    if name.endswith(".bz2"):
        return gremlin.COMPRESSION_BZIP2
    return gremlin.COMPRESSION_NONE


# ----------------------------------------------------------------------------------------------- header
def parse_header(cells: list[str], kind: str, report: Callable[[str, str], None]) -> list[Column] | None:
    """Parse and check a header; report each problem; None when the file cannot be checked further."""
    allowed = gremlin.VERTEX_SYSTEM_COLUMNS if kind == VERTEX else gremlin.EDGE_SYSTEM_COLUMNS
    required = gremlin.VERTEX_REQUIRED_COLUMNS if kind == VERTEX else gremlin.EDGE_REQUIRED_COLUMNS
    columns: list[Column] = []
    seen: set[str] = set()
    usable = True
    for index, cell in enumerate(cells):
        if index == 0 and cell.startswith(BOM):
            report("encoding", "a UTF-8 byte order mark precedes the header")
            cell = cell[len(BOM) :]
        if cell.startswith("~"):
            if cell not in allowed:
                report(
                    "header_system", f"unknown system column {cell!r} in a {kind} file (allowed: {allowed})"
                )
                usable = False
            elif cell in seen:
                report("header_system", f"system column {cell!r} appears twice")
                usable = False
            seen.add(cell)
            columns.append(Column(header=cell, name=cell, is_system=True))
            continue
        column = _parse_property(cell, kind, report)
        if column is None:
            usable = False
            columns.append(Column(header=cell, name=cell))
            continue
        if column.name in seen:
            report("header_syntax", f"property {column.name!r} appears twice")
        seen.add(column.name)
        columns.append(column)
    for name in required:
        if name not in seen:
            report("header_system", f"required system column {name!r} is missing")
            usable = False
    return columns if usable else None


def _parse_property(cell: str, kind: str, report: Callable[[str, str], None]) -> Column | None:
    if cell == "":
        report("header_syntax", "an empty column name")
        return None
    bad = [char for char in (" ", ",", "\r", "\n", "\t") if char in cell]
    if bad:
        report("header_syntax", f"column {cell!r} holds {bad}: spaces, commas and newlines are not allowed")
        return None
    match = _PROPERTY_HEADER.match(cell)
    if match is None:
        report("header_syntax", f"column {cell!r} is not name:Type, name:Type[] or name:Type(single|set)")
        return None
    name = re.sub(r"\\(.)", r"\1", match.group("name"))
    type_raw = match.group("type")
    if type_raw is None:  # the loader reads an untyped column as String
        return Column(header=cell, name=name)
    type_name = _TYPES_BY_LOWER.get(type_raw.lower())
    if type_name is None:
        report(
            "header_syntax", f"column {cell!r}: unknown type {type_raw!r} (one of {gremlin.PROPERTY_TYPES})"
        )
        return None
    if match.group("card1") and match.group("card2"):
        report("header_syntax", f"column {cell!r}: cardinality given twice")
        return None
    cardinality = (match.group("card1") or match.group("card2") or "").strip("()") or None
    is_array = match.group("array") is not None
    if kind == EDGE and (is_array or cardinality == gremlin.CARDINALITY_SET):
        report("edge_cardinality", f"column {cell!r}: edge properties hold one value (no array, no set)")
        return None
    if is_array and cardinality == gremlin.CARDINALITY_SINGLE:
        report("header_syntax", f"column {cell!r}: an array type cannot have single cardinality")
        return None
    return Column(header=cell, name=name, type_name=type_name, is_array=is_array, cardinality=cardinality)


# ------------------------------------------------------------------------------------------------ values
def type_error(value: str, type_name: str, *, allow_non_finite: bool) -> tuple[str, str] | None:
    """``(rule, reason)`` when a non-blank value does not parse as ``type_name``, else None."""
    if type_name == gremlin.TYPE_STRING:
        return None
    if type_name == gremlin.TYPE_BOOL:
        return (
            None if value.lower() in ("true", "false") else ("type", f"{value!r} is not a Bool (true/false)")
        )
    if type_name in gremlin.INTEGER_RANGES:
        low, high = gremlin.INTEGER_RANGES[type_name]
        if not _INTEGER.match(value):
            return ("type", f"{value!r} is not an integer ({type_name})")
        integer = int(value)
        return None if low <= integer <= high else ("type", f"{value} is out of range for {type_name}")
    if type_name in (gremlin.TYPE_FLOAT, gremlin.TYPE_DOUBLE):
        if _NON_FINITE.match(value):
            return None if allow_non_finite else ("non_finite", f"{value!r} is not a finite {type_name}")
        if not _DECIMAL.match(value):
            return ("type", f"{value!r} is not a {type_name}")
        number = float(value)
        limit = FLOAT_MAX if type_name == gremlin.TYPE_FLOAT else sys.float_info.max
        return (
            None
            if math.isfinite(number) and abs(number) <= limit
            else ("type", f"{value} overflows {type_name}")
        )
    if type_name in (gremlin.TYPE_DATE, gremlin.TYPE_DATETIME):
        if _DATE.match(value):
            try:
                dt.datetime.fromisoformat(value)
                return None
            except ValueError:
                pass
        return ("type", f"{value!r} is not an ISO-8601 {type_name} (yyyy-MM-dd[THH:mm[:ss][Z]])")
    return ("type", f"unknown type {type_name}")


# ----------------------------------------------------------------------------------------------- records
def iter_records(
    lines: Iterator[bytes], report: Callable[[int, str, str], None]
) -> Iterator[tuple[int, str]]:
    """``(first line number, record text)`` from raw lines: a record goes on while its quotes are open.

    Lines are decoded one by one (strict UTF-8; a bad line is reported, then read with replacements).
    """
    buffer: list[str] = []
    start = 0
    quotes = 0
    for number, raw in enumerate(lines, 1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            report(number, "encoding", f"not UTF-8 ({err.reason} at byte {err.start})")
            text = raw.decode("utf-8", errors="replace")
        if not buffer:
            start = number
        buffer.append(text)
        quotes += text.count('"')
        if quotes % 2 == 0:
            yield start, "".join(buffer)
            buffer, quotes = [], 0
    if buffer:
        yield start, "".join(buffer)


def split_record(record: str) -> tuple[list[str] | None, str | None]:
    """The fields of one RFC 4180 record, or None and the reason it is not RFC 4180."""
    if record.endswith("\r\n"):
        body = record[:-2]
    elif record.endswith("\n"):
        body = record[:-1]
    else:
        body = record
    if '"' not in body:
        if "\r" in body:
            return None, "a carriage return outside quotes"
        return body.split(","), None
    fields: list[str] = []
    position = 0
    end = len(body)
    while True:
        match = _FIELD.match(body, position)
        assert match is not None  # its second alternative matches the empty string
        quoted, plain = match.group(1), match.group(2)
        fields.append(quoted.replace('""', '"') if quoted is not None else plain)
        position = match.end()
        if position == end:
            return fields, None
        char = body[position]
        if char == ",":
            position += 1
            if position == end:
                fields.append("")
                return fields, None
            continue
        column = len(fields)
        if char == '"' and quoted is None:
            if plain == "" and body.count('"', position) % 2 == 1:
                return None, f"field {column}: a quoted field is never closed"
            return (
                None,
                f"field {column}: a double quote in an unquoted field (quote the field, double its quotes)",
            )
        if quoted is not None and body[position - 2 : position] == '\\"':
            return None, (
                f'field {column}: text after a closing quote; a backslash-escaped quote (\\") '
                "is not RFC 4180, quotes inside a field are doubled"
            )
        if char == "\r":
            return None, f"field {column}: a carriage return outside quotes"
        return None, f"field {column}: text after a closing quote"


# ------------------------------------------------------------------------------------------------- files
@dataclass(frozen=True)
class FileTask:
    """One data file to check in a worker, and where its ids are spilled."""

    uri: str
    kind: str
    index: int
    spill_dir: str
    allow_non_finite: bool
    max_problems: int
    budget_bytes: int


@dataclass
class FileOutcome:
    """What one file's check found: its problems and counts, its spilled id runs, its ids (vertices)."""

    result: ValidationResult
    runs: list[ed.Run]
    ids: list[pa.Array]  # a vertex file's ~ids (large strings), in record order


class _VertexIds:
    """The vertex ``~id``s an edge worker checks ends against: their 128-bit hashes for whole blocks, and
    the exact set, built on first use, for records checked one by one."""

    def __init__(self, ids: pa.Array) -> None:
        self.ids = ids
        first, second = ed.string_hashes(ids) if len(ids) else (np.zeros(0, np.uint64),) * 2
        self.hashes = plain_records.HashSet(first, second)
        self._exact: set[str] | None = None

    @property
    def exact(self) -> set[str]:
        if self._exact is None:
            self._exact = set(self.ids.to_pylist())
        return self._exact


_VERTICES: _VertexIds | None = None  # set in each worker by _init_worker


def _init_worker(vertex_ids: pa.Array | None) -> None:
    global _VERTICES
    _VERTICES = None if vertex_ids is None else _VertexIds(vertex_ids)


def _blocks(stream: IO[bytes]) -> Iterator[bytes]:
    """The decompressed bytes in blocks of whole records (cut after a newline outside quotes)."""
    carry = b""
    while True:
        chunk = stream.read(BLOCK_BYTES)
        if not chunk:
            if carry:
                yield carry
            return
        data = carry + chunk if carry else chunk
        cut = data.rfind(b"\n") + 1
        # no newline yet, or the cut is inside quotes (find is a memchr: most blocks have no quote at all)
        if cut == 0 or (data.find(b'"', 0, cut) != -1 and data.count(b'"', 0, cut) % 2):
            carry = data
            continue
        yield data[:cut]
        carry = data[cut:]


def _lines(block: bytes) -> list[bytes]:
    """The lines of a block, each with its ``\\n`` (the last one may lack it)."""
    parts = block.split(b"\n")
    lines = [part + b"\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


_PLAIN_KINDS = {
    gremlin.TYPE_STRING: plain_records.ANY,
    gremlin.TYPE_BOOL: plain_records.BOOL,
    gremlin.TYPE_FLOAT: plain_records.FLOAT,
    gremlin.TYPE_DOUBLE: plain_records.DOUBLE,
    gremlin.TYPE_BYTE: plain_records.BYTE,
    gremlin.TYPE_SHORT: plain_records.SHORT,
    gremlin.TYPE_INT: plain_records.INT,
    gremlin.TYPE_LONG: plain_records.LONG,
}


def _plain_kind(column: Column) -> int:
    """What the compiled scan checks a column's values as (dates and arrays: only blanks; the rest are
    checked record by record)."""
    if column.is_system:
        return plain_records.ANY
    if column.is_array:
        return plain_records.BLANK
    return _PLAIN_KINDS.get(column.type_name, plain_records.BLANK)


class _FileChecker:
    """Checks the records of one file: whole blocks by one compiled scan when they are plain and good,
    the rest record by record (which finds and words every problem); spills every ``~id``'s hash."""

    def __init__(self, task: FileTask, result: ValidationResult) -> None:
        self.task = task
        self.uri = task.uri
        self.kind = task.kind
        self.result = result
        self.writer = ed.RunWriter(task.spill_dir, f"f{task.index:06d}", task.budget_bytes)
        self.ids: list[pa.Array] = []
        self._problem_line = -1

    def report_line(self, line: int, rule: str, reason: str) -> None:
        self.result.add(self.uri, line, rule, reason)
        if self._problem_line != line:
            self._problem_line = line
            self.result.bad_records[rule] += 1

    def spill(self, ids: pa.Array) -> None:
        first, second = ed.string_hashes(ids)
        self.writer.add(ed.partition_of(first), second)
        if self.kind == VERTEX:
            self.ids.append(ids)

    def spill_scanned(self) -> None:
        scanner = self.scanner
        self.writer.add(ed.partition_of(scanner.first), scanner.second.copy())  # its buffers are reused
        if self.kind == VERTEX:
            self.ids.append(scanner.ids())

    def run(self, stream: IO[bytes]) -> None:
        blocks = _blocks(stream)
        head = next(blocks, b"")
        if not head:
            self.result.add(self.uri, None, "header_missing", "empty file: every file needs a header line")
            return
        lines = _lines(head)
        quotes, taken = 0, 0
        for taken, raw in enumerate(lines, 1):  # noqa: B007 - the count is used below
            quotes += raw.count(b'"')
            if quotes % 2 == 0:
                break
        header_bytes = b"".join(lines[:taken])
        header_line, header_text = next(iter_records(iter([header_bytes]), self.report_line))
        if not self.header(header_line, header_text):
            return
        next_line = 1 + header_bytes.count(b"\n")
        rest = head[len(header_bytes) :]
        for block in itertools.chain([rest] if rest else [], blocks):
            records = self.fast_block(block)
            if records is None:
                self.slow_block(block, next_line)
                next_line += block.count(b"\n")
            else:  # a plain block: one record per line, the last one ends with a newline unless at the end
                next_line += records - (0 if block.endswith(b"\n") else 1)
        self.writer.flush()

    def header(self, header_line: int, header_text: str) -> bool:
        """Parse the header; False when the file cannot be checked further."""
        uri, result = self.uri, self.result
        if "\x00" in header_text:
            result.add(uri, header_line, "nul", "a NUL character in the header")
        cells, reason = split_record(header_text)
        if cells is None:
            result.add(uri, header_line, "quoting", f"header: {reason}")
            return False
        columns = parse_header(
            cells, self.kind, lambda rule, why: result.add(uri, header_line, rule, f"header: {why}")
        )
        if columns is None:
            return False
        self.columns = columns
        self.width = len(columns)
        index_of = {column.name: position for position, column in enumerate(columns) if column.is_system}
        self.id_index = index_of[gremlin.ID]
        names = gremlin.VERTEX_REQUIRED_COLUMNS if self.kind == VERTEX else gremlin.EDGE_REQUIRED_COLUMNS
        self.required = [index_of[name] for name in names]
        ends = (index_of.get(gremlin.FROM), index_of.get(gremlin.TO))
        self.ends = [end for end in ends if end is not None] if None not in ends else []
        self.typed = [
            (position, column)
            for position, column in enumerate(columns)
            if not column.is_system and (column.type_name != gremlin.TYPE_STRING or column.is_array)
        ]
        self.strings = [
            position
            for position, column in enumerate(columns)
            if not column.is_system and column.type_name == gremlin.TYPE_STRING
        ]
        vertices = _VERTICES.hashes if _VERTICES is not None and self.ends else None
        self.scanner = plain_records.PlainScanner(
            [_plain_kind(column) for column in columns],
            [position in self.required for position in range(self.width)],
            [position in self.ends for position in range(self.width)],
            self.id_index,
            vertices,
        )
        return True

    def fast_block(self, block: bytes) -> int | None:
        """Check a whole block in one compiled scan: its record count, or None (nothing recorded) when a
        record by record pass is needed: anything quoted or odd, or any value that may break a rule."""
        if len(block) > gremlin.MAX_VALUE_BYTES:  # a value of the block could be over the limit
            return None
        if b'"' in block or b"\r" in block or b"\x00" in block:  # memchr: the scan assumes none
            return None
        if not block.isascii():
            try:
                block.decode("utf-8")
            except UnicodeDecodeError:
                return None
        records = self.scanner.scan(block)
        if records == plain_records.NOT_SURE:
            return None
        self.result.records[self.kind] += records
        self.spill_scanned()
        return records

    def slow_block(self, block: bytes, first_line: int) -> None:
        """Check a block record by record, reporting every problem with its line."""
        offset = first_line - 1

        def report(line: int, rule: str, reason: str) -> None:
            self.report_line(line + offset, rule, reason)

        ids: list[str] = []
        vertices = _VERTICES
        for line, record in iter_records(iter(_lines(block)), report):
            element_id = self.check_record(line + offset, record, vertices)
            if element_id:
                ids.append(element_id)
        if ids:
            self.spill(pa.array(ids, pa.large_string()))

    def check_record(self, line: int, record: str, vertices: _VertexIds | None) -> str | None:
        """Check one record; its ``~id`` when it has one to count."""
        kind, columns = self.kind, self.columns
        self.result.records[kind] += 1
        if "\x00" in record:
            self.report_line(line, "nul", "a NUL character")
        fields, reason = split_record(record)
        if fields is None:
            self.report_line(line, "quoting", reason or "")
            return None
        if len(fields) != self.width:
            self.report_line(line, "field_count", f"{len(fields)} fields, the header has {self.width}")
            return None
        for position in self.required:
            if fields[position] == "":
                self.report_line(line, "blank_required", f"{columns[position].name} is blank")
        for position, column in self.typed:
            value = fields[position]
            if value == "":
                continue
            values = _ARRAY_SPLIT.split(value) if column.is_array else (value,)
            for item in values:
                problem = type_error(item, column.type_name, allow_non_finite=self.task.allow_non_finite)
                if problem is not None:
                    self.report_line(line, problem[0], f"{column.header}: {problem[1]}")
                    break
        big = gremlin.MAX_VALUE_BYTES // 4  # a str shorter than this cannot encode to more than the limit
        for position in self.strings:
            value = fields[position]
            if len(value) > big and len(value.encode("utf-8")) > gremlin.MAX_VALUE_BYTES:
                self.report_line(line, "value_too_large", f"{columns[position].header}: over 55 MB")
        if vertices is not None:
            for position in self.ends:
                end = fields[position]
                if end != "" and end not in vertices.exact:
                    self.report_line(
                        line, "missing_vertex", f"{columns[position].name} {end!r} is not a vertex ~id"
                    )
        return fields[self.id_index] or None


def _open_checked(uri: str, result: ValidationResult) -> tuple[IO[bytes], IO[bytes]] | None:
    """(raw, decompressed) streams of a data file, or None when its name or content rules it out."""
    name = posixpath.basename(uri)
    if name.lower().endswith(UNSUPPORTED_ARCHIVES):
        why = "tar/zip and other archives are not supported: one gzip or bzip2 file each"
        result.add(uri, None, "compression", why)
        return None
    compression = compression_of(name)
    raw = open_binary(uri)
    magic = raw.peek(3)[:3] if hasattr(raw, "peek") else b""
    problem = None
    if compression == gremlin.COMPRESSION_GZIP and not magic.startswith(GZIP_MAGIC):
        problem = "named .gz but not gzip data"
    elif compression == gremlin.COMPRESSION_BZIP2 and not magic.startswith(BZIP2_MAGIC):
        problem = "named .bz2 but not bzip2 data"
    elif compression == gremlin.COMPRESSION_NONE and magic.startswith((GZIP_MAGIC, BZIP2_MAGIC)):
        problem = "compressed data in a file without a .gz/.bz2 suffix"
    if problem is not None:
        raw.close()
        result.add(uri, None, "compression", problem)
        return None
    if compression == gremlin.COMPRESSION_GZIP:
        return raw, gzip.GzipFile(fileobj=raw)  # type: ignore[return-value]
    if compression == gremlin.COMPRESSION_BZIP2:
        return raw, bz2.BZ2File(raw)
    return raw, raw


def check_file(task: FileTask) -> FileOutcome:
    """Check one data file of a vertex or edge prefix (in a worker): every rule but duplicates across the
    export, whose ids it spills under ``task.spill_dir``."""
    result = ValidationResult(max_problems=task.max_problems)
    checker = _FileChecker(task, result)
    opened = _open_checked(task.uri, result)
    if opened is not None:
        raw, stream = opened
        with raw:
            try:
                checker.run(stream)
            except (OSError, EOFError, ValueError) as err:  # truncated or corrupt archive
                result.add(task.uri, None, "compression", f"cannot read the file to its end: {err}")
        checker.writer.flush()
    return FileOutcome(result, checker.writer.runs, checker.ids)


# --------------------------------------------------------------------------------------------- duplicates
@dataclass(frozen=True)
class PartitionTask:
    runs: tuple[ed.Run, ...]
    partitions: tuple[int, ...]
    scratch: str
    budget_bytes: int


def repeated_in_partitions(task: PartitionTask) -> tuple[int, list[tuple[int, int, int]]]:
    """(extra occurrences, up to SUSPECT_LIMIT ``(partition, key, times)``) of some id partitions."""
    extra, suspects = 0, list[tuple[int, int, int]]()
    for partition in task.partitions:
        for key, times in ed.repeated_keys(task.runs, partition, task.scratch, task.budget_bytes):
            extra += times - 1
            if len(suspects) < SUSPECT_LIMIT:
                suspects.append((partition, key, times))
    return extra, suspects


@dataclass(frozen=True)
class FindTask:
    uri: str
    suspects: frozenset[tuple[int, int]]
    limit: int


def find_suspects(task: FindTask) -> list[tuple[int, str, tuple[int, int]]]:
    """``(line, ~id, (partition, key))`` of the records of one file whose ``~id`` hash is a suspect, in
    line order (at most ``task.limit``)."""
    result = ValidationResult()
    opened = _open_checked(task.uri, result)
    if opened is None:
        return []
    raw, stream = opened
    found: list[tuple[int, str, tuple[int, int]]] = []
    with raw:
        records = iter_records(iter(stream), lambda *_: None)
        header = next(records, None)
        cells = split_record(header[1])[0] if header else None
        if not cells or gremlin.ID not in cells:
            return []
        id_index = cells.index(gremlin.ID)
        while len(found) < task.limit:
            batch = list(itertools.islice(records, 65_536))
            if not batch:
                break
            located = []
            for line, record in batch:
                fields = split_record(record)[0]
                if fields is not None and len(fields) > id_index and fields[id_index]:
                    located.append((line, fields[id_index]))
            if not located:
                continue
            first, second = ed.string_hashes(pa.array([value for _, value in located], pa.large_string()))
            for (line, value), part, key in zip(
                located, ed.partition_of(first).tolist(), second.tolist(), strict=True
            ):
                if (part, key) in task.suspects:
                    found.append((line, value, (part, key)))
    return found[: task.limit]


# ----------------------------------------------------------------------------------------------- workers
def _start_forkserver() -> None:
    """Start the workers' forkserver now, with this module's heavy imports (numpy, pyarrow, numba) done in
    it: every worker forks with them loaded instead of importing them itself, and the server imports them
    while the caller goes on. (Not this module itself: a worker runs it as its main module.)"""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([plain_records.__name__, storage.__name__])
    multiprocessing.forkserver.ensure_running()


class _Workers:
    """Maps a function over tasks in order: in this process for one worker or one task, else in a
    process pool (forkserver: safe beside the JVM's threads) whose workers get the vertex ids once."""

    def __init__(self, workers: int, vertex_ids: pa.Array | None = None) -> None:
        self.workers = workers
        self.vertex_ids = vertex_ids

    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> list[Any]:
        count = min(self.workers, len(tasks))
        if count <= 1:
            _init_worker(self.vertex_ids)
            try:
                return [fn(task) for task in tasks]
            finally:
                _init_worker(None)
        context = multiprocessing.get_context("forkserver")
        with concurrent.futures.ProcessPoolExecutor(
            count, mp_context=context, initializer=_init_worker, initargs=(self.vertex_ids,)
        ) as pool:
            return list(pool.map(fn, tasks))


def validate_prefix(
    uri: str,
    kind: str,
    result: ValidationResult,
    spill_dir: str,
    *,
    workers: int = 0,
    vertex_ids: pa.Array | None = None,
    allow_non_finite: bool = False,
    budget_bytes: int = ed.DEFAULT_BUDGET_BYTES,
) -> pa.Array:
    """Check every file under one loader prefix (vertex or edge), the files in parallel, then the
    duplicate ``~id``s across all of them; returns the ids when ``kind`` is vertices (else none)."""
    files = storage.all_files(storage.resolve(uri))  # on S3: the published folder's current version
    data_files = []
    for file_uri in files:
        if is_non_data_name(posixpath.basename(file_uri)):
            result.add(
                file_uri,
                None,
                "non_data_file",
                "not a data file, but the loader reads every file under the prefix",
            )
        else:
            data_files.append(file_uri)
    if not data_files:
        result.add(uri, None, "no_files", f"no {kind} data files")
    result.files[kind] = data_files
    folder = os.path.join(spill_dir, kind)
    os.makedirs(folder, exist_ok=True)
    pool = _Workers(workers or os.cpu_count() or 1, vertex_ids)
    tasks = [
        FileTask(file_uri, kind, index, folder, allow_non_finite, result.max_problems, budget_bytes)
        for index, file_uri in enumerate(data_files)
    ]
    outcomes: list[FileOutcome] = pool.map(check_file, tasks)
    ids: list[pa.Array] = []
    for outcome in outcomes:
        result.merge(outcome.result)
        ids.extend(outcome.ids)
    runs = tuple(run for outcome in outcomes for run in outcome.runs)
    _report_duplicates(kind, data_files, runs, result, pool, folder, budget_bytes)
    return pa.concat_arrays(ids) if ids else plain_records.no_strings()


def _report_duplicates(
    kind: str,
    data_files: Sequence[str],
    runs: tuple[ed.Run, ...],
    result: ValidationResult,
    pool: _Workers,
    scratch: str,
    budget_bytes: int,
) -> None:
    """Count the repeated ``~id``s from the spilled hashes, then reread the files for the suspects' ids:
    a repeat is reported (file, line, id) only when the id itself repeats, never on a hash alone."""
    if not runs:
        return
    spilled = sum(os.path.getsize(run.keys_path) for run in runs)
    ways = 1 if spilled <= budget_bytes else pool.workers  # a few ids: one pass here, no processes
    tasks = [
        PartitionTask(runs, tuple(range(way, ed.PARTITIONS, ways)), scratch, budget_bytes)
        for way in range(ways)
    ]
    extra = 0
    times: dict[tuple[int, int], int] = {}
    for partition_extra, suspects in pool.map(repeated_in_partitions, tasks):
        extra += partition_extra
        for part, key, seen in suspects:
            if len(times) < SUSPECT_LIMIT:
                times[(part, key)] = seen
    if not extra:
        return
    limit = result.max_problems + len(times)
    finds = pool.map(find_suspects, [FindTask(uri, frozenset(times), limit) for uri in data_files])
    seen_ids: dict[tuple[int, int], set[str]] = {}
    reported = 0
    for uri, found in zip(data_files, finds, strict=True):
        for line, element_id, key in found:
            distinct = seen_ids.setdefault(key, set())
            if element_id in distinct:
                result.add(uri, line, "duplicate_id", f"{kind} ~id {element_id!r} appears more than once")
                reported += 1
            else:
                distinct.add(element_id)
    collisions = sum(len(distinct) - 1 for distinct in seen_ids.values())
    repeats = extra - collisions
    result.problem_counts["duplicate_id"] += repeats - reported
    result.bad_records["duplicate_id"] += repeats
    if not result.problem_counts["duplicate_id"]:
        del result.problem_counts["duplicate_id"]


def validate_export(
    vertices_uri: str,
    edges_uri: str,
    *,
    allow_non_finite: bool = False,
    max_problems: int = DEFAULT_MAX_PROBLEMS,
    workers: int | None = None,
    spill_dir: str | None = None,
    budget_bytes: int = ed.DEFAULT_BUDGET_BYTES,
) -> ValidationResult:
    """Validate a vertex prefix and an edge prefix; edges are checked against the vertices' ids.

    ``workers`` processes (default: every core) check files and id partitions; the ids' hashes are
    spilled under ``spill_dir`` (default: the system's temporary folder), removed when done;
    ``budget_bytes`` bounds what one worker holds of them.
    """
    result = ValidationResult(max_problems=max_problems)
    if (workers or os.cpu_count() or 1) > 1:
        _start_forkserver()
    plain_records.compile_scan()  # here once, not in each worker
    with tempfile.TemporaryDirectory(prefix="validate-ids-", dir=spill_dir) as spill:
        vertex_ids = validate_prefix(
            vertices_uri, VERTEX, result, spill, workers=workers or 0, allow_non_finite=allow_non_finite,
            budget_bytes=budget_bytes,
        )
        validate_prefix(
            edges_uri, EDGE, result, spill, workers=workers or 0,
            vertex_ids=vertex_ids, allow_non_finite=allow_non_finite,
            budget_bytes=budget_bytes,
        )
    return result


# -------------------------------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = job_parser("validate_gremlin_csv", "Check a Gremlin CSV export against Neptune's loader rules.")
    parser.add_argument("--vertices", required=True, help="vertex prefix URI (folder or one file)")
    parser.add_argument("--edges", required=True, help="edge prefix URI (folder or one file)")
    parser.add_argument("--allow-non-finite", action="store_true", help="accept NaN/Infinity in Float/Double")
    parser.add_argument(
        "--max-problems",
        type=positive_int,
        default=DEFAULT_MAX_PROBLEMS,
        help="problems listed in full (all are counted)",
    )
    parser.add_argument(
        "--workers", type=positive_int, default=None, help="processes checking files (default: every core)"
    )
    parser.add_argument(
        "--spill-dir",
        default=None,
        help="local folder for the ids' hashes, 8 bytes per id, removed when done (default: the system's "
        "temporary folder)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Validate; log every problem kept; raise JobError (exit 2) when there is any. Returns the report."""
    started_at = time.time()
    args = parse_args(argv)
    for flag, uri in (("--vertices", args.vertices), ("--edges", args.edges)):
        if not storage.exists(uri):
            raise JobError(f"{flag}: nothing at {uri}")
    result = validate_export(
        args.vertices,
        args.edges,
        allow_non_finite=args.allow_non_finite,
        max_problems=args.max_problems,
        workers=args.workers,
        spill_dir=args.spill_dir,
    )
    for problem in result.problems:
        LOG.error("%s", problem)
    records = sum(result.records.values())
    bad = sum(result.bad_records.values())
    summary: dict[str, Any] = {
        "stage": STAGE,
        "ok": result.ok,
        "vertices": args.vertices,
        "edges": args.edges,
        "files": {kind: len(files) for kind, files in result.files.items()},
        "records": dict(result.records),
        "problems_by_rule": dict(result.problem_counts),
        "problems": [str(problem) for problem in result.problems],
    }
    if args.report_dir:
        funnel = Funnel(rows_in=records, rows_out=records - bad, rejected_by_reason=dict(result.bad_records))
        summary = write_report(
            args.report_dir,
            STAGE,
            args.run_date,
            funnel,
            started_at=started_at,
            details={k: v for k, v in summary.items() if k != "stage"},
        )
    LOG.info(
        "validated %d files, %d records: %s",
        sum(len(f) for f in result.files.values()),
        records,
        "ok"
        if result.ok
        else f"{sum(result.problem_counts.values())} problem(s) {dict(result.problem_counts)}",
    )
    if not result.ok:
        raise JobError(f"{sum(result.problem_counts.values())} problem(s): {dict(result.problem_counts)}")
    return summary


if __name__ == "__main__":
    raise SystemExit(run(main))
