"""Pure transformations from the catalog and the similarity edges to Neptune Gremlin CSV rows.

Every function takes and returns DataFrames; nothing here reads or writes. Rows that cannot become a
vertex or an edge keep flowing with a reason in :data:`schemas.gremlin.REASON` (null for a good row), so
the job can write the good ones, quarantine the rest and count both from one tagged frame.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from schemas import catalog as C
from schemas import embeddings as E
from schemas import gremlin as G
from schemas import similarity as S

CORRUPT_RECORD = "_corrupt_record"
NUL = "\u0000"
_IS_KEPT = "_is_kept_candidate"
_POSITION = "_position"
_FIRST = "_first_values"
_VALUES = "_values"
_SKU_HASH = "_sku_hash"
_FROM_SKU = "_from_sku"
_FROM_HASH = "_from_hash"
_TO_SKU = "_to_sku"
_TO_HASH = "_to_hash"
_SUSPECT = "_is_duplicate_suspect"


def blank_to_null(column: Column) -> Column:
    """A string that is null or empty becomes null: the loader reads a blank field as "no value"."""
    return F.when(column == F.lit(""), F.lit(None).cast("string")).otherwise(column)


def strip_nul(column: Column) -> Column:
    """Remove NUL characters (the loader refuses them); every other character is kept as is."""
    return F.translate(column, NUL, "")


def with_row_order(df: DataFrame) -> DataFrame:
    """Add :data:`G.ROW_ORDER`, each row's position in its input (file, then offset), for "first wins"."""
    return df.withColumn(
        G.ROW_ORDER, F.struct(F.input_file_name().alias("file"), F.monotonically_increasing_id().alias("pos"))
    )


def with_vertex_reject_reason(catalog_df: DataFrame) -> DataFrame:
    """Tag catalog rows that cannot be vertices: malformed CSV row, missing sku, sku with a NUL.

    A sku is missing when it is null or only whitespace. Rows already tagged keep their reason.
    """
    sku = F.col(C.SKU)
    reason = (
        F.when(F.col(CORRUPT_RECORD).isNotNull(), F.lit(G.VERTEX_MALFORMED_ROW))
        .when(sku.isNull() | (F.trim(sku) == F.lit("")), F.lit(G.VERTEX_MISSING_SKU))
        .when(F.instr(sku, NUL) > 0, F.lit(G.VERTEX_SKU_HAS_NUL))
    )
    return catalog_df.withColumn(G.REASON, reason)


def mark_duplicate_skus(catalog_df: DataFrame) -> DataFrame:
    """Keep the first row of each sku (input order); tag the others.

    A later row equal to the kept one in every catalog column is tagged
    :data:`G.VERTEX_DUPLICATE_IDENTICAL` (dropped on purpose); one that differs is tagged
    :data:`G.VERTEX_DUPLICATE_SKU` (quarantined, so someone can see which values lost).
    Rows that already have a reason are not compared.
    """
    return catalog_df.transform(
        with_duplicate_reasons,
        keys=[C.SKU],
        order=[F.col(G.ROW_ORDER).asc()],
        values=[F.col(column) for column in C.CATALOG_COLUMNS],
        identical_reason=G.VERTEX_DUPLICATE_IDENTICAL,
        conflicting_reason=G.VERTEX_DUPLICATE_SKU,
    )


def vertex_skus(catalog_df: DataFrame, *, is_distinct: bool = True) -> DataFrame:
    """The skus that become vertices (one column ``sku``): those of rows without a reason.

    The same set whichever duplicate row wins (:func:`mark_duplicate_skus` keeps one row per sku), so
    edges can be checked against it without waiting for the duplicate comparison. Distinct unless
    ``is_distinct`` is False (a caller that dedupes the collected skus itself saves a shuffle).
    """
    skus_df = catalog_df.transform(with_vertex_reject_reason).filter(F.col(G.REASON).isNull()).select(C.SKU)
    return skus_df.distinct() if is_distinct else skus_df


