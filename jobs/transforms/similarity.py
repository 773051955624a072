"""Pure DataFrame -> DataFrame steps of the similarity job (the tiled edges)."""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jobs.common.spark import partition_keys
from schemas import similarity
from schemas.quality_terms import ExpectationSpec
from udfs.similarity.tasks import (
    AllPairsSpec,
    MatrixSpec,
    TopkSpec,
    all_pairs_edges_fn,
    topk_candidates_fn,
    topk_merge_fn,
)

BLOCK = "id"  # spark.range's column: one row per row block (all-pairs) or block pair (top-k)
ROUTE = "route"  # top-k candidates: the shuffle key that sends a block to its merge task


def topk_edge_files(
    pairs_df: DataFrame,
    *,
    input_uri: str,
    valid_uri: str,
    metric: str,
    k: int,
    block_size: int,
    pair_block: int,
    blocks: int,
    merge_tasks: int,
    output: str | None,
    max_rows_per_file: int,
    device: str = "auto",
    threads: int | None = None,
    expectations: tuple[ExpectationSpec, ...] | None = None,
) -> DataFrame:
    """One row per block pair in (``id``, ``udfs.similarity.pairs.block_pairs`` order); when the frame is
    evaluated, the top-k edges of every product (``TOPK_EDGE_SCHEMA``) are written as Parquet files
    under ``output`` (None: only counted) by the tasks; out: one row per file written
    (``WRITTEN_SCHEMA``: file, rows, and the file's counts for the gate's ``expectations``).

    Two steps: each pair's tiles give the candidates of both its blocks (one product per pair of
    products); a shuffle by block brings a block's candidates together, where they are merged and
    settled exactly. ``input_uri`` holds the embeddings, ``valid_uri`` the skus that passed the checks.

    The blocks are dealt round-robin to ``merge_tasks`` tasks (``partition_keys``: hashing the block
    number itself left some tasks with two blocks and others with none).
    """
    matrix = MatrixSpec(input_uri, valid_uri, metric, device, threads)
    spec = TopkSpec(matrix, k=k, pair_block=pair_block, tile=block_size)
    keys = partition_keys(merge_tasks)
    route = F.element_at(
        F.array(*(F.lit(keys[b % merge_tasks]) for b in range(blocks))), F.col(similarity.BLOCK) + 1
    )
    return (
        pairs_df.select(F.col(BLOCK))
        .mapInArrow(topk_candidates_fn(spec), similarity.CANDIDATES_SCHEMA)
        .withColumn(ROUTE, route)
        .repartition(merge_tasks, F.col(ROUTE))
        .drop(ROUTE)
        .mapInArrow(
            topk_merge_fn(
                spec, output=output, max_rows_per_file=max_rows_per_file, expectations=expectations
            ),
            similarity.WRITTEN_SCHEMA,
        )
    )


def all_pairs_edge_files(
    blocks_df: DataFrame,
    *,
    input_uri: str,
    valid_uri: str,
    metric: str,
    block_size: int,
    column_block: int,
    output: str | None,
    max_rows_per_file: int,
    min_score: float | None = None,
    max_distance: float | None = None,
    directed: bool = False,
    device: str = "auto",
    threads: int | None = None,
    expectations: tuple[ExpectationSpec, ...] | None = None,
) -> DataFrame:
    """One row per row block in (``id``); when evaluated, the block's pairs (``ALL_PAIRS_EDGE_SCHEMA``)
    are streamed into Parquet files under ``output`` (None: only counted) by the tasks; out: one row
    per file written (``WRITTEN_SCHEMA``)."""
    spec = AllPairsSpec(
        MatrixSpec(input_uri, valid_uri, metric, device, threads),
        block_size=block_size,
        column_block=column_block,
        min_score=min_score,
        max_distance=max_distance,
        directed=directed,
    )
    return blocks_df.select(F.col(BLOCK)).mapInArrow(
        all_pairs_edges_fn(
            spec, output=output, max_rows_per_file=max_rows_per_file, expectations=expectations
        ),
        similarity.WRITTEN_SCHEMA,
    )
