"""Export the catalog and the similarity edges as Gremlin CSVs for Amazon Neptune's bulk loader.

    python -m jobs.export_gremlin --catalog S/catalog/catalog.csv --edges W/style/similarity/dt=D \
        --embeddings W/style/embeddings/dt=D --output W/style/gremlin/dt=D --run-date D [--compression gzip]

Writes ``<output>/vertices/*.csv.gz`` (one vertex per product), ``<output>/edges/*.csv.gz`` (one edge per
similarity pair), ``<output>/_rejects/{vertices,edges}/`` (Parquet, each row with its reason) and
``<output>/manifest.json`` (files, rows, bytes, sha256, totals), then the report
``<reports>/export/dt=D.json``.

The whole export is written beside its final place, under ``<parent>/_staging/export/<run id>/<name>/``
(``<parent>/<name>`` being ``--output``), so that one :func:`storage.publish` swaps it in at once. The
edge files are written by Python tasks (:mod:`udfs.gremlin_edge_files`) and the vertex files by the
driver, each taking its files' rows, bytes and sha256 as it writes them; only in the rare run where a
(src, dst) pair repeats are the edges redone with Spark's CSV writer and read back. The funnel must
balance and the quality gate pass before the folder is published. A failed run leaves the previous
export as it was (and removes its staging folder).
"""

from __future__ import annotations

import argparse
import bisect
import bz2
import concurrent.futures
import csv
import dataclasses
import functools
import hashlib
import io
import logging
import math
import os
import posixpath
import re
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from jobs.common import graph_marker as gm
from jobs.common import quality_pass, storage
from jobs.common.catalog import check_catalog_header
from jobs.common.cli import JobError, job_parser, non_negative_int, positive_int
from jobs.common.cli import run as run_job
from jobs.common.quality import (
    GREMLIN_EDGES,
    GREMLIN_VERTICES,
    MODE_OFF,
    ROWS_IN,
    ROWS_REJECTED,
    Checked,
    WrittenCounts,
    add_quality_args,
)
from jobs.common.report import Funnel, check_funnel
from jobs.common.run import RunSpec, StagedRun
from jobs.common.spark import get_spark, task_slots
from jobs.common.storage import all_files
from jobs.transforms import gremlin as tg
from jobs.transforms import gremlin_diff as gd
from schemas import catalog, embeddings, gremlin, similarity
from udfs import gremlin_arrow as ga
from udfs import gremlin_edge_files as ef

LOG = logging.getLogger("stylegraph.export")

STAGE = "export"
APP_NAME = "stylegraph-export-gremlin"
DEFAULT_TARGET_FILE_MB = 128
SIZING_SAMPLE_ROWS = 2000
# Partitions that would each write less than this are coalesced (no shuffle) towards the target size, so
# the loader does not meet a swarm of small files; above it, the frame keeps its partitions (the writer's
# parallelism) and maxRecordsPerFile caps each file near the target.
TINY_FILE_BYTES = 8 * 1024 * 1024
READ_CHUNK_BYTES = 4 * 1024 * 1024
DATA_FILE_PATTERN = re.compile(r"^part-[0-9]{5}-.*\.csv(\.gz|\.bz2)?$")
VERTEX_PREFIX = "vertex."
EDGE_PREFIX = "edge."
DROPPED_REASONS = {gremlin.VERTEX_DUPLICATE_IDENTICAL, gremlin.EDGE_DUPLICATE_IDENTICAL}
# Suspect duplicate keys above this many are joined without a broadcast.
MAX_BROADCAST_KEYS = 1_000_000
# The exact duplicate check holds at most about this many (from, to) keys (8 bytes each, sorted) in one
# task: the keys are cut into this many-key ranges of the ~from vertex and each range counted apart.
KEYS_PER_RANGE = 5_000_000
EMPTY_PARQUET_NAME = "part-00000-empty.parquet"
VERTEX_REJECT_COLUMNS = [*catalog.CATALOG_COLUMNS, tg.CORRUPT_RECORD, gremlin.REASON]
# The quality gate reads back every vertex and this many edge rows in all, taken from the head of every
# edge file (0: every edge row). The job itself has already read every byte of every file (record count,
# header, NULs, sha256) and balanced the funnel; the gate parses rows with Spark's CSV reader and runs the
# great-expectations suites on them, which costs far more per row than the export does.
DEFAULT_GATE_EDGE_ROWS = 100_000
# The gate reads a dataset's sampled rows with Arrow on the driver up to this many rows (a few hundred MB
# at most); more (``--gate-edge-rows 0`` on a big graph, a catalog of millions) are read by Spark.
MAX_DRIVER_GATE_ROWS = 5_000_000


def label_arg(value: str) -> str:
    """argparse type: a vertex or edge label matching :data:`gremlin.LABEL_PATTERN` (no ``:``, ``;``
    or spaces)."""
    if not re.match(gremlin.LABEL_PATTERN, value):
        raise argparse.ArgumentTypeError(f"label must match {gremlin.LABEL_PATTERN}, got {value!r}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = job_parser(
        "export_gremlin", "Export the product graph as Gremlin CSVs for Neptune's bulk loader."
    )
    parser.add_argument("--catalog", required=True, help="catalog CSV (file or folder URI)")
    parser.add_argument("--edges", required=True, help="similarity edges Parquet folder URI")
    parser.add_argument(
        "--output", required=True, help="export folder URI (vertices/, edges/, manifest.json)"
    )
    parser.add_argument("--embeddings", default=None, help="embeddings Parquet: adds the embedding status")
    parser.add_argument("--compression", default=gremlin.COMPRESSION_GZIP, choices=gremlin.COMPRESSIONS)
    parser.add_argument(
        "--target-file-mb",
        type=positive_int,
        default=DEFAULT_TARGET_FILE_MB,
        help="aim for data files of about this many MB (compressed)",
    )
    parser.add_argument("--vertex-label", type=label_arg, default=gremlin.DEFAULT_VERTEX_LABEL)
    parser.add_argument("--edge-label", type=label_arg, default=gremlin.DEFAULT_EDGE_LABEL)
    parser.add_argument(
        "--metric",
        default=similarity.COSINE,
        choices=similarity.METRICS,
        help="the similarity metric of the edges (written on every edge)",
    )
    parser.add_argument(
        "--loaded-marker",
        default=None,
        help="the marker naming the export Neptune holds, to diff against "
        f"(default <output>/../{gremlin.LOADED_MARKER_NAME}; none there: a full load)",
    )
    add_quality_args(parser)
    parser.add_argument(
        "--gate-edge-rows",
        type=non_negative_int,
        default=DEFAULT_GATE_EDGE_ROWS,
        help="edge rows the quality gate parses and checks, taken from the head of every edge file "
        f"(default {DEFAULT_GATE_EDGE_ROWS:,}; 0: every edge row, which costs far more than the export)",
    )
    args = parser.parse_args(argv)
    if args.report_dir is None:  # beside the export, never inside the folder a publish replaces
        args.report_dir = storage.join(posixpath.dirname(args.output.rstrip("/")) or ".", storage.REPORTS_DIR)
    return args


@dataclass(frozen=True)
class ExportSpec:
    """What an export reads and how it writes the CSVs (the parsed flags)."""

    output: str
    run_date: str
    catalog: str
    edges: str
    embeddings: str | None
    compression: str
    target_file_mb: int
    vertex_label: str
    edge_label: str
    metric: str
    loaded_marker: str | None
    gate_edge_rows: int
    is_gated: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ExportSpec:
        names = [name for name in cls.__dataclass_fields__ if name not in ("run_date", "is_gated")]
        return cls(
            **{name: getattr(args, name) for name in names},
            run_date=str(args.run_date),
            is_gated=args.quality != MODE_OFF,
        )

    @property
    def target_bytes(self) -> int:
        return self.target_file_mb * 1024 * 1024

    @property
    def inputs(self) -> dict[str, str | None]:
        return {"--catalog": self.catalog, "--edges": self.edges, "--embeddings": self.embeddings}


