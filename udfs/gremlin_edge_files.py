"""Gremlin edge CSV files written from Python tasks: read Parquet, check, format, compress, hash, publish.

Why Python here: the export must check every edge (both ends are vertices, finite score, no repeated
(from, to)) and describe every file it writes (rows, bytes, sha256). With Spark's CSV writer those
checks are extra passes: broadcast joins, a duplicate-key pass and a read-back of every file cost about
twice the write itself. Here one task reads its Parquet row groups with
pyarrow, looks both ends up among the vertex skus (``index_in``: a vertex index per end, so the pair
is an exact int64 key), formats the good rows with Arrow kernels (:mod:`udfs.gremlin_arrow`),
compresses them at Hadoop's levels (gzip 6 with zlib-ng: the same format and level as Hadoop's
GzipCodec in less CPU than zlib, bench/RESULTS.md "export"; bzip2 9) and hashes the bytes as they are
written; the keys go on, sorted and cut by key range, to a second step that counts repeats exactly.

Files are named by task and sequence (``part-<task>-c<seq>.csv.gz``) from the task's rows alone, so a
retried or speculative attempt writes the same name with the same bytes. A local file is written under
a hidden temporary name and renamed into place; on S3 the object appears at once when its upload
completes. Everything lands under the export's staging folder, published only after the checks.
"""

from __future__ import annotations

import bz2
import hashlib
import itertools
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from zlib_ng import zlib_ng

from jobs.common import storage
from schemas import gremlin
from udfs import gremlin_arrow

BATCH_ROWS = 131_072
GZIP_LEVEL = 6  # Hadoop's GzipCodec (Spark's "gzip"): zlib's default level
BZIP2_LEVEL = 9  # Hadoop's BZip2Codec: 900 k blocks
STATS = "stats"
KEYS = "keys"
REPEATS = "repeats"


@dataclass(frozen=True)
class EdgeTask:
    """One write task: rows of the edge Parquet files, in input order, as row ranges of row groups."""

    index: int
    parts: tuple[tuple[str, int, int, int], ...]  # (file URI, row group, first row, end row) in the group
    rows: int


@dataclass(frozen=True)
class EdgeWriteSpec:
    """What every write task needs besides its rows (pickled once into the task closure)."""

    edges_uri: str
    rejects_uri: str
    compression: str
    rows_per_file: int
    columns: tuple[str, ...]  # src, dst, score [, rank]
    has_rank: bool
    header: str
    tail: str  # metric, direction, newline
    reject_schema: pa.Schema
    key_ranges: int
    vertices: int


def file_name(task: int, seq: int, compression: str) -> str:
    """``part-<task>-c<seq><suffix>``: deterministic, and matched by the export's data-file pattern."""
    return f"part-{task:05d}-c{seq:03d}{gremlin.FILE_SUFFIX[compression]}"


def compressor(compression: str) -> Any:
    """A streaming compressor for the export's files (``compress``/``flush``), None when uncompressed."""
    if compression == gremlin.COMPRESSION_GZIP:
        return zlib_ng.compressobj(GZIP_LEVEL, zlib_ng.DEFLATED, 31)  # 31: a gzip member
    if compression == gremlin.COMPRESSION_BZIP2:
        return bz2.BZ2Compressor(BZIP2_LEVEL)
    return None


def compressed(data: bytes, compression: str) -> bytes:
    """``data`` as the export's files compress it."""
    packer = compressor(compression)
    return data if packer is None else packer.compress(data) + packer.flush()


class CsvFileWriter:
    """One data file: compressed, counted and hashed as it is written; in place only once closed."""

    def __init__(self, uri: str, compression: str, header: str) -> None:
        self.file = storage.AtomicFile(uri)  # in place only at close; a retry replaces it whole
        self.compressor = compressor(compression)
        self.digest = hashlib.sha256()
        self.bytes = 0
        self.rows = 0
        self._put(header.encode("utf-8") + gremlin_arrow.RECORD_END.encode())

    def _emit(self, data: bytes | memoryview) -> None:
        if len(data):
            self.digest.update(data)
            self.file.stream.write(data)
            self.bytes += len(data)

    def _put(self, data: bytes | memoryview) -> None:
        self._emit(self.compressor.compress(data) if self.compressor is not None else data)

    def write(self, records: memoryview, rows: int) -> None:
        """Append ``rows`` CSV records (their bytes, each ending in a newline)."""
        self._put(records)
        self.rows += rows

    def close(self) -> dict[str, Any]:
        """Finish the file and put it in place; returns its name, rows, bytes and sha256."""
        if self.compressor is not None:
            self._emit(self.compressor.flush())
        self.file.commit()
        return {
            "name": self.file.name,
            "rows": self.rows,
            "bytes": self.bytes,
            "sha256": self.digest.hexdigest(),
        }

    def abort(self) -> None:
        """Drop a file that will not be finished (``storage.AtomicFile.abort``)."""
        self.file.abort()


def read_task_batches(
    task: EdgeTask, columns: Iterable[str], *, batch_rows: int = BATCH_ROWS
) -> Iterator[pa.RecordBatch]:
    """The task's rows in input order, in batches of at most ``batch_rows`` (a range that starts inside
    a row group decodes the group's rows before it: Parquet reads a row group from its start)."""
    for uri, parts in itertools.groupby(task.parts, key=lambda part: part[0]):
        fs, path = storage.filesystem(uri)
        with fs.open_input_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            for _, group, first, end in parts:
                seen = 0
                wanted = list(columns)
                for batch in parquet.iter_batches(batch_size=batch_rows, row_groups=[group], columns=wanted):
                    low, high = max(first - seen, 0), min(end - seen, batch.num_rows)
                    seen += batch.num_rows
                    if low < high:
                        yield batch.slice(low, high - low) if (low, high) != (0, batch.num_rows) else batch
                    if seen >= end:
                        break


