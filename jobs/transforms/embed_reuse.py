"""Which products the embed job carries over from the previous run and which it embeds afresh.

A product's previous vector is reused when the previous run wrote it with status "ok" for the same sku,
from the same bytes (``content_sha256``) and with the same model and weights; the rest of the
configuration (preprocessing, limits, batch size, libraries) is compared as a whole by the job before
any of this runs (:func:`config_differences`). Error rows are never reused: a failed image is tried
again every night (it costs a read and a failed decode, never a model call).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from schemas import catalog, embeddings

REUSE_KEYS = [embeddings.SKU, embeddings.CONTENT_SHA256]


def select_reusable(previous_df: DataFrame, model: str, weights_sha256: str) -> DataFrame:
    """The previous run's rows a product may take over: status ok, this model and these weights.

    Returns:
        ``sku``, ``content_sha256``, ``embedding``.
    """
    return (
        previous_df
        .filter(F.col(embeddings.STATUS) == F.lit(embeddings.STATUS_OK))
        .filter(F.col(embeddings.MODEL) == F.lit(model))
        .filter(F.col(embeddings.WEIGHTS_SHA256) == F.lit(weights_sha256))
        .filter(F.col(embeddings.CONTENT_SHA256).isNotNull() & F.col(embeddings.EMBEDDING).isNotNull())
        .select(*REUSE_KEYS, with_contract_elements(F.col(embeddings.EMBEDDING)).alias(embeddings.EMBEDDING))
    )


def with_contract_elements(vector: Column) -> Column:
    """The vector typed as the contract says, ``array<float>`` without null elements.

    Spark reads files with every type made nullable; written next to the fresh rows as it is, the
    vector column would get a Parquet schema of its own (optional elements) that a full run never
    writes. An ok row never holds a null element (the quality gate refuses one), so the coalesce only
    restores the type.
    """
    return F.transform(vector, lambda value: F.coalesce(value, F.lit(0.0).cast("float")))


def select_reused(
    hashed_df: DataFrame, reusable_df: DataFrame, model: str, weights_sha256: str
) -> DataFrame:
    """Tonight's products whose image bytes are those of a reusable previous row, with that row's vector.

    Args:
        hashed_df: tonight's products: ``sku``, ``image_path``, ``content_sha256`` (null: unreadable).
        reusable_df: from :func:`select_reusable` (one row per sku).

    Returns:
        Rows with EMBEDDING_SCHEMA's columns, as a fresh run would write them (tonight's image path).
    """
    return (
        hashed_df
        .join(reusable_df, on=REUSE_KEYS, how="inner")
        .select(
            F.col(catalog.SKU).alias(embeddings.SKU),
            F.col(catalog.IMAGE_PATH).alias(embeddings.IMAGE_PATH),
            F.col(embeddings.EMBEDDING),
            F.lit(embeddings.STATUS_OK).alias(embeddings.STATUS),
            F.lit(None).cast("string").alias(embeddings.ERROR),
            F.lit(model).alias(embeddings.MODEL),
            F.lit(weights_sha256).alias(embeddings.WEIGHTS_SHA256),
            F.col(embeddings.CONTENT_SHA256),
        )
    )


def filter_changed(hashed_df: DataFrame, reusable_df: DataFrame) -> DataFrame:
    """Tonight's products with nothing to reuse (new, new bytes, failed before, unreadable now).

    Returns:
        ``sku``, ``image_path``: what the embedding UDF takes.
    """
    return hashed_df.join(reusable_df.select(*REUSE_KEYS), on=REUSE_KEYS, how="left_anti").select(
        catalog.SKU, catalog.IMAGE_PATH
    )


def filter_removed(previous_df: DataFrame, products_df: DataFrame) -> DataFrame:
    """The previous run's products that are no longer in the catalog (their ``sku``)."""
    products_by_sku_df = products_df.select(F.col(catalog.SKU).alias(embeddings.SKU))
    return previous_df.select(embeddings.SKU).join(products_by_sku_df, on=embeddings.SKU, how="left_anti")


def config_differences(previous: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The keys of two configuration fingerprints whose values differ (missing counts as different),
    sorted; nested mappings are compared key by key (``libraries.torch``)."""
    differences = []
    for key in sorted(set(previous) | set(current)):
        old, new = previous.get(key), current.get(key)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            differences += [f"{key}.{inner}" for inner in config_differences(old, new)]
        elif key not in previous or key not in current or old != new:
            differences.append(key)
    return differences