# ----------------------------------------------------------------------------------------------- reading
def read_catalog(spark: SparkSession, uri: str) -> DataFrame:
    """The catalog CSV under its declared schema, with a column that holds malformed lines."""
    check_catalog_header(uri)
    corrupt = T.StructField(tg.CORRUPT_RECORD, T.StringType(), True)
    schema = T.StructType([*catalog.CATALOG_SCHEMA.fields, corrupt])
    return (
        spark.read.schema(schema)
        .options(**catalog.CATALOG_CSV_OPTIONS)
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", tg.CORRUPT_RECORD)
        .csv(storage.read_path(uri))
    )


def read_edges(spark: SparkSession, uri: str) -> tuple[DataFrame, bool]:
    """The similarity edges and whether they carry a rank (top-k) or not (all pairs)."""
    edges_df = spark.read.parquet(storage.read_path(uri))
    required = (similarity.SRC, similarity.DST, similarity.SCORE)
    missing = [column for column in required if column not in edges_df.columns]
    if missing:
        raise JobError(f"--edges {uri}: missing column(s) {missing}; expected schemas/similarity.py")
    has_rank = similarity.RANK in edges_df.columns
    return edges_df.transform(tg.select_edge_contract, has_rank=has_rank), has_rank


def read_embedding_status(spark: SparkSession, uri: str) -> DataFrame:
    embeddings_df = spark.read.parquet(storage.read_path(uri))
    required = (embeddings.SKU, embeddings.STATUS)
    missing = [column for column in required if column not in embeddings_df.columns]
    if missing:
        raise JobError(f"--embeddings {uri}: missing column(s) {missing}; expected schemas/embeddings.py")
    return embeddings_df.transform(tg.embedding_status_by_sku)


# ------------------------------------------------------------------------------------------------ sizing
@dataclass
class Sizing:
    """How one CSV output is cut into files."""

    bytes_per_row: float | None  # compressed, estimated from a sample (None: not needed)
    rows_per_file: int
    partitions: int | None  # coalesce to this many partitions; None keeps the frame's partitions


def plan_sizing(
    rows_df: DataFrame,
    *,
    total_rows: int,
    target_bytes: int,
    compression: str,
    sample_df: DataFrame | None = None,
    slots: int = 1,
) -> Sizing:
    """Estimate compressed bytes per row from a small sample and derive rows per file and partitions.

    The sample (a few thousand rows) is formatted with Python's csv module and compressed with the same
    codec, which is close to what Spark writes. ``maxRecordsPerFile`` then caps every file near the
    target; partitions that would each write a tiny file are coalesced (no shuffle).
    """
    if total_rows <= SIZING_SAMPLE_ROWS:  # a small output is one file whatever its row size
        return Sizing(bytes_per_row=None, rows_per_file=max(total_rows, 1), partitions=1)
    sample = (sample_df if sample_df is not None else rows_df).limit(SIZING_SAMPLE_ROWS).collect()
    if not sample:
        return Sizing(bytes_per_row=None, rows_per_file=max(total_rows, 1), partitions=1)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for row in sample:
        writer.writerow(["" if value is None else value for value in row])
    raw = buffer.getvalue().encode("utf-8")
    bytes_per_row = max(len(ef.compressed(raw, compression)) / len(sample), 1.0)
    rows_per_file = max(1, int(target_bytes / bytes_per_row))
    estimated_bytes = bytes_per_row * total_rows
    current = rows_df.rdd.getNumPartitions()
    partitions = None
    if current > 1 and estimated_bytes / current < min(TINY_FILE_BYTES, target_bytes):
        # Fewer files, but never fewer writing tasks than there are slots to run them.
        partitions = max(1, min(current, max(math.ceil(estimated_bytes / target_bytes), slots)))
    return Sizing(bytes_per_row=round(bytes_per_row, 2), rows_per_file=rows_per_file, partitions=partitions)


def write_csv(rows_df: DataFrame, uri: str, *, compression: str, sizing: Sizing) -> None:
    """Write Gremlin CSV rows with the RFC 4180 writer options, one header per file."""
    if sizing.partitions is not None:
        rows_df = rows_df.coalesce(sizing.partitions)
    (
        rows_df.write.mode("overwrite")
        .options(**gremlin.GREMLIN_CSV_WRITE_OPTIONS)
        .option("compression", compression)
        .option("maxRecordsPerFile", sizing.rows_per_file)
        .csv(storage.spark_path(uri))
    )


# --------------------------------------------------------------------------------------- checking files
def remove_non_data_files(uri: str, *, keep: re.Pattern[str] | None) -> list[str]:
    """Delete Spark's ``_SUCCESS``, ``.crc`` and any other file that is not data under a folder."""
    removed = []
    for file_uri in all_files(uri):
        name = posixpath.basename(file_uri)
        is_hidden = name.startswith((".", "_"))
        if is_hidden or (keep is not None and not keep.match(name)):
            storage.remove(file_uri)
            removed.append(name)
    return removed


def _decompressor(compression: str) -> Any:
    if compression == gremlin.COMPRESSION_GZIP:
        return zlib.decompressobj(wbits=31)
    if compression == gremlin.COMPRESSION_BZIP2:
        return bz2.BZ2Decompressor()
    return None


class RecordCounter:
    """Counts RFC 4180 records in a byte stream fed in chunks: a ``\\n`` outside quotes ends one.

    Doubled quotes toggle the in-quote state twice, so they need no special case. Also keeps the first
    line (the header) and notices NUL bytes.
    """

    def __init__(self) -> None:
        self.records = 0
        self.in_quotes = False
        self.last_byte = b""
        self.header = bytearray()
        self.header_done = False
        self.has_nul = False

    def feed(self, data: bytes) -> None:
        if not data:
            return
        if not self.header_done:
            cut = data.find(b"\n")
            self.header += data if cut < 0 else data[:cut]
            self.header_done = cut >= 0
        if b"\x00" in data:
            self.has_nul = True
        if not self.in_quotes and b'"' not in data:
            self.records += data.count(b"\n")
        else:
            parts = data.split(b'"')
            for index, part in enumerate(parts):
                if not self.in_quotes:
                    self.records += part.count(b"\n")
                if index < len(parts) - 1:
                    self.in_quotes = not self.in_quotes
        self.last_byte = data[-1:]

    def total(self) -> int:
        """Records seen, counting a last record without its final newline."""
        return self.records + (1 if self.last_byte not in (b"", b"\n") else 0)


def describe_file(file_uri: str, compression: str) -> dict[str, Any]:
    """Bytes, sha256 (of the stored bytes), data rows (records minus the header), header and NUL check."""
    fs, path = storage.filesystem(file_uri)
    digest = hashlib.sha256()
    counter = RecordCounter()
    size = 0
    decompressor = _decompressor(compression)
    with fs.open_input_stream(path, compression=None) as stream:  # the stored bytes, not inflated
        while True:
            chunk = stream.read(READ_CHUNK_BYTES)
            if not chunk:
                break
            size += len(chunk)
            digest.update(chunk)
            if decompressor is None:
                counter.feed(chunk)
                continue
            data = chunk
            while data:
                counter.feed(decompressor.decompress(data))
                data = decompressor.unused_data if decompressor.eof else b""
                if data:  # another gzip member / bzip2 stream follows
                    decompressor = _decompressor(compression)
    records = counter.total()
    return {
        "bytes": size,
        "sha256": digest.hexdigest(),
        "rows": max(records - 1, 0),
        "header": counter.header.decode("utf-8", errors="replace").rstrip("\r"),
        "has_nul": counter.has_nul,
    }