def with_duplicate_reasons(
    df: DataFrame,
    *,
    keys: list[str],
    order: list[Column],
    values: list[Column],
    identical_reason: str,
    conflicting_reason: str,
) -> DataFrame:
    """Among the rows without a reason, keep the first of each key (by ``order``) and tag the rest.

    A later row whose ``values`` equal the kept row's gets ``identical_reason`` (dropped on purpose); one
    that differs gets ``conflicting_reason`` (quarantined, so someone can see which values lost). Rows
    that already have a reason are neither kept nor compared.
    """
    window = Window.partitionBy(*keys, _IS_KEPT).orderBy(*order)
    return (
        df.withColumn(_IS_KEPT, F.col(G.REASON).isNull())
        .withColumn(_VALUES, F.struct(*values))
        .withColumn(_POSITION, F.row_number().over(window))
        .withColumn(_FIRST, F.first(_VALUES).over(window))
        .withColumn(
            G.REASON,
            F.when(
                F.col(_IS_KEPT) & (F.col(_POSITION) > 1),
                F.when(F.col(_VALUES).eqNullSafe(F.col(_FIRST)), F.lit(identical_reason)).otherwise(
                    F.lit(conflicting_reason)
                ),
            ).otherwise(F.col(G.REASON)),
        )
        .drop(_IS_KEPT, _VALUES, _POSITION, _FIRST)
    )


def embedding_status_by_sku(embeddings_df: DataFrame) -> DataFrame:
    """One status per sku: "ok" when any embedding row of the sku is ok, else the smallest status seen."""
    is_ok = F.col(E.STATUS) == F.lit(E.STATUS_OK)
    return (
        embeddings_df.groupBy(E.SKU)
        .agg(F.max(is_ok.cast("int")).alias("_any_ok"), F.min(E.STATUS).alias("_min_status"))
        .select(
            F.col(E.SKU).alias(C.SKU),
            F.when(F.col("_any_ok") == 1, F.lit(E.STATUS_OK)).otherwise(F.col("_min_status")).alias(E.STATUS),
        )
    )


def with_embedding_status(catalog_df: DataFrame, status_df: DataFrame) -> DataFrame:
    """Add the embedding status of each product (null where the embed job has no row for the sku)."""
    return catalog_df.join(status_df, on=C.SKU, how="left")


def vertex_id(sku: Column) -> Column:
    """``product:<sku>``: stable, derived from the sku alone."""
    return F.concat(F.lit(G.VERTEX_ID_PREFIX), sku)


def to_vertex_rows(catalog_df: DataFrame, *, label: str, with_status: bool) -> DataFrame:
    """The vertex CSV rows of good catalog rows: ``~id``, ``~label`` and the typed properties.

    String properties lose their NUL characters (the documented policy: strip, count, never refuse the
    product for a stray NUL in its name); empty strings become blank fields ("no value").
    """

    def prop(column: str) -> Column:
        return blank_to_null(strip_nul(F.col(column)))

    columns = [
        vertex_id(F.col(C.SKU)).alias(G.ID),
        F.lit(label).alias(G.LABEL),
        prop(C.SKU).alias(G.VERTEX_PROPERTIES["sku"]),
        prop(C.NAME).alias(G.VERTEX_PROPERTIES["name"]),
        prop(C.BRAND).alias(G.VERTEX_PROPERTIES["brand"]),
        prop(C.CATEGORY).alias(G.VERTEX_PROPERTIES["category"]),
        prop(C.SUBCATEGORY).alias(G.VERTEX_PROPERTIES["subcategory"]),
        prop(C.IMAGE_PATH).alias(G.VERTEX_PROPERTIES["image"]),
    ]
    if with_status:
        columns.append(prop(E.STATUS).alias(G.VERTEX_EMBEDDING_STATUS))
    return catalog_df.filter(F.col(G.REASON).isNull()).select(*columns)


