"""A strict validator of a Gremlin CSV export against Amazon Neptune's documented bulk-load rules.

    python -m jobs.validate_gremlin_csv --vertices <export>/vertices --edges <export>/edges \
        [--allow-non-finite] [--max-problems 1000] [--report-dir R --run-date D]

Works on any export (not only this suite's) and as a library (:func:`validate_export`). Pure Python,
streaming: each file is read line by line through gzip/bzip2/plain, records are assembled across quoted
newlines and tokenised by an exact RFC 4180 grammar (a fast path for lines without quotes), so memory is
bounded by the longest record, except for the id sets that referential integrity and duplicate detection
need: every vertex ``~id`` and every edge ``~id`` is kept in a Python set (roughly 50 bytes plus the id's
length per id; 10 M edges with 40-character ids take about 1 GB).

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
import datetime as dt
import gzip
import io
import logging
import math
import posixpath
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from jobs.common import storage
from jobs.common.cli import JobError, job_parser, positive_int, run
from jobs.common.report import Funnel, write_report
from schemas import gremlin

LOG = logging.getLogger("stylegraph.validate")

STAGE = "validate"
VERTEX = "vertex"
EDGE = "edge"
DEFAULT_MAX_PROBLEMS = 1000

GZIP_MAGIC = b"\x1f\x8b"
BZIP2_MAGIC = b"BZh"
UNSUPPORTED_ARCHIVES = (".zip", ".tar", ".tgz", ".tar.gz", ".tar.bz2", ".7z", ".xz", ".zst")
BOM = "\ufeff"

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
_INT_RANGES = {
    gremlin.TYPE_BYTE: (-(2**7), 2**7 - 1),
    gremlin.TYPE_SHORT: (-(2**15), 2**15 - 1),
    gremlin.TYPE_INT: (-(2**31), 2**31 - 1),
    gremlin.TYPE_LONG: (-(2**63), 2**63 - 1),
}
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
    if type_name in _INT_RANGES:
        low, high = _INT_RANGES[type_name]
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
def validate_file(
    uri: str,
    kind: str,
    result: ValidationResult,
    ids: set[str],
    vertex_ids: set[str] | None,
    *,
    allow_non_finite: bool,
) -> None:
    """Check one data file of a vertex or edge prefix, adding its problems and ids."""
    name = posixpath.basename(uri)
    if name.lower().endswith(UNSUPPORTED_ARCHIVES):
        result.add(
            uri,
            None,
            "compression",
            "tar/zip and other archives are not supported: one gzip or bzip2 file each",
        )
        return
    compression = compression_of(name)
    with open_binary(uri) as raw:
        magic = raw.peek(3)[:3] if hasattr(raw, "peek") else b""
        if compression == gremlin.COMPRESSION_GZIP and not magic.startswith(GZIP_MAGIC):
            result.add(uri, None, "compression", "named .gz but not gzip data")
            return
        if compression == gremlin.COMPRESSION_BZIP2 and not magic.startswith(BZIP2_MAGIC):
            result.add(uri, None, "compression", "named .bz2 but not bzip2 data")
            return
        if compression == gremlin.COMPRESSION_NONE and (
            magic.startswith(GZIP_MAGIC) or magic.startswith(BZIP2_MAGIC)
        ):
            result.add(uri, None, "compression", "compressed data in a file without a .gz/.bz2 suffix")
            return
        if compression == gremlin.COMPRESSION_GZIP:
            stream: Iterable[bytes] = gzip.GzipFile(fileobj=raw)
        elif compression == gremlin.COMPRESSION_BZIP2:
            stream = bz2.BZ2File(raw)
        else:
            stream = raw
        try:
            _validate_stream(uri, kind, stream, result, ids, vertex_ids, allow_non_finite=allow_non_finite)
        except (OSError, EOFError, ValueError) as err:  # truncated or corrupt archive
            result.add(uri, None, "compression", f"cannot read the file to its end: {err}")


def _validate_stream(
    uri: str,
    kind: str,
    stream: Iterable[bytes],
    result: ValidationResult,
    ids: set[str],
    vertex_ids: set[str] | None,
    *,
    allow_non_finite: bool,
) -> None:
    record_problem_line = [-1]

    def report_line(line: int, rule: str, reason: str) -> None:
        result.add(uri, line, rule, reason)
        if record_problem_line[0] != line:
            record_problem_line[0] = line
            result.bad_records[rule] += 1

    records = iter_records(iter(stream), report_line)
    first = next(records, None)
    if first is None:
        result.add(uri, None, "header_missing", "empty file: every file needs a header line")
        return
    header_line, header_text = first
    if "\x00" in header_text:
        result.add(uri, header_line, "nul", "a NUL character in the header")
    cells, reason = split_record(header_text)
    if cells is None:
        result.add(uri, header_line, "quoting", f"header: {reason}")
        return
    columns = parse_header(
        cells, kind, lambda rule, why: result.add(uri, header_line, rule, f"header: {why}")
    )
    if columns is None:
        return
    width = len(columns)
    index_of = {column.name: position for position, column in enumerate(columns) if column.is_system}
    id_index = index_of[gremlin.ID]
    required = [
        index_of[name]
        for name in (gremlin.VERTEX_REQUIRED_COLUMNS if kind == VERTEX else gremlin.EDGE_REQUIRED_COLUMNS)
    ]
    from_index, to_index = index_of.get(gremlin.FROM), index_of.get(gremlin.TO)
    typed = [
        (position, column)
        for position, column in enumerate(columns)
        if not column.is_system and (column.type_name != gremlin.TYPE_STRING or column.is_array)
    ]
    strings = [
        position
        for position, column in enumerate(columns)
        if not column.is_system and column.type_name == gremlin.TYPE_STRING
    ]
    big = gremlin.MAX_VALUE_BYTES // 4  # a str shorter than this cannot encode to more than the limit

    for line, record in records:
        result.records[kind] += 1
        if "\x00" in record:
            report_line(line, "nul", "a NUL character")
        fields, reason = split_record(record)
        if fields is None:
            report_line(line, "quoting", reason or "")
            continue
        if len(fields) != width:
            report_line(line, "field_count", f"{len(fields)} fields, the header has {width}")
            continue
        for position in required:
            if fields[position] == "":
                report_line(line, "blank_required", f"{columns[position].name} is blank")
        for position, column in typed:
            value = fields[position]
            if value == "":
                continue
            values = _ARRAY_SPLIT.split(value) if column.is_array else (value,)
            for item in values:
                problem = type_error(item, column.type_name, allow_non_finite=allow_non_finite)
                if problem is not None:
                    report_line(line, problem[0], f"{column.header}: {problem[1]}")
                    break
        for position in strings:
            value = fields[position]
            if len(value) > big and len(value.encode("utf-8")) > gremlin.MAX_VALUE_BYTES:
                report_line(line, "value_too_large", f"{columns[position].header}: over 55 MB")
        element_id = fields[id_index]
        if element_id != "":
            if element_id in ids:
                report_line(line, "duplicate_id", f"{kind} ~id {element_id!r} appears more than once")
            else:
                ids.add(element_id)
        if vertex_ids is not None and from_index is not None and to_index is not None:
            for position in (from_index, to_index):
                end = fields[position]
                if end != "" and end not in vertex_ids:
                    report_line(
                        line, "missing_vertex", f"{columns[position].name} {end!r} is not a vertex ~id"
                    )


def validate_prefix(
    uri: str,
    kind: str,
    result: ValidationResult,
    ids: set[str],
    vertex_ids: set[str] | None = None,
    *,
    allow_non_finite: bool = False,
) -> None:
    """Check every file under one loader prefix (vertex or edge)."""
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
    for file_uri in data_files:
        validate_file(file_uri, kind, result, ids, vertex_ids, allow_non_finite=allow_non_finite)


def validate_export(
    vertices_uri: str,
    edges_uri: str,
    *,
    allow_non_finite: bool = False,
    max_problems: int = DEFAULT_MAX_PROBLEMS,
) -> ValidationResult:
    """Validate a vertex prefix and an edge prefix; edges are checked against the vertices' ids."""
    result = ValidationResult(max_problems=max_problems)
    vertex_ids: set[str] = set()
    validate_prefix(vertices_uri, VERTEX, result, vertex_ids, allow_non_finite=allow_non_finite)
    validate_prefix(edges_uri, EDGE, result, set(), vertex_ids, allow_non_finite=allow_non_finite)
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
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Validate; log every problem kept; raise JobError (exit 2) when there is any. Returns the report."""
    started_at = time.time()
    args = parse_args(argv)
    for flag, uri in (("--vertices", args.vertices), ("--edges", args.edges)):
        if not storage.exists(uri):
            raise JobError(f"{flag}: nothing at {uri}")
    result = validate_export(
        args.vertices, args.edges, allow_non_finite=args.allow_non_finite, max_problems=args.max_problems
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