def reject_table(batch: pa.RecordBatch, reasons: np.ndarray, schema: pa.Schema) -> pa.Table:
    """The rejected rows of a batch with their reason, in the quarantine's schema."""
    bad = reasons != gremlin_arrow.GOOD
    names = np.array(gremlin_arrow.REASON_CODES, dtype=object)[reasons[bad] - 1]
    rows = batch.filter(pa.array(bad))
    columns = [rows.column(field.name).cast(field.type) for field in schema if field.name != gremlin.REASON]
    return pa.Table.from_arrays([*columns, pa.array(names, pa.string())], schema=schema)


def key_range_chunks(keys: np.ndarray, *, vertices: int, key_ranges: int) -> Iterator[tuple[int, bytes]]:
    """Sorted keys cut by range of the ``~from`` vertex (range r holds from-indexes with
    ``from * key_ranges // vertices == r``): ``(range, int64 keys as bytes)`` for every non-empty range."""
    keys = np.sort(keys)
    ranges = (keys // vertices) * key_ranges // vertices
    bounds = np.searchsorted(ranges, np.arange(key_ranges + 1), side="left")
    for key_range in range(key_ranges):
        chunk = keys[bounds[key_range] : bounds[key_range + 1]]
        if len(chunk):
            yield key_range, chunk.tobytes()


def write_edge_task(
    task: EdgeTask, spec: EdgeWriteSpec, pieces: gremlin_arrow.VertexPieces
) -> Iterator[tuple[int, tuple[str, Any]]]:
    """Check and write one task's edges; yields ``(key range, (STATS, {...}))`` once and
    ``(key range, (KEYS, bytes))`` per non-empty range of the good rows' (from, to) keys.

    The stats hold the files written (name, rows, bytes, sha256), the rows read and the rows rejected by
    reason; the rejected rows themselves go to ``<rejects_uri>/part-<task>.parquet``.
    """
    started, cpu_started = time.perf_counter(), time.process_time()
    files: list[dict[str, Any]] = []
    reasons: Counter[str] = Counter()
    rejects: list[pa.Table] = []
    keys: list[np.ndarray] = []
    rows_in = 0
    writer: CsvFileWriter | None = None
    try:
        for batch in read_task_batches(task, spec.columns):
            rows_in += batch.num_rows
            checked = gremlin_arrow.check_batch(batch, pieces.skus)
            good = batch
            if checked.reasons.any():
                bad = checked.reasons[checked.reasons != gremlin_arrow.GOOD]
                codes, counts = np.unique(bad, return_counts=True)
                names = [gremlin_arrow.REASON_CODES[code - 1] for code in codes]
                reasons.update({name: int(n) for name, n in zip(names, counts, strict=True)})
                rejects.append(reject_table(batch, checked.reasons, spec.reject_schema))
                good = batch.filter(pa.array(checked.reasons == gremlin_arrow.GOOD))
            keys.append(gremlin_arrow.edge_keys(checked.from_index, checked.to_index, spec.vertices))
            position = 0
            while position < good.num_rows:
                if writer is None:
                    uri = storage.join(spec.edges_uri, file_name(task.index, len(files), spec.compression))
                    writer = CsvFileWriter(uri, spec.compression, spec.header)
                take = min(spec.rows_per_file - writer.rows, good.num_rows - position)
                end = position + take
                records = gremlin_arrow.format_edges(
                    good.slice(position, take),
                    checked.from_index[position:end],
                    checked.to_index[position:end],
                    pieces,
                    has_rank=spec.has_rank,
                    tail=spec.tail,
                )
                writer.write(records, take)
                position = end
                if writer.rows >= spec.rows_per_file:
                    files.append(writer.close())
                    writer = None
        if writer is not None:
            files.append(writer.close())
            writer = None
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if rejects:
        storage.write_parquet(
            pa.concat_tables(rejects), storage.join(spec.rejects_uri, f"part-{task.index:05d}.parquet")
        )
    stats = {
        "task": task.index,
        "files": files,
        "rows_in": rows_in,
        "rejected": dict(reasons),
        "seconds": round(time.perf_counter() - started, 3),
        "cpu_seconds": round(time.process_time() - cpu_started, 3),
    }
    yield task.index % spec.key_ranges, (STATS, stats)
    all_keys = np.concatenate(keys) if keys else np.empty(0, dtype=np.int64)
    for key_range, chunk in key_range_chunks(all_keys, vertices=spec.vertices, key_ranges=spec.key_ranges):
        yield key_range, (KEYS, chunk)


def write_edge_partition(
    tasks: Iterable[EdgeTask], spec: EdgeWriteSpec, pieces: Any
) -> Iterator[tuple[int, tuple[str, Any]]]:
    """``mapPartitions`` body: every task of the partition (``pieces``: a broadcast of the vertex pieces)."""
    for task in tasks:
        yield from write_edge_task(task, spec, pieces.value)


def count_repeats(items: Iterable[tuple[int, tuple[str, Any]]]) -> Iterator[tuple[str, Any]]:
    """``mapPartitions`` body after the shuffle by key range: passes the stats on and yields
    ``(REPEATS, n)``, the keys of the range beyond their first copy (0: every pair in the range distinct)."""
    chunks = []
    for _, (kind, payload) in items:
        if kind == KEYS:
            chunks.append(np.frombuffer(payload, dtype=np.int64))
        else:
            yield kind, payload
    if chunks:
        keys = np.concatenate(chunks)
        keys.sort()
        yield REPEATS, int(np.count_nonzero(keys[1:] == keys[:-1]))