def describe_files(
    root_uri: str, folder: str, compression: str, expected_header: Sequence[str]
) -> list[dict]:
    """Describe every data file of ``<root>/<folder>`` (in parallel: hashing and inflating release the GIL).

    Raises:
        RuntimeError: a file without the expected header or with a NUL byte (a bug: never published).
    """
    files = all_files(storage.join(root_uri, folder))
    workers = max(1, min(len(files), os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        described = list(pool.map(lambda uri: describe_file(uri, compression), files))
    header = ",".join(expected_header)
    out = []
    for file_uri, info in zip(files, described, strict=True):
        relative = posixpath.relpath(file_uri, root_uri)
        if info["header"] != header:
            raise RuntimeError(f"{relative}: header {info['header']!r} is not {header!r}")
        if info["has_nul"]:
            raise RuntimeError(f"{relative}: a NUL byte was written")
        out.append({"path": relative, "rows": info["rows"], "bytes": info["bytes"], "sha256": info["sha256"]})
    return out


def totals(files: list[dict]) -> dict[str, int]:
    return {
        "files": len(files),
        "rows": sum(item["rows"] for item in files),
        "bytes": sum(item["bytes"] for item in files),
    }


# -------------------------------------------------------------------------------------------- counting
def counts_by_reason(tagged_df: DataFrame) -> dict[str | None, int]:
    """Rows per reason (None = good rows) of a small or already-written tagged frame."""
    return {row[gremlin.REASON]: row["count"] for row in tagged_df.groupBy(gremlin.REASON).count().collect()}


def split_reasons(counts: dict[str | None, int], prefix: str) -> tuple[dict[str, int], dict[str, int]]:
    rejected = {f"{prefix}{k}": v for k, v in counts.items() if k is not None and k not in DROPPED_REASONS}
    dropped = {f"{prefix}{k}": v for k, v in counts.items() if k in DROPPED_REASONS}
    return rejected, dropped


# ------------------------------------------------------------------------------ what changes tonight
@dataclass(frozen=True)
class DiffBase:
    """An export the graph may hold: its folder, its headers, and why it counts (loaded, attempted)."""

    role: str
    ref: gm.ExportRef
    headers: dict[str, list[str]]


def diff_bases(output: str, loaded_marker: str | None) -> tuple[list[DiffBase], str | None]:
    """The exports tonight's diff is taken against, or ``[]`` and why tonight is a full load.

    The export the loaded marker names (when it still holds the manifest that was loaded) and every
    export whose load started since and did not finish (the in-progress marker): the
    graph may hold part of each, so what they added is removed and what they changed is loaded again.
    """
    loaded_uri = loaded_marker or gm.loaded_marker_uri(output)
    loaded = gm.read_marker(loaded_uri)
    if loaded is None:
        return [], f"no loaded marker at {loaded_uri}"
    refs = [("loaded", loaded)]
    for attempted in gm.read_attempts(gm.loading_marker_uri(loaded_uri)):
        if not attempted.is_same(loaded):
            refs.append(("attempted", attempted))
    bases = []
    for role, ref in refs:
        if not gm.is_current(ref):
            return [], f"the {role} export {ref.export} is gone or no longer holds the manifest {role}"
        manifest = storage.read_json(storage.join(storage.resolve(ref.export), gremlin.MANIFEST_NAME))
        bases.append(DiffBase(role=role, ref=ref, headers=manifest["headers"]))
    return bases, None


def read_export_csv(spark: SparkSession, uri: str, header: Sequence[str]) -> DataFrame:
    """Gremlin CSV rows of one export folder, every column a string as written (blank: null)."""
    schema = T.StructType([T.StructField(name, T.StringType(), True) for name in header])
    return (
        spark.read.options(**gremlin.GREMLIN_CSV_WRITE_OPTIONS, multiLine="true")
        .schema(schema)
        .csv(storage.read_path(uri))  # a published export on S3: its current version
    )


def write_diff_part(
    rows_df: DataFrame, root_uri: str, folder: str, header: Sequence[str], *, compression: str, slots: int
) -> list[dict[str, Any]]:
    """Write one part of the diff as Gremlin CSV (about ``slots`` files) and describe its files."""
    uri = storage.join(root_uri, folder)
    write_csv(
        rows_df.select(*header),
        uri,
        compression=compression,
        sizing=Sizing(bytes_per_row=None, rows_per_file=0, partitions=slots),
    )
    remove_non_data_files(uri, keep=DATA_FILE_PATTERN)
    return describe_files(root_uri, folder, compression, header)


def write_diff(
    spark: SparkSession,
    export_uri: str,
    headers: dict[str, list[str]],
    bases: Sequence[DiffBase],
    *,
    compression: str,
    out_uri: str | None = None,
) -> dict[str, Any]:
    """Write ``<out>/diff/`` (``out_uri`` defaults to the export) against ``bases`` (at least one);
    returns its counts and files (paths relative to ``out_uri``).

    Per kind (vertices, edges): ``diff/<kind>/`` the rows to load (tonight's header),
    ``diff/remove/<kind>/`` the ids to remove, ``diff/clear/<kind>/`` the properties to clear. Counts of
    added, changed and unchanged are against the loaded export (the first base).
    """
    counts: dict[str, dict[str, int]] = {}
    files: list[dict[str, Any]] = []
    for kind in (gremlin.VERTICES_DIR, gremlin.EDGES_DIR):
        counts[kind], kind_files = write_diff_kind(
            spark, export_uri, kind, list(headers[kind]), bases, compression=compression,
            out_uri=out_uri or export_uri,
        )
        files += kind_files
    return {"counts": counts, "files": files}


def write_diff_kind(
    spark: SparkSession, export_uri: str, kind: str, header: list[str], bases: Sequence[DiffBase], *,
    compression: str, out_uri: str,
) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """The diff of one kind (vertices or edges): its counts and the files of its three parts."""
    columns = [*header]
    for base in bases:
        columns += [column for column in base.headers[kind] if column not in columns]
    # Each export's CSVs are parsed and hashed once, and tonight is joined with each base once; the
    # comparisons are kept for the counts and the three outputs.
    current_df = read_export_csv(spark, storage.join(export_uri, kind), header).transform(
        gd.with_property_hash, columns
    )
    comparisons = [
        current_df.transform(
            gd.compare_with_base,
            read_export_csv(spark, storage.join(b.ref.export, kind), b.headers[kind]).transform(
                gd.with_property_hash, columns
            ),
            columns,
        ).cache()
        for b in bases
    ]
    load_folder = storage.join(gremlin.DIFF_DIR, kind)
    remove_folder = storage.join(gremlin.DIFF_DIR, gremlin.DIFF_REMOVE_DIR, kind)
    clear_folder = storage.join(gremlin.DIFF_DIR, gremlin.DIFF_CLEAR_DIR, kind)
    slots = task_slots(spark)
    try:
        by_kind = {row[gd.KIND]: row["count"] for row in comparisons[0].groupBy(gd.KIND).count().collect()}
        parts = (
            (load_folder, gd.filter_rows_to_load(comparisons, header), header),
            (remove_folder, gd.ids_to_remove(comparisons), list(gremlin.REMOVE_HEADER)),
            (clear_folder, gd.properties_to_clear(comparisons), list(gremlin.CLEAR_HEADER)),
        )
        described = {
            folder: write_diff_part(
                rows_df, out_uri, folder, part_header, compression=compression, slots=slots
            )
            for folder, rows_df, part_header in parts
        }
    finally:
        for df in comparisons:
            df.unpersist()
    rows = {folder: sum(item["rows"] for item in items) for folder, items in described.items()}
    counts = {
        gd.ADDED: by_kind.get(gd.ADDED, 0),
        gd.CHANGED: by_kind.get(gd.CHANGED, 0),
        gd.UNCHANGED: by_kind.get(gd.UNCHANGED, 0),
        "to_load": rows[load_folder],
        "to_remove": rows[remove_folder],
        "properties_to_clear": rows[clear_folder],
    }
    return counts, [item for items in described.values() for item in items]


def stage_diff(
    spark: SparkSession, spec: ExportSpec, staged: str, headers: dict[str, list[str]]
) -> dict[str, Any]:
    """The manifest's ``diff`` section, its files written under ``<staged>/diff/`` unless a full load."""
    bases, reason = diff_bases(spec.output, spec.loaded_marker)
    if not bases:
        LOG.warning("full load tonight: %s", reason)
        return {"is_full_load": True, "reason": reason, "bases": [], "counts": None, "files": []}
    diff = write_diff(spark, staged, headers, bases, compression=spec.compression)
    LOG.info("diff against %s: %s", [base.ref.export for base in bases], diff["counts"])
    return {
        "is_full_load": False,
        "reason": None,
        "bases": [{"role": base.role, **base.ref.as_dict()} for base in bases],
        **diff,
    }


# ------------------------------------------------------------------------------------------------- main
def in_job_group(
    spark: SparkSession, group: str, description: str, fn: Any, *fn_args: Any, **fn_kwargs: Any
) -> Any:
    """Run ``fn`` (from a worker thread) with its Spark jobs in a job group the caller can cancel."""
    spark.sparkContext.setJobGroup(group, f"export: {description}", interruptOnCancel=True)
    started = time.perf_counter()
    try:
        return fn(*fn_args, **fn_kwargs)
    finally:
        LOG.info("%s (background): %.2fs", description, time.perf_counter() - started)


# ---------------------------------------------------------------------------------- edges from Arrow tasks
@dataclass
class EdgeOutcome:
    """What the edge write produced: input rows, files, rejects by reason, repeated keys, sizing."""

    edges_in: int
    files: list[dict[str, Any]]
    rejected: dict[str, int]
    repeated_keys: int
    sizing: Sizing


def edge_row_groups(uri: str) -> list[tuple[str, int, int]]:
    """``(file URI, row group, rows)`` of every edge Parquet file, in file order, from the footers.

    Raises:
        JobError: a file that is not readable Parquet (named).
    """

    def footer(file_uri: str) -> list[tuple[str, int, int]]:
        fs, path = storage.filesystem(file_uri)
        try:
            with fs.open_input_file(path) as handle:
                metadata = pq.ParquetFile(handle).metadata
        except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
            raise JobError(f"--edges: {file_uri} is not a readable Parquet file: {error}") from error
        return [
            (file_uri, index, metadata.row_group(index).num_rows) for index in range(metadata.num_row_groups)
        ]

    files = storage.list_files(uri)
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, max(1, len(files)))) as pool:
        return [group for groups in pool.map(footer, files) for group in groups]


