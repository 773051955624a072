"""The edge files the tile tasks write: Parquet straight from Arrow, each file put in place whole."""
from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql.pandas.types import to_arrow_schema

from jobs.common import storage
from jobs.common.quality_pass import PassMetrics
from schemas import similarity as similarity_schema
from schemas.quality_terms import ExpectationSpec

# The Arrow schema of the Spark schema declared once, in schemas/similarity.py.
WRITTEN_ARROW_SCHEMA = to_arrow_schema(similarity_schema.WRITTEN_SCHEMA)
ROW_GROUP_ROWS = 1 << 20  # edges buffered per Parquet row group


def task_index() -> int:
    """The running Spark task's partition number (0 outside Spark)."""
    from pyspark import TaskContext

    context = TaskContext.get()
    return context.partitionId() if context is not None else 0


class EdgeFiles:
    """One task's edges as Parquet files ``part-<task>-c<seq>.parquet`` of at most ``max_rows`` rows
    under ``folder``, each put in place whole (``storage.AtomicFile``); ``folder`` None: counted only.

    Written here, not by Spark's writer: the edges leave the task as Parquet straight from Arrow,
    with no conversion to Spark rows and back. Names depend on the task and its rows only, so a retried
    or speculative attempt writes the same files with the same rows; the job publishes the folder only
    after the counts check. With ``expectations`` (the gate's suite), each file's edges are counted for
    the gate as they are written (``jobs.common.quality_pass``), and the counts are reported with it.
    """

    def __init__(
        self,
        folder: str | None,
        task: int,
        schema: pa.Schema,
        max_rows: int,
        expectations: Sequence[ExpectationSpec] | None = None,
    ) -> None:
        self.folder, self.task, self.schema, self.max_rows = folder, task, schema, max_rows
        self.expectations = expectations
        self.metrics = self._new_metrics()
        self.written: list[tuple[str | None, int, str | None]] = []
        self.counted = 0
        self.pending: list[pa.RecordBatch] = []
        self.pending_rows = 0
        self.file: storage.AtomicFile | None = None
        self.writer: pq.ParquetWriter | None = None
        self.file_rows = 0

    def _new_metrics(self) -> PassMetrics | None:
        return None if self.expectations is None else PassMetrics(self.expectations, self.schema)

    def write(self, batch: pa.RecordBatch) -> None:
        """Add a batch of edges (``schema``)."""
        if self.folder is None:
            self.counted += batch.num_rows
            return
        offset = 0
        while offset < batch.num_rows:
            take = min(batch.num_rows - offset, self.max_rows - self.file_rows - self.pending_rows)
            self.pending.append(batch.slice(offset, take))
            self.pending_rows += take
            offset += take
            if self.file_rows + self.pending_rows >= self.max_rows:
                self._finish_file()
            elif self.pending_rows >= ROW_GROUP_ROWS:
                self._flush()

    def _flush(self) -> None:
        if not self.pending_rows:
            return
        if self.writer is None:
            name = f"part-{self.task:05d}-c{len(self.written):03d}.parquet"
            self.file = storage.AtomicFile(storage.join(self.folder or "", name))
            self.writer = pq.ParquetWriter(self.file.stream, self.schema)
        table = pa.Table.from_batches(self.pending, schema=self.schema)
        if self.metrics is not None:
            for part in self.pending:
                self.metrics.add(part)
        self.writer.write_table(table)
        self.file_rows += self.pending_rows
        self.pending, self.pending_rows = [], 0

    def _finish_file(self) -> None:
        self._flush()
        if self.writer is not None and self.file is not None:
            self.writer.close()
            self.file.commit()
            counts = None if self.metrics is None else json.dumps(self.metrics.partial())
            self.written.append((self.file.name, self.file_rows, counts))
            self.metrics = self._new_metrics()
        self.file, self.writer, self.file_rows = None, None, 0

    def close(self) -> pa.RecordBatch:
        """Finish the last file; the files written (or the count) as ``WRITTEN_ARROW_SCHEMA`` rows."""
        if self.folder is None:
            rows: list[tuple[str | None, int, str | None]] = [(None, self.counted, None)]
        else:
            self._finish_file()
            rows = self.written
        names, counts, metrics = zip(*rows, strict=True) if rows else ((), (), ())
        return pa.RecordBatch.from_arrays(
            [pa.array(names, pa.string()), pa.array(counts, pa.int64()), pa.array(metrics, pa.string())],
            schema=WRITTEN_ARROW_SCHEMA,
        )

    def abort(self) -> None:
        """Drop the file being written (the task failed; its retry writes it again)."""
        if self.file is not None:
            self.file.abort()
        self.file, self.writer = None, None


def write_edges(
    batches: Iterator[pa.RecordBatch],
    folder: str | None,
    schema: pa.Schema,
    max_rows: int,
    expectations: Sequence[ExpectationSpec] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Write (or count) the edge batches of this task, counted for the gate's ``expectations`` (None:
    not counted); yields what was written (``EdgeFiles.close``)."""
    files = EdgeFiles(folder, task_index(), schema, max_rows, expectations)
    try:
        for batch in batches:
            files.write(batch)
    except BaseException:
        files.abort()
        raise
    yield files.close()

