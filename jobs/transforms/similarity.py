"""Pure DataFrame -> DataFrame steps of the similarity job (checks, rejects, tiled edges)."""
from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from schemas import embeddings as E
from schemas import similarity as S
from udfs import similarity_tiles

COUNT = "count"
LENGTH = "length"
BLOCK = "id"  # spark.range's column: one row per row block (all-pairs) or block pair (top-k)


def is_ok(status: Column) -> Column:
    """True for the embed job's "ok" rows."""
    return F.coalesce(status == F.lit(E.STATUS_OK), F.lit(False))


def is_missing_sku(sku: Column) -> Column:
    """True for a null or empty (after trimming) sku."""
    return sku.isNull() | (F.trim(sku) == F.lit(""))


def embedding_facts(files_df: DataFrame) -> DataFrame:
    """One row per input file URI (first column) in; every row of those files out, as
    ``FACTS_SCHEMA``: sku, image_path, status, embedding_length, non_finite, zero_norm.

    The embeddings are read and checked in Python (``udfs.similarity_tiles.embedding_facts_fn``) and do
    not travel through Spark at all; the tile tasks read them from the same files.
    """
    return files_df.mapInArrow(similarity_tiles.embedding_facts_fn(), S.FACTS_SCHEMA)


def with_rejection_reason(facts_df: DataFrame, *, expected_dim: int, metric: str) -> DataFrame:
    """One row per embedding row (``embedding_facts``): sku, image_path, embedding_length, ``reason``
    (null = usable) and ``disposition`` (valid, rejected, or dropped on purpose).

    Reasons, first match wins: status not "ok" (dropped), missing sku, duplicate sku (every copy of a
    sku found in more than one "ok" row), null embedding, wrong length (``!= expected_dim``),
    non-finite, zero norm (cosine only).
    """
    ok_copies = F.count(F.when(is_ok(F.col(E.STATUS)), F.lit(1))).over(Window.partitionBy(E.SKU))
    reason = (
        F.when(~is_ok(F.col(E.STATUS)), F.lit(S.REASON_STATUS_ERROR))
        .when(is_missing_sku(F.col(E.SKU)), F.lit(S.REASON_MISSING_SKU))
        .when(ok_copies > 1, F.lit(S.REASON_DUPLICATE_SKU))
        .when(F.col(S.EMBEDDING_LENGTH).isNull(), F.lit(S.REASON_NULL_EMBEDDING))
        .when(F.col(S.EMBEDDING_LENGTH) != F.lit(expected_dim), F.lit(S.REASON_WRONG_LENGTH))
        .when(F.col(S.NON_FINITE), F.lit(S.REASON_NON_FINITE))
    )
    if metric == S.COSINE:
        reason = reason.when(F.col(S.ZERO_NORM), F.lit(S.REASON_ZERO_NORM))
    return facts_df.select(E.SKU, E.IMAGE_PATH, S.EMBEDDING_LENGTH, reason.alias(S.REASON)).withColumn(
        S.DISPOSITION,
        F.when(F.col(S.REASON).isNull(), F.lit(S.DISPOSITION_VALID))
        .when(F.col(S.REASON).isin(*S.DROPPED_REASONS), F.lit(S.DISPOSITION_DROPPED))
        .otherwise(F.lit(S.DISPOSITION_REJECTED)),
    )


def expected_dimension(facts_df: DataFrame) -> int:
    """The most frequent embedding length among "ok" rows with an embedding (ties: the smaller);
    0 when there is none."""
    lengths = (
        facts_df.filter(is_ok(F.col(E.STATUS)) & F.col(S.EMBEDDING_LENGTH).isNotNull())
        .groupBy(F.col(S.EMBEDDING_LENGTH).alias(LENGTH))
        .count()
        .orderBy(F.col(COUNT).desc(), F.col(LENGTH).asc())
        .limit(1)
        .collect()
    )
    return int(lengths[0][LENGTH]) if lengths else 0


def explode_topk_edges(
    pairs_df: DataFrame,
    *,
    input_uri: str,
    valid_uri: str,
    metric: str,
    k: int,
    block_size: int,
    pair_block: int,
    blocks: int,
    device: str = "auto",
    threads: int | None = None,
) -> DataFrame:
    """One row per block pair in (``id``, ``similarity_tiles.block_pairs`` order), the top-k edges of
    every product out (``TOPK_EDGE_SCHEMA``).

    Two steps: each pair's tiles give the candidates of both its blocks (one product per pair of
    products); a shuffle by block brings a block's candidates together, where they are merged and
    settled exactly. ``input_uri`` holds the embeddings, ``valid_uri`` the skus that passed the checks.
    """
    options = (input_uri, valid_uri, metric, k, pair_block, block_size, device, threads)
    return (
        pairs_df.select(F.col(BLOCK))
        .mapInArrow(similarity_tiles.topk_candidates_fn(*options), S.CANDIDATES_SCHEMA)
        .repartition(blocks, F.col(S.BLOCK))
        .mapInArrow(similarity_tiles.topk_merge_fn(*options), S.TOPK_EDGE_SCHEMA)
    )


def explode_all_pairs_edges(
    blocks_df: DataFrame,
    *,
    input_uri: str,
    valid_uri: str,
    metric: str,
    block_size: int,
    column_block: int,
    min_score: float | None = None,
    max_distance: float | None = None,
    directed: bool = False,
    device: str = "auto",
    threads: int | None = None,
) -> DataFrame:
    """One row per row block in (``id``), the block's pairs out (``ALL_PAIRS_EDGE_SCHEMA``), streamed."""
    return blocks_df.select(F.col(BLOCK)).mapInArrow(
        similarity_tiles.all_pairs_edges_fn(
            input_uri,
            valid_uri,
            metric,
            block_size,
            column_block,
            device,
            threads,
            min_score=min_score,
            max_distance=max_distance,
            directed=directed,
        ),
        S.ALL_PAIRS_EDGE_SCHEMA,
    )