def sample_edge_bytes_per_row(
    row_groups: list[tuple[str, int, int]], spec: ef.EdgeWriteSpec, pieces: ga.VertexPieces
) -> float | None:
    """Compressed bytes per written edge row, from the first :data:`SIZING_SAMPLE_ROWS` input rows
    formatted and compressed exactly as the write tasks do (None: no good row among them)."""
    first = next(((uri, group, rows) for uri, group, rows in row_groups if rows), None)
    if first is None:
        return None
    task = ef.EdgeTask(index=0, parts=((first[0], first[1], 0, first[2]),), rows=first[2])
    batch = next(ef.read_task_batches(task, spec.columns, batch_rows=SIZING_SAMPLE_ROWS))
    checked = ga.check_batch(batch, pieces.skus)
    good = batch.filter(pa.array(checked.reasons == ga.GOOD))
    if good.num_rows == 0:
        return None
    records = ga.format_edges(
        good, checked.from_index, checked.to_index, pieces, has_rank=spec.has_rank, tail=spec.tail
    )
    return max(len(ef.compressed(bytes(records), spec.compression)) / good.num_rows, 1.0)


def plan_edge_tasks(
    row_groups: list[tuple[str, int, int]], *, bytes_per_row: float | None, slots: int
) -> list[ef.EdgeTask]:
    """Cut the input rows into write tasks of equal rows (to one row), contiguous, in input order.

    Whole rounds of tasks (a multiple of ``slots``), as few as keep each task's rows under
    ``KEYS_PER_RANGE`` (a task holds its (from, to) keys, 8 bytes a row, until it ends); a small input
    (no ``bytes_per_row`` estimate) is one task. A row group may be split between two tasks, so the
    slots finish together whatever the row groups' sizes. A task writes files of ``rows_per_file`` rows
    (about ``--target-file-mb`` each): file sizes do not depend on the task count. Few, large tasks: a
    Python task costs about 0.14 s to start and finish here (a one-off side measurement of Spark's stage
    timeline: 8 tasks of 625,000 edges spent 1.1 of their 4.1 task-seconds outside their own work).
    """
    groups = [item for item in row_groups if item[2]]
    total = sum(rows for _, _, rows in groups)
    if not groups:
        return []
    if bytes_per_row is None or total <= SIZING_SAMPLE_ROWS:
        count = 1
    else:
        count = max(slots, math.ceil(total / KEYS_PER_RANGE))
        count = slots * math.ceil(count / slots)
    bounds = [total * index // count for index in range(count + 1)]
    assigned: list[list[tuple[str, int, int, int]]] = [[] for _ in range(count)]
    start = 0
    for uri, group, rows in groups:
        end = start + rows
        first_task = bisect.bisect_right(bounds, start) - 1
        for index in range(first_task, count):
            if bounds[index] >= end:
                break
            low, high = max(start, bounds[index]), min(end, bounds[index + 1])
            if low < high:
                assigned[index].append((uri, group, low - start, high - start))
        start = end
    return [
        ef.EdgeTask(index=index, parts=tuple(parts), rows=sum(high - low for _, _, low, high in parts))
        for index, parts in enumerate(assigned)
    ]


def edge_write_spec(
    spark: SparkSession, spec: ExportSpec, staged: str, row_groups: list[tuple[str, int, int]], *,
    skus: list[str], contract_df: DataFrame, has_rank: bool,
) -> tuple[ef.EdgeWriteSpec, ga.VertexPieces, float | None]:
    """What every edge write task is told, the vertex pieces it formats with, and the sampled
    compressed bytes per row (None: a small input, one file)."""
    edges_in = sum(rows for _, _, rows in row_groups)
    pieces = ga.vertex_pieces(pa.array(skus, pa.string()), label=spec.edge_label)
    reject_schema = to_arrow_schema(contract_df.schema).append(pa.field(gremlin.REASON, pa.string()))
    write_spec = ef.EdgeWriteSpec(
        edges_uri=storage.join(staged, gremlin.EDGES_DIR),
        rejects_uri=storage.join(staged, gremlin.REJECTS_DIR, gremlin.EDGES_DIR),
        compression=spec.compression,
        rows_per_file=max(edges_in, 1),
        columns=tuple(contract_df.columns),
        has_rank=has_rank,
        header=",".join(gremlin.EDGE_HEADER_TOPK if has_rank else gremlin.EDGE_HEADER_ALL_PAIRS),
        tail=ga.record_tail(spec.metric, similarity.HIGHER_IS_CLOSER[spec.metric]),
        reject_schema=reject_schema,
        key_ranges=max(task_slots(spark), math.ceil(edges_in / KEYS_PER_RANGE)),
        vertices=max(len(skus), 1),
    )
    bytes_per_row = (
        sample_edge_bytes_per_row(row_groups, write_spec, pieces) if edges_in > SIZING_SAMPLE_ROWS else None
    )
    if bytes_per_row is not None:
        rows_per_file = max(1, int(spec.target_bytes / bytes_per_row))
        write_spec = dataclasses.replace(write_spec, rows_per_file=rows_per_file)
    return write_spec, pieces, bytes_per_row


def run_edge_tasks(
    spark: SparkSession, tasks: list[ef.EdgeTask], write_spec: ef.EdgeWriteSpec, pieces: ga.VertexPieces
) -> list[tuple[str, Any]]:
    """Run the edge write tasks and the repeated-key count (one Spark job); their ``(kind, payload)``."""
    if not tasks:
        return []
    context = spark.sparkContext
    pieces_broadcast = context.broadcast(pieces)
    try:
        return (
            context.parallelize(tasks, len(tasks))
            .mapPartitions(
                functools.partial(ef.write_edge_partition, spec=write_spec, pieces=pieces_broadcast)
            )
            .partitionBy(write_spec.key_ranges, lambda key_range: key_range)
            .mapPartitions(ef.count_repeats)
            .collect()
        )
    finally:
        pieces_broadcast.destroy()


def edge_files_written(stats: list[dict[str, Any]], write_spec: ef.EdgeWriteSpec) -> list[dict[str, Any]]:
    """The manifest entries of the files the tasks wrote; none at all: one file with the header, so
    every export has edge files."""
    items = [item for task_stats in stats for item in task_stats["files"]]
    if not items:
        name = ef.file_name(0, 0, write_spec.compression)
        uri = storage.join(write_spec.edges_uri, name)
        writer = ef.CsvFileWriter(uri, write_spec.compression, write_spec.header)
        items = [{**writer.close(), "rows": 0}]
    return [
        {"path": f"{gremlin.EDGES_DIR}/{item['name']}", "rows": item["rows"], "bytes": item["bytes"],
         "sha256": item["sha256"]}
        for item in items
    ]


def write_edges_arrow(
    spark: SparkSession, spec: ExportSpec, staged: str, *, skus: list[str], contract_df: DataFrame,
    has_rank: bool,
) -> EdgeOutcome:
    """Check and write every edge from Python tasks (:mod:`udfs.gremlin_edge_files`); one Spark job.

    Each task reads row groups of the edge Parquet, rejects rows (reasons as in
    :func:`tg.with_edge_reject_reason`, the rows to ``_rejects/edges/part-<task>.parquet``), writes the
    good ones as CSV files of ``rows_per_file`` rows with their rows, bytes and sha256 taken as written,
    and hands its (from, to) keys, sorted and cut by key range, to a second step that counts the keys
    seen more than once. ``repeated_keys`` > 0 means some pair repeats: the caller then redoes the edges
    on the Spark path, which picks the edge to keep.
    """
    row_groups = edge_row_groups(spec.edges)
    edges_in = sum(rows for _, _, rows in row_groups)
    write_spec, pieces, bytes_per_row = edge_write_spec(
        spark, spec, staged, row_groups, skus=skus, contract_df=contract_df, has_rank=has_rank
    )
    tasks = plan_edge_tasks(row_groups, bytes_per_row=bytes_per_row, slots=task_slots(spark))
    LOG.info(
        "edges: %d rows in, %d write tasks, %d rows per file", edges_in, len(tasks), write_spec.rows_per_file
    )
    results = run_edge_tasks(spark, tasks, write_spec, pieces)
    stats = sorted((payload for kind, payload in results if kind == ef.STATS), key=lambda item: item["task"])
    rejected: dict[str, int] = {}
    for task_stats in stats:
        for reason, count in task_stats["rejected"].items():
            rejected[reason] = rejected.get(reason, 0) + count
    rows_read = sum(task_stats["rows_in"] for task_stats in stats)
    if rows_read != edges_in or len(stats) != len(tasks):
        raise RuntimeError(
            f"edge tasks read {rows_read} rows in {len(stats)} tasks, expected {edges_in} in {len(tasks)}"
        )
    LOG.info(
        "edge tasks: seconds %s, CPU seconds %s",
        [task_stats["seconds"] for task_stats in stats],
        [task_stats["cpu_seconds"] for task_stats in stats],
    )
    sizing = Sizing(
        bytes_per_row=None if bytes_per_row is None else round(bytes_per_row, 2),
        rows_per_file=write_spec.rows_per_file,
        partitions=len(tasks),
    )
    return EdgeOutcome(
        edges_in=edges_in,
        files=edge_files_written(stats, write_spec),
        rejected=rejected,
        repeated_keys=sum(payload for kind, payload in results if kind == ef.REPEATS),
        sizing=sizing,
    )


@dataclass
class VertexOutcome:
    """What the vertex side produced: catalog rows per reason (None = vertices), NULs stripped, files."""

    counts: dict[str | None, int]
    nul_stripped: int
    with_status: bool
    files: list[dict[str, Any]]
    sizing: Sizing

    def left_out(self) -> tuple[dict[str, int], dict[str, int]]:
        """Catalog rows rejected and dropped, by ``vertex.<reason>``."""
        return split_reasons({k: v for k, v in self.counts.items() if k is not None}, VERTEX_PREFIX)


def tag_catalog(
    spark: SparkSession, spec: ExportSpec, catalog_df: DataFrame
) -> tuple[pa.Table, T.StructType]:
    """Every catalog row with its reject reason (and embedding status), fetched through Arrow (one
    Spark job), and the reject columns' Spark schema."""
    tagged_v_df = catalog_df.transform(tg.with_vertex_reject_reason).transform(tg.mark_duplicate_skus)
    if spec.embeddings is not None:
        tagged_v_df = tagged_v_df.transform(
            tg.with_embedding_status, read_embedding_status(spark, spec.embeddings)
        )
    tagged_v_df = tagged_v_df.drop(gremlin.ROW_ORDER)
    schema = to_arrow_schema(tagged_v_df.schema)
    tagged = pa.Table.from_pandas(tagged_v_df.toPandas(), schema=schema, preserve_index=False)
    return tagged, tagged_v_df.select(*VERTEX_REJECT_COLUMNS).schema


def write_vertex_files(spec: ExportSpec, staged: str, good: pa.Table) -> tuple[list[dict[str, Any]], Sizing]:
    """Format, compress and hash the vertex rows into CSV files of about ``--target-file-mb``."""
    with_status = spec.embeddings is not None
    property_columns = (*catalog.CATALOG_COLUMNS, *((embeddings.STATUS,) if with_status else ()))
    records = ga.format_vertices(
        good, label=spec.vertex_label, property_columns=property_columns, sku=catalog.SKU
    )
    vertex_header = ",".join(gremlin.VERTEX_HEADER_WITH_STATUS if with_status else gremlin.VERTEX_HEADER)
    bytes_per_row = None
    rows_per_file = max(len(records), 1)
    if len(records) > SIZING_SAMPLE_ROWS:
        sample = bytes(ga.record_bytes(records.slice(0, SIZING_SAMPLE_ROWS)))
        bytes_per_row = max(len(ef.compressed(sample, spec.compression)) / SIZING_SAMPLE_ROWS, 1.0)
        rows_per_file = max(1, int(spec.target_bytes / bytes_per_row))
    vertices_uri = storage.join(staged, gremlin.VERTICES_DIR)
    files: list[dict[str, Any]] = []
    for start in range(0, max(len(records), 1), rows_per_file):
        chunk = records.slice(start, rows_per_file)
        name = ef.file_name(0, len(files), spec.compression)
        writer = ef.CsvFileWriter(storage.join(vertices_uri, name), spec.compression, vertex_header)
        writer.write(ga.record_bytes(chunk), len(chunk))
        item = writer.close()
        described = {k: item[k] for k in ("rows", "bytes", "sha256")}
        files.append(described | {"path": f"{gremlin.VERTICES_DIR}/{name}"})
    sizing = Sizing(
        bytes_per_row=None if bytes_per_row is None else round(bytes_per_row, 2),
        rows_per_file=rows_per_file,
        partitions=None,
    )
    return files, sizing


def stage_vertices(
    spark: SparkSession, spec: ExportSpec, staged: str, catalog_df: DataFrame
) -> VertexOutcome:
    """Tag the catalog rows (one Spark job), then write the vertex CSVs and the catalog quarantine.

    The catalog is small (tens of thousands of products): its tagged rows come to this process once,
    through Arrow, and are counted, formatted (:func:`ga.format_vertices`, the rows of
    :func:`tg.to_vertex_rows`), compressed and hashed here, instead of the several small Spark jobs
    (cache, count, sample, write, read back) that cost about 3 CPU-seconds whatever the edge count.

    Raises:
        JobError: no catalog row can be a vertex.
    """
    tagged, reject_schema = tag_catalog(spark, spec, catalog_df)
    reasons = tagged.column(gremlin.REASON).to_pylist()
    counts: dict[str | None, int] = {}
    for reason in reasons:
        counts[reason] = counts.get(reason, 0) + 1
    if counts.get(None, 0) == 0:
        raise JobError(f"--catalog {spec.catalog}: no product with a usable sku ({len(reasons)} rows read)")
    is_good = pc.is_null(tagged.column(gremlin.REASON))
    good = tagged.filter(is_good)
    has_nul = np.zeros(good.num_rows, dtype=bool)
    for column in catalog.CATALOG_COLUMNS:
        found = pc.fill_null(pc.match_substring(good.column(column), tg.NUL), False)
        has_nul |= np.asarray(found.to_numpy(), dtype=bool)
    files, sizing = write_vertex_files(spec, staged, good)
    rejects_uri = storage.join(staged, gremlin.REJECTS_DIR, gremlin.VERTICES_DIR)
    rejects = tagged.filter(pc.invert(is_good)).select(VERTEX_REJECT_COLUMNS)
    if rejects.num_rows:
        storage.write_parquet(rejects, storage.join(rejects_uri, "part-00000.parquet"))
    else:
        write_empty_parquet(rejects_uri, reject_schema)
    return VertexOutcome(
        counts=counts, nul_stripped=int(has_nul.sum()), with_status=spec.embeddings is not None, files=files,
        sizing=sizing,
    )


def write_empty_parquet(uri: str, schema: T.StructType) -> None:
    """An empty Parquet file with ``schema`` under the folder ``uri``, written without a Spark job."""
    from pyspark.sql.pandas.types import to_arrow_schema

    storage.write_parquet(to_arrow_schema(schema).empty_table(), storage.join(uri, EMPTY_PARQUET_NAME))


@dataclass
class EdgeStage:
    """The staged edges: files, rejects by reason, sizing, header, and what the rewrite path did."""

    edges_in: int
    files: list[dict[str, Any]]
    reject_counts: dict[str | None, int]
    sizing: Sizing
    has_rank: bool
    duplicate_keys: int = 0
    removed: list[str] = dataclasses.field(default_factory=list)

    @property
    def header(self) -> tuple[str, ...]:
        return tuple(gremlin.EDGE_HEADER_TOPK if self.has_rank else gremlin.EDGE_HEADER_ALL_PAIRS)


@dataclass(frozen=True)
class ExportResult:
    """A staged, checked export: its manifest, its funnel and the report's details."""

    manifest: dict[str, Any]
    funnel: Funnel
    details: dict[str, Any]


def rewrite_duplicate_edges(
    spark: SparkSession, spec: ExportSpec, staged: str, catalog_df: DataFrame, contract_df: DataFrame,
    edges: EdgeStage,
) -> None:
    """Rare: some (from, to) repeats. The Spark path finds those keys, keeps the best edge of each, and
    writes every edge again; the files and rejects of the first write are replaced (``edges`` updated)."""
    edges_uri = storage.join(staged, gremlin.EDGES_DIR)
    edge_rejects_uri = storage.join(staged, gremlin.REJECTS_DIR, gremlin.EDGES_DIR)
    storage.remove(edges_uri)
    storage.remove(edge_rejects_uri)
    higher_is_closer = similarity.HIGHER_IS_CLOSER[spec.metric]
    edge_format = {"label": spec.edge_label, "metric": spec.metric, "higher_is_closer": higher_is_closer}
    tagged_e_df = contract_df.transform(tg.with_edge_key).transform(
        tg.with_edge_reject_reason, catalog_df.transform(tg.vertex_skus)
    )
    duplicate_keys_df = tagged_e_df.transform(tg.duplicate_edge_keys)
    edges.duplicate_keys = duplicate_keys_df.count()
    LOG.info("%d (src, dst) keys appear more than once: comparing those edges", edges.duplicate_keys)
    tagged_e_df = tagged_e_df.transform(
        tg.mark_duplicate_edges,
        duplicate_keys_df,
        higher_is_closer=higher_is_closer,
        broadcast_keys=edges.duplicate_keys <= MAX_BROADCAST_KEYS,
    )
    edge_rows_df = tagged_e_df.transform(tg.to_edge_rows, **edge_format)
    untagged_rows_df = contract_df.withColumn(gremlin.REASON, F.lit(None).cast("string")).transform(
        tg.to_edge_rows, **edge_format
    )
    edges.sizing = plan_sizing(
        edge_rows_df, total_rows=edges.edges_in, target_bytes=spec.target_bytes, compression=spec.compression,
        sample_df=untagged_rows_df, slots=task_slots(spark),
    )
    write_csv(edge_rows_df, edges_uri, compression=spec.compression, sizing=edges.sizing)
    edges.removed = remove_non_data_files(edges_uri, keep=DATA_FILE_PATTERN)
    edges.files = describe_files(staged, gremlin.EDGES_DIR, spec.compression, edges.header)
    rejects_df = tagged_e_df.drop(gremlin.EDGE_KEY).filter(F.col(gremlin.REASON).isNotNull())
    rejects_df.write.mode("overwrite").parquet(storage.spark_path(edge_rejects_uri))
    edges.reject_counts = counts_by_reason(spark.read.parquet(storage.spark_path(edge_rejects_uri)))


def check_edge_files(staged: str, contract_df: DataFrame, edges: EdgeStage) -> None:
    """The files on disk must be exactly those the tasks described (a dead attempt leaves at most a
    hidden temporary file, removed here); nothing quarantined: an empty file keeps the reject schema."""
    edges_uri = storage.join(staged, gremlin.EDGES_DIR)
    edges.removed = remove_non_data_files(edges_uri, keep=DATA_FILE_PATTERN)
    on_disk = sorted(posixpath.relpath(uri, staged) for uri in all_files(edges_uri))
    if on_disk != sorted(item["path"] for item in edges.files):
        raise RuntimeError(f"edge files on disk {on_disk} are not those written {edges.files}")
    if not edges.reject_counts:
        write_empty_parquet(
            storage.join(staged, gremlin.REJECTS_DIR, gremlin.EDGES_DIR),
            contract_df.withColumn(gremlin.REASON, F.lit(None).cast("string")).schema,
        )


def stage_edges(
    spark: SparkSession, spec: ExportSpec, run: StagedRun, group: str, catalog_df: DataFrame
) -> EdgeStage:
    """Write and check the edge files against the skus that become vertices (the catalog rows without a
    reason: the same set whichever duplicate row wins, so the edges need not wait for the duplicate-sku
    comparison; tens of thousands of strings, fetched through Arrow while the vertex job reads the
    catalog beside). Edges: possibly tens of millions of rows; nothing is cached."""
    staged = run.staged()
    contract_df, has_rank = read_edges(spark, spec.edges)  # Spark reads only the schema here
    skus_df = catalog_df.transform(tg.vertex_skus, is_distinct=False)
    skus = sorted(set(in_job_group(spark, group, "vertex skus", skus_df.toPandas)[catalog.SKU]))
    run.lap("vertex_skus")
    outcome = in_job_group(
        spark, group, "edge files", write_edges_arrow, spark, spec, staged,
        skus=skus, contract_df=contract_df, has_rank=has_rank,
    )
    edges = EdgeStage(outcome.edges_in, outcome.files, dict(outcome.rejected), outcome.sizing, has_rank)
    run.lap("edge_write")
    LOG.info("edges: %d rows in; %d repeated (from, to) keys", edges.edges_in, outcome.repeated_keys)
    if outcome.repeated_keys:
        rewrite_duplicate_edges(spark, spec, staged, catalog_df, contract_df, edges)
        run.lap("edge_rewrite_after_duplicates")
    else:
        check_edge_files(staged, contract_df, edges)
    LOG.info("edges staged: %s written; rejects by reason %s", totals(edges.files), edges.reject_counts)
    run.lap("edge_rejects")
    return edges


def stage_graph(spark: SparkSession, spec: ExportSpec, run: StagedRun) -> tuple[VertexOutcome, EdgeStage]:
    """Stage the vertex and the edge files: the catalog checks and vertex files run in a worker thread
    (Spark jobs, in a job group cancelled if the edges fail) while the edges are written by Python tasks."""
    staged = run.staged()
    # Vertices: the catalog is small (tens of thousands of rows).
    catalog_df = read_catalog(spark, spec.catalog).transform(tg.with_row_order)
    group = f"{APP_NAME}-{posixpath.basename(posixpath.dirname(staged.rstrip('/')))}"
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="export")
    try:
        vertex_phase = pool.submit(
            in_job_group, spark, group, "catalog checks and vertex files", stage_vertices,
            spark, spec, staged, catalog_df,
        )
        edges = stage_edges(spark, spec, run, group, catalog_df)
        vertices = vertex_phase.result()
        vertices_uri = storage.join(staged, gremlin.VERTICES_DIR)
        edges.removed += remove_non_data_files(vertices_uri, keep=DATA_FILE_PATTERN)
        run.lap("vertex_files_wait")
    except BaseException:
        spark.sparkContext.cancelJobGroup(group)  # do not wait for background work whose result is moot
        raise
    finally:
        pool.shutdown(wait=True)
    vertices_good = vertices.counts[None]
    LOG.info(
        "vertices staged: %d written, %d rejected or dropped", vertices_good,
        sum(vertices.counts.values()) - vertices_good,
    )
    return vertices, edges