def select_edge_contract(edges_df: DataFrame, *, has_rank: bool) -> DataFrame:
    """The similarity columns the export reads (``src``, ``dst``, ``score`` and ``rank`` when present)."""
    columns = [F.col(S.SRC).cast("string"), F.col(S.DST).cast("string"), F.col(S.SCORE).cast("double")]
    if has_rank:
        columns.append(F.col(S.RANK).cast("int"))
    return edges_df.select(*columns)


def with_edge_reject_reason(edges_df: DataFrame, vertex_skus_df: DataFrame) -> DataFrame:
    """Tag similarity rows that cannot be edges, first applicable reason wins.

    Args:
        edges_df: ``src``, ``dst``, ``score`` [, ``rank``].
        vertex_skus_df: one column ``sku``, distinct, the skus of the vertices this export writes
            (small: broadcast to every task, so checking both ends costs two hash lookups a row).

    Returns:
        ``edges_df`` with :data:`G.REASON` (null for a good row).

    Each end is looked up by a 64-bit hash of the sku (a long-keyed hash table: measured about 40% less
    CPU than string keys on 5 M edges) and then compared as a string, so a hash collision can never
    make a missing vertex look present.
    """
    skus = F.broadcast(vertex_skus_df.select(F.col(C.SKU), F.xxhash64(C.SKU).alias(_SKU_HASH)))
    from_df = skus.select(F.col(C.SKU).alias(_FROM_SKU), F.col(_SKU_HASH).alias(_FROM_HASH))
    to_df = skus.select(F.col(C.SKU).alias(_TO_SKU), F.col(_SKU_HASH).alias(_TO_HASH))

    def found(end: str, sku: str, sku_hash: str) -> Column:
        # The string comparison is wrapped so the optimizer keeps it a join condition, not a second key.
        return (F.xxhash64(end) == F.col(sku_hash)) & F.coalesce(F.col(end) == F.col(sku), F.lit(False))

    score = F.col(S.SCORE)
    reason = (
        F.when(F.col(S.SRC).isNull() | F.col(S.DST).isNull(), F.lit(G.EDGE_MISSING_ENDPOINT))
        .when(score.isNull(), F.lit(G.EDGE_MISSING_SCORE))
        .when(F.isnan(score) | (F.abs(score) == F.lit(float("inf"))), F.lit(G.EDGE_NON_FINITE_SCORE))
        .when(F.col(S.SRC) == F.col(S.DST), F.lit(G.EDGE_SELF_LOOP))
        .when(F.col(_FROM_SKU).isNull(), F.lit(G.EDGE_FROM_MISSING))
        .when(F.col(_TO_SKU).isNull(), F.lit(G.EDGE_TO_MISSING))
    )
    return (
        edges_df.join(from_df, on=found(S.SRC, _FROM_SKU, _FROM_HASH), how="left")
        .join(to_df, on=found(S.DST, _TO_SKU, _TO_HASH), how="left")
        .withColumn(G.REASON, reason)
        .drop(_FROM_SKU, _FROM_HASH, _TO_SKU, _TO_HASH)
    )


def with_edge_key(edges_df: DataFrame) -> DataFrame:
    """Add :data:`G.EDGE_KEY`, a 64-bit hash of (src, dst): equal pairs always share it."""
    return edges_df.withColumn(G.EDGE_KEY, F.xxhash64(S.SRC, S.DST))


def duplicate_edge_keys(edges_df: DataFrame) -> DataFrame:
    """The keys that more than one row with both ends carries (usually none): one ``_edge_key`` column.

    Runs on the untagged rows (only ``src`` and ``dst`` are read) and shuffles nothing but 8-byte keys; a
    hash collision of two different pairs merely makes them suspects that :func:`mark_duplicate_edges`
    then compares exactly. The keys are hash-partitioned before counting, so the count runs once, after
    the shuffle: a map-side partial count would build a hash table of keys that are almost all distinct
    and reduce nothing (measured 2.2 s instead of 2.7 s for 2 M edges on local[2]).
    """
    return (
        edges_df.filter(F.col(S.SRC).isNotNull() & F.col(S.DST).isNotNull())
        .select(G.EDGE_KEY)
        .repartition(G.EDGE_KEY)
        .groupBy(G.EDGE_KEY)
        .count()
        .filter(F.col("count") > 1)
        .select(G.EDGE_KEY)
    )


