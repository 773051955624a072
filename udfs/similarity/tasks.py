"""The tile tasks: ``mapInArrow`` functions, one input row per row block or block pair (its number),
configured by frozen specs (what a task reads, how it tiles) built once on the driver."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pyspark.sql.pandas.types import to_arrow_schema

from schemas import similarity as similarity_schema
from schemas.quality_terms import ExpectationSpec
from udfs.similarity.device import AUTO, task_setup
from udfs.similarity.edge_files import write_edges
from udfs.similarity.matrix import Prepared, load_prepared, worker_floors
from udfs.similarity.pairs import block_pairs, merge_block, pair_candidates
from udfs.similarity.tiles import (
    ALL_PAIRS_ARROW_SCHEMA,
    TOPK_ARROW_SCHEMA,
    all_pairs_batches,
    candidate_width,
)

# The Arrow schema of the Spark schema declared once, in schemas/similarity.py.
CANDIDATES_ARROW_SCHEMA = to_arrow_schema(similarity_schema.CANDIDATES_SCHEMA)

ArrowTask = Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]


@dataclass(frozen=True)
class MatrixSpec:
    """What a tile task computes on: the embed job's Parquet (``input_uri``), the skus that passed the
    checks (``valid_uri``), the metric, the requested device (``auto``, ``cpu``, ``cuda``) and the CPU
    threads per task (None: ``spark.task.cpus``)."""

    input_uri: str
    valid_uri: str
    metric: str
    device: str = AUTO
    threads: int | None = None

    def load(self) -> Prepared:
        """Set up the task (device, threads) and get the worker's prepared matrix."""
        device = task_setup(self.device, self.threads)
        return load_prepared(self.input_uri, self.valid_uri, self.metric, device)


@dataclass(frozen=True)
class TopkSpec:
    """Top-k tiling: ``k`` neighbours per product, block pairs of ``pair_block`` rows, tiles of ``tile``."""

    matrix: MatrixSpec
    k: int
    pair_block: int
    tile: int


@dataclass(frozen=True)
class AllPairsSpec:
    """All-pairs tiling and filter: row blocks of ``block_size`` rows against column blocks of
    ``column_block``; a pair is kept at ``min_score`` or more (similarities) or ``max_distance`` or less
    (distances); ``directed`` writes each pair in both directions."""

    matrix: MatrixSpec
    block_size: int
    column_block: int
    min_score: float | None = None
    max_distance: float | None = None
    directed: bool = False


def _blocks(batches: Iterator[pa.RecordBatch]) -> Iterator[int]:
    for batch in batches:
        yield from (int(block) for block in batch.column(0).to_numpy())


def topk_candidates_fn(spec: TopkSpec) -> ArrowTask:
    """A ``mapInArrow`` function: block-pair numbers in (``block_pairs``' order), each pair's
    candidates out, one row per block: (block, float32 keys, int32 columns), ``rows x width`` each,
    as raw little-endian bytes."""

    def candidates(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        prep = spec.matrix.load()
        pairs = block_pairs(math.ceil(prep.n / spec.pair_block))
        width = candidate_width(prep.n, spec.k)
        for pair in _blocks(batches):
            a, b = pairs[pair]
            found = pair_candidates(
                prep, a, b, spec.pair_block, spec.tile, width, worker_floors(prep, width)
            )
            yield pa.RecordBatch.from_arrays(
                [
                    pa.array([block for block, _, _ in found], type=pa.int32()),
                    pa.array([keys.astype("<f4").tobytes() for _, keys, _ in found], type=pa.binary()),
                    pa.array([cols.astype("<i4").tobytes() for _, _, cols in found], type=pa.binary()),
                ],
                schema=CANDIDATES_ARROW_SCHEMA,
            )

    return candidates


def topk_merge_fn(
    spec: TopkSpec,
    *,
    output: str | None,
    max_rows_per_file: int,
    expectations: Sequence[ExpectationSpec] | None = None,
) -> ArrowTask:
    """A ``mapInArrow`` function: candidate rows in (the caller's shuffle brings all rows of a block
    to one task), each block's exact top-k edges written under ``output`` (``EdgeFiles``; None:
    counted): the union of its pairs' candidates, its float32 top-``width``, settled by ``topk_rows``
    (float64 re-scoring, rows near the margin redone), counted for the gate's ``expectations``. Yields
    the files written."""

    def edges(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        prep = spec.matrix.load()
        parts: dict[int, list[tuple[bytes, bytes]]] = {}
        for batch in batches:
            for block, keys, cols in zip(*(batch.column(i).to_pylist() for i in range(3)), strict=True):
                parts.setdefault(block, []).append((keys, cols))

        def merged() -> Iterator[pa.RecordBatch]:
            for block in sorted(parts):
                found = [
                    (np.frombuffer(keys, dtype="<f4"), np.frombuffer(cols, dtype="<i4"))
                    for keys, cols in parts.pop(block)
                ]
                yield from merge_block(prep, block, found, spec.k, spec.pair_block, spec.tile)

        yield from write_edges(merged(), output, TOPK_ARROW_SCHEMA, max_rows_per_file, expectations)

    return edges


def all_pairs_edges_fn(
    spec: AllPairsSpec,
    *,
    output: str | None,
    max_rows_per_file: int,
    expectations: Sequence[ExpectationSpec] | None = None,
) -> ArrowTask:
    """A ``mapInArrow`` function: block numbers in, that block's (filtered) pairs streamed into Parquet
    files under ``output`` (``EdgeFiles``; None: counted), counted for the gate's ``expectations``.
    Yields the files written."""

    def edges(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        prep = spec.matrix.load()

        def pairs() -> Iterator[pa.RecordBatch]:
            for block in _blocks(batches):
                r0 = block * spec.block_size
                yield from all_pairs_batches(
                    prep,
                    r0,
                    min(prep.n, r0 + spec.block_size),
                    spec.column_block,
                    min_score=spec.min_score,
                    max_distance=spec.max_distance,
                    directed=spec.directed,
                )

        yield from write_edges(pairs(), output, ALL_PAIRS_ARROW_SCHEMA, max_rows_per_file, expectations)

    return edges