def check_files(spec: ExportSpec, vertices: VertexOutcome, edges: EdgeStage) -> None:
    """Every data file has the compression's suffix and the vertex files hold every good vertex."""
    suffix = gremlin.FILE_SUFFIX[spec.compression]
    for item in vertices.files + edges.files:
        if not item["path"].endswith(suffix):
            raise RuntimeError(f"{item['path']}: expected the suffix {suffix}")
    vertex_rows = totals(vertices.files)["rows"]
    if vertex_rows != vertices.counts[None]:
        raise RuntimeError(f"vertex files hold {vertex_rows} rows, expected {vertices.counts[None]}")


def build_manifest(spec: ExportSpec, vertices: VertexOutcome, edges: EdgeStage) -> dict[str, Any]:
    """The export's manifest (without its diff section): format, headers, files and totals."""
    vertex_header = gremlin.VERTEX_HEADER_WITH_STATUS if vertices.with_status else gremlin.VERTEX_HEADER
    vertex_totals, edge_totals = totals(vertices.files), totals(edges.files)
    return {
        "format": "neptune-gremlin-csv",
        "run_date": spec.run_date,
        "compression": spec.compression,
        "vertex_label": spec.vertex_label,
        "edge_label": spec.edge_label,
        "metric": spec.metric,
        "higher_is_closer": similarity.HIGHER_IS_CLOSER[spec.metric],
        "headers": {gremlin.VERTICES_DIR: list(vertex_header), gremlin.EDGES_DIR: list(edges.header)},
        "files": vertices.files + edges.files,
        "totals": {
            gremlin.VERTICES_DIR: vertex_totals,
            gremlin.EDGES_DIR: edge_totals,
            "files": vertex_totals["files"] + edge_totals["files"],
            "rows": vertex_totals["rows"] + edge_totals["rows"],
            "bytes": vertex_totals["bytes"] + edge_totals["bytes"],
        },
    }