def mark_duplicate_edges(
    edges_df: DataFrame,
    duplicate_keys_df: DataFrame,
    *,
    higher_is_closer: bool,
    broadcast_keys: bool = True,
) -> DataFrame:
    """Keep one edge per (src, dst) among the good rows; tag the others.

    The kept edge is the best: lowest rank, then the best score for the metric's direction. A tagged
    copy equal to it in score and rank is :data:`G.EDGE_DUPLICATE_IDENTICAL` (dropped on purpose); one
    that differs is :data:`G.EDGE_DUPLICATE` (quarantined). Only rows whose key is in
    ``duplicate_keys_df`` are compared, so the common case (no duplicates) shuffles nothing.
    """
    keys = duplicate_keys_df.select(G.EDGE_KEY).withColumn(_SUSPECT, F.lit(True))
    flagged = edges_df.join(F.broadcast(keys) if broadcast_keys else keys, on=G.EDGE_KEY, how="left")
    clear_df = flagged.filter(F.col(_SUSPECT).isNull())
    suspects_df = flagged.filter(F.col(_SUSPECT).isNotNull())

    has_rank = S.RANK in edges_df.columns
    score_order = F.col(S.SCORE).desc_nulls_last() if higher_is_closer else F.col(S.SCORE).asc_nulls_last()
    order = ([F.col(S.RANK).asc_nulls_last()] if has_rank else []) + [score_order]
    marked_df = suspects_df.transform(
        with_duplicate_reasons,
        keys=[S.SRC, S.DST],
        order=order,
        values=[F.col(S.SCORE), *([F.col(S.RANK)] if has_rank else [])],
        identical_reason=G.EDGE_DUPLICATE_IDENTICAL,
        conflicting_reason=G.EDGE_DUPLICATE,
    )
    return clear_df.unionByName(marked_df).drop(_SUSPECT)


def edge_id(label: str, from_id: Column, to_id: Column) -> Column:
    """``<label>:<len(from)>:<from>-><to>``: deterministic, and decodes uniquely to (label, from, to).

    The label has no ``:`` (:data:`G.LABEL_PATTERN`) and the length says where ``~from`` ends, so two
    different edges can never share an id whatever characters the skus hold. Cheaper than a hash.
    """
    return F.concat(
        F.lit(f"{label}:"),
        F.length(from_id).cast("string"),
        F.lit(":"),
        from_id,
        F.lit(G.EDGE_ID_ARROW),
        to_id,
    )


def to_edge_rows(edges_df: DataFrame, *, label: str, metric: str, higher_is_closer: bool) -> DataFrame:
    """The edge CSV rows of good similarity rows: ids, label, score, rank (when present) and the metric."""
    from_id = vertex_id(F.col(S.SRC))
    to_id = vertex_id(F.col(S.DST))
    columns = [
        edge_id(label, from_id, to_id).alias(G.ID),
        from_id.alias(G.FROM),
        to_id.alias(G.TO),
        F.lit(label).alias(G.LABEL),
        F.col(S.SCORE).alias(G.EDGE_SCORE),
    ]
    if S.RANK in edges_df.columns:
        columns.append(F.col(S.RANK).alias(G.EDGE_RANK))
    columns += [F.lit(metric).alias(G.EDGE_METRIC), F.lit(higher_is_closer).alias(G.EDGE_HIGHER_IS_CLOSER)]
    return edges_df.filter(F.col(G.REASON).isNull()).select(*columns)