def export_details(
    vertices: VertexOutcome, edges: EdgeStage, manifest: dict[str, Any], removed: int
) -> dict[str, Any]:
    """The report's details of the vertex and edge sides and the diff."""
    v_rejected, v_dropped = vertices.left_out()
    e_rejected, e_dropped = split_reasons(edges.reject_counts, EDGE_PREFIX)
    return {
        "vertices": {
            "rows_in": sum(vertices.counts.values()),
            "rows_out": manifest["totals"][gremlin.VERTICES_DIR]["rows"],
            "rejected": v_rejected,
            "dropped": v_dropped,
            "vertices_with_nul_stripped": vertices.nul_stripped,
            "bytes_per_row": vertices.sizing.bytes_per_row,
            "rows_per_file": vertices.sizing.rows_per_file,
        },
        "edges": {
            "rows_in": edges.edges_in,
            "rows_out": manifest["totals"][gremlin.EDGES_DIR]["rows"],
            "rejected": e_rejected,
            "dropped": e_dropped,
            "duplicate_keys": edges.duplicate_keys,
            "has_rank": edges.has_rank,
            "bytes_per_row": edges.sizing.bytes_per_row,
            "rows_per_file": edges.sizing.rows_per_file,
        },
        "diff": {key: manifest["diff"][key] for key in ("is_full_load", "reason", "bases", "counts")},
        "non_data_files_removed": removed,
    }


def export_funnel(vertices: VertexOutcome, edges: EdgeStage) -> Funnel:
    """Catalog rows and edges in; vertex and edge rows out; the rest by reason (``vertex.``/``edge.``)."""
    v_rejected, v_dropped = vertices.left_out()
    e_rejected, e_dropped = split_reasons(edges.reject_counts, EDGE_PREFIX)
    return Funnel(
        rows_in=sum(vertices.counts.values()) + edges.edges_in,
        rows_out=totals(vertices.files)["rows"] + totals(edges.files)["rows"],
        rejected_by_reason={**v_rejected, **e_rejected},
        dropped_by_reason={**v_dropped, **e_dropped},
    )


def export(spark: SparkSession, spec: ExportSpec, run: StagedRun) -> ExportResult:
    """Write the whole export to the run's staged folder and check it; nothing is published here.

    The tasks take every file's rows, bytes and sha256 as they write it and count repeated (from, to)
    keys exactly; in the rare run where a pair repeats, the edges are redone on the Spark path, which
    keeps the best edge of each pair.
    """
    staged = run.staged()
    vertices, edges = stage_graph(spark, spec, run)
    # Staged: now make it loader-clean.
    removed = edges.removed + remove_non_data_files(storage.join(staged, gremlin.REJECTS_DIR), keep=None)
    check_files(spec, vertices, edges)
    funnel = export_funnel(vertices, edges)
    check_funnel(STAGE, funnel)  # refuse to publish an export that lost or invented rows
    manifest = build_manifest(spec, vertices, edges)
    manifest["diff"] = stage_diff(spark, spec, staged, manifest["headers"])
    run.lap("diff")
    storage.write_json(storage.join(staged, gremlin.MANIFEST_NAME), manifest)
    run.lap("manifest")
    return ExportResult(manifest, funnel, export_details(vertices, edges, manifest, len(removed)))


@dataclass(frozen=True)
class GateSample:
    """The rows the quality gate checks: every vertex file whole, and of the edges every row or the first
    ``edge_rows_per_file`` rows of every edge file (a gzip head is read without inflating the rest)."""

    vertex_files: tuple[str, ...]
    vertex_rows: int
    vertices_uri: str
    edges_uri: str
    edge_files: tuple[str, ...]
    edge_rows_per_file: int | None  # None: every edge row
    note: dict[str, Any]


def gate_sample(staged: str, manifest: dict[str, Any], *, edge_rows: int) -> GateSample:
    """Which rows the gate reads: every edge row when ``edge_rows`` is 0 or covers them all, else
    ``ceil(edge_rows / files)`` from the head of every edge file."""
    def files_of(kind: str) -> list[dict[str, Any]]:
        return [item for item in manifest["files"] if item["path"].startswith(f"{kind}/")]

    edge_files = files_of(gremlin.EDGES_DIR)
    total = manifest["totals"][gremlin.EDGES_DIR]["rows"]
    sample = GateSample(
        vertex_files=tuple(storage.join(staged, item["path"]) for item in files_of(gremlin.VERTICES_DIR)),
        vertex_rows=manifest["totals"][gremlin.VERTICES_DIR]["rows"],
        vertices_uri=storage.join(staged, gremlin.VERTICES_DIR),
        edges_uri=storage.join(staged, gremlin.EDGES_DIR),
        edge_files=tuple(storage.join(staged, item["path"]) for item in edge_files),
        edge_rows_per_file=None,
        note={"edge_rows_checked": total, "edge_sample": "every row"},
    )
    if edge_rows == 0 or edge_rows >= total:
        return sample
    per_file = math.ceil(edge_rows / len(edge_files))
    rows_checked = sum(min(per_file, item["rows"]) for item in edge_files)
    note = {"edge_rows_checked": rows_checked, "edge_sample": f"first {per_file} rows of each edge file"}
    return dataclasses.replace(sample, edge_rows_per_file=per_file, note=note)


def gate_frames(
    spark: SparkSession, sample: GateSample, headers: dict[str, list[str]]
) -> dict[str, DataFrame]:
    """The sampled rows as Spark's CSV reader reads them: the columns are the header the job has checked
    in every file; every value is read as a string."""
    reader = spark.read.options(**gremlin.GREMLIN_CSV_WRITE_OPTIONS, multiLine="true")

    def read(uri: str, kind: str) -> DataFrame:
        schema = T.StructType([T.StructField(name, T.StringType(), True) for name in headers[kind]])
        return reader.schema(schema).csv(storage.spark_path(uri))

    vertices_df = read(sample.vertices_uri, gremlin.VERTICES_DIR)
    if sample.edge_rows_per_file is None:
        edges_df = read(sample.edges_uri, gremlin.EDGES_DIR)
    else:
        heads = [read(uri, gremlin.EDGES_DIR).limit(sample.edge_rows_per_file) for uri in sample.edge_files]
        edges_df = functools.reduce(DataFrame.unionByName, heads)
    return {GREMLIN_VERTICES: vertices_df, GREMLIN_EDGES: edges_df}


class NotCanonicalCsvError(ValueError):
    """The text read is not exactly the CSV the export writes of the values read: Spark's reader decides."""


READ_CHUNK_BYTES = 4 * 2**20


def _parse_csv(data: bytes, header: Sequence[str]) -> pa.Table:
    """Every record of ``data`` after its first line (the header), as ``header``'s columns, every value a
    string, a blank field (quoted or not) null."""
    return pacsv.read_csv(
        pa.BufferReader(data),
        read_options=pacsv.ReadOptions(
            use_threads=False, block_size=len(data) + 1, skip_rows=1, column_names=list(header)
        ),
        parse_options=pacsv.ParseOptions(
            delimiter=",", quote_char='"', double_quote=True, escape_char=False, newlines_in_values=True
        ),
        convert_options=pacsv.ConvertOptions(
            column_types=dict.fromkeys(header, pa.string()),
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
        ),
    )


def _canonical_text(header: Sequence[str], table: pa.Table) -> bytes:
    """The CSV the export writes of ``header`` and ``table``'s rows: fields quoted only when they must
    be (quotes doubled), a null blank, ``\n`` after every record."""
    head = ",".join(header) + "\n"  # as every file's header is written
    if table.num_rows == 0:
        return head.encode()
    fields = [ga.csv_field(pc.fill_null(column.combine_chunks(), "")) for column in table.columns]
    records = pc.binary_join_element_wise(*fields, ",")
    lines = pc.binary_join_element_wise(records, pa.array(["\n"] * table.num_rows, pa.string()), "")
    return head.encode() + bytes(ga.record_bytes(lines))


def read_csv_records(
    uri: str, header: Sequence[str], columns: Sequence[str], rows: int | None
) -> pa.Table:
    """The first ``rows`` records (every one when None) of a Gremlin CSV file, local or on S3, gzip or
    bzip2 by its name: ``columns`` of them, every value a string, a blank field null.

    Records are split by Arrow's CSV reader (RFC 4180), whose reading of quotes in odd places differs
    from Spark's (``"1"2`` is ``12`` to Arrow), so the values count only when the text read is, byte for
    byte, the CSV the export writes of them under ``header``: fields quoted only where they must be,
    ``\n`` line ends, no BOM, the header's columns in its order. Then Spark's reader reads the same
    values. Raises :class:`NotCanonicalCsvError` otherwise, ``pyarrow.ArrowInvalid`` when Arrow cannot split
    the records."""
    fs, path = storage.filesystem(uri)
    chunks: list[bytes] = []
    lines = 0
    size = READ_CHUNK_BYTES if rows is None else min(READ_CHUNK_BYTES, max(2**16, rows * 256))
    wanted = None if rows is None else rows + 2  # lines: the header, the rows, the start of one more
    with fs.open_input_stream(path, compression="detect") as stream:
        while True:
            chunk = stream.read(size)
            chunks.append(chunk)
            lines += chunk.count(b"\n")
            if chunk and (wanted is None or lines < wanted):
                continue  # not enough lines yet for the records wanted
            data = b"".join(chunks)
            whole = data
            if chunk and wanted is not None:  # parse the lines wanted: no record cut outside quotes
                ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == ord("\n"))
                whole = data[: int(ends[wanted - 1]) + 1]
            try:
                table = _parse_csv(whole, header)
            except pa.ArrowInvalid:
                if not chunk:
                    raise
                wanted = None if wanted is None else wanted + 1  # the cut is inside quotes: more lines
                continue
            if not chunk or (rows is not None and table.num_rows > rows):
                break  # past the end, or past a record after the last one wanted (that one is whole)
            assert rows is not None and wanted is not None  # every row read: only the end breaks out
            wanted += rows + 1 - table.num_rows  # quoted newlines: records span lines, take more
    head = table if rows is None else table.slice(0, rows)
    if not data.startswith(_canonical_text(header, head)):
        raise NotCanonicalCsvError(f"{uri}: the text is not the export's CSV of the values read")
    return head.select(list(columns))


def gate_checked(
    spark: SparkSession,
    run: StagedRun,
    sample: GateSample,
    headers: dict[str, list[str]],
    context: dict[str, Any],
) -> dict[str, Checked]:
    """What the gate checks: the sampled rows of the staged CSVs read with Arrow here on the driver and
    counted for their suites, with Spark's reading of the same rows (:func:`gate_frames`) to check when
    Arrow cannot read them or the counts do not prove a suite met."""
    frames: dict[str, DataFrame] = {}

    def spark_frame(dataset: str) -> Callable[[], DataFrame]:
        def frame() -> DataFrame:
            if not frames:
                frames.update(gate_frames(spark, sample, headers))
            return frames[dataset]

        return frame

    parts = {
        GREMLIN_VERTICES: (gremlin.VERTICES_DIR, sample.vertex_files, None, sample.vertex_rows),
        GREMLIN_EDGES: (
            gremlin.EDGES_DIR,
            sample.edge_files,
            sample.edge_rows_per_file,
            sample.note["edge_rows_checked"],
        ),
    }
    checked: dict[str, Checked] = {}
    for dataset, (kind, uris, rows, total) in parts.items():
        expectations = run.suite(dataset, context) or ()
        named = {column for spec in expectations for column in quality_pass.spec_columns(spec)}
        columns = [column for column in headers[kind] if column in named]
        if total > MAX_DRIVER_GATE_ROWS or not uris:
            checked[dataset] = spark_frame(dataset)()
            continue
        try:
            tables = [read_csv_records(uri, headers[kind], columns, rows) for uri in uris]
            table = pa.concat_tables(tables)
        except (pa.ArrowException, OSError, NotCanonicalCsvError) as err:
            LOG.info("export gate: %s not read with Arrow (%s); Spark reads it", dataset, err)
            checked[dataset] = spark_frame(dataset)()
            continue
        partial = quality_pass.table_partial(expectations, table)
        checked[dataset] = WrittenCounts(
            expectations, (partial,), staged=spark_frame(dataset), counted_by="driver"
        )
    return checked


def check_inputs(spec: ExportSpec) -> None:
    """Raise JobError naming the first input that does not exist."""
    for flag, uri in spec.inputs.items():
        if uri is not None and not storage.exists(uri):
            raise JobError(f"{flag}: nothing at {uri}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the export; returns the run report (``stage`` "export")."""
    args = parse_args(argv)
    spec = ExportSpec.from_args(args)
    run = StagedRun(RunSpec.from_args(STAGE, args), whole_output=True, log=LOG)
    check_inputs(spec)
    run.check_output(inputs=spec.inputs)
    spark = get_spark(APP_NAME)
    with run:
        result = export(spark, spec, run)
        # Staged and checked: the quality gate reads back the staged CSVs (every vertex, a bounded share of
        # the edges), then publish.
        funnel = result.funnel
        context: dict[str, Any] = {ROWS_IN: funnel.rows_in, ROWS_REJECTED: funnel.rows_rejected}
        checked: dict[str, Checked] = {}
        gate_note: dict[str, Any] = {}
        if spec.is_gated:
            sample = gate_sample(run.staged(), result.manifest, edge_rows=spec.gate_edge_rows)
            gate_note = sample.note
            context.update(gate_note)
            checked = gate_checked(spark, run, sample, result.manifest["headers"], context)
        run.gate(checked, context=context)
        run.lap("quality_gate")
        run.publish()
    details = {
        "output": spec.output,
        "manifest": storage.join(spec.output, gremlin.MANIFEST_NAME),
        "compression": spec.compression,
        "metric": spec.metric,
        "totals": result.manifest["totals"],
        **result.details,
        "quality_gate": gate_note,
    }
    return run.report(result.funnel, details)


if __name__ == "__main__":
    raise SystemExit(run_job(main))
