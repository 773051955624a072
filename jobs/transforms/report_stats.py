"""Small aggregates of a run's outputs for the HTML run report: each returns a frame of a few rows.

Every function is ``DataFrame -> DataFrame``; the report job collects the results (tens of rows at most,
whatever the size of the data: degrees go into powers-of-two buckets, scores into a fixed number of bins).
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from schemas import interactions as interactions_schema

BUCKET = "bucket"  # lower edge of a degree bucket: 1, 2, 4, 8...
BIN = "bin"  # 0-based bin of a histogram
COUNT = "count"
DEGREE = "degree"
DAY = "day"
NEIGHBOURS = "neighbours"
NEIGHBOUR_RANK = "neighbour_rank"
PRODUCTS = "products"
DT_PATTERN = r"dt=(\d{4}-\d{2}-\d{2})"


def power_of_two_bucket(value: Column) -> Column:
    """The largest power of two <= value (value >= 1): 1, 2, 4, 8... Degree plots use these buckets."""
    return F.pow(F.lit(2), F.floor(F.log2(value))).cast("long")


def degree_histogram(ncf_df: DataFrame, key: str) -> DataFrame:
    """Positives per ``key`` (user_idx or item_idx), counted into power-of-two buckets.

    Returns:
        ``bucket`` (lower edge), ``count`` (keys whose degree falls in [bucket, 2 * bucket)).
    """
    return (
        ncf_df.filter(F.col(interactions_schema.LABEL) == 1)
        .groupBy(key)
        .agg(F.count(F.lit(1)).alias(DEGREE))
        .groupBy(power_of_two_bucket(F.col(DEGREE)).alias(BUCKET))
        .agg(F.count(F.lit(1)).alias(COUNT))
        .orderBy(BUCKET)
    )


def label_counts(ncf_df: DataFrame) -> DataFrame:
    """Rows per label (1 = positive, 0 = sampled negative): ``label``, ``count``."""
    label = interactions_schema.LABEL
    return ncf_df.groupBy(label).agg(F.count(F.lit(1)).alias(COUNT)).orderBy(label)


def value_histogram(df: DataFrame, column: str, *, low: float, high: float, bins: int) -> DataFrame:
    """Equal-width histogram of a numeric column over [low, high]; non-finite and null values left out.

    Returns:
        ``bin`` (0 .. bins-1; the top edge belongs to the last bin), ``count``.
    """
    width = (high - low) / bins if high > low else 1.0
    value = F.col(column).cast("double")
    is_finite = value.isNotNull() & ~F.isnan(value) & (F.abs(value) != float("inf"))
    return (
        df.filter(is_finite)
        .select(F.least(F.floor((value - F.lit(low)) / F.lit(width)), F.lit(bins - 1)).cast("int").alias(BIN))
        .groupBy(BIN)
        .agg(F.count(F.lit(1)).alias(COUNT))
        .orderBy(BIN)
    )


def finite_range(df: DataFrame, column: str) -> DataFrame:
    """One row: ``low``, ``high`` of the finite values of a column (nulls when there is none)."""
    value = F.col(column).cast("double")
    is_finite = value.isNotNull() & ~F.isnan(value) & (F.abs(value) != float("inf"))
    return df.filter(is_finite).agg(F.min(value).alias("low"), F.max(value).alias("high"))


def neighbour_count_histogram(edges_df: DataFrame, src: str) -> DataFrame:
    """How many products have n neighbours: ``neighbours``, ``products`` (products with none are not here)."""
    return (
        edges_df.groupBy(src)
        .agg(F.count(F.lit(1)).alias(NEIGHBOURS))
        .groupBy(NEIGHBOURS)
        .agg(F.count(F.lit(1)).alias(PRODUCTS))
        .orderBy(NEIGHBOURS)
    )


def events_per_day(lines_df: DataFrame, file_column: str) -> DataFrame:
    """Lines per ``dt=YYYY-MM-DD`` folder of their file: ``day``, ``count`` (files elsewhere: day null)."""
    day = F.regexp_extract(F.col(file_column), DT_PATTERN, 1)
    return (
        lines_df.select(F.when(day != "", day).alias(DAY))
        .groupBy(DAY)
        .agg(F.count(F.lit(1)).alias(COUNT))
        .orderBy(DAY)
    )


def sample_by_hash(df: DataFrame, key: str, n: int, seed: int) -> DataFrame:
    """``n`` rows picked by a seeded hash of ``key``: the same rows on every run, spread over the data."""
    return df.orderBy(F.xxhash64(F.col(key), F.lit(seed)), F.col(key)).limit(n)


def filter_top_neighbours(
    edges_df: DataFrame, *, src: str, score: str, n: int, higher_is_closer: bool
) -> DataFrame:
    """Each ``src``'s ``n`` closest edges, the way the shop page asks Neptune for them (best first).

    Adds ``neighbour_rank`` (1 = closest); ties broken by the other columns' order for repeatability.
    """
    order = F.col(score).desc_nulls_last() if higher_is_closer else F.col(score).asc_nulls_last()
    others = [F.col(c) for c in edges_df.columns if c not in (src, score)]
    window = Window.partitionBy(src).orderBy(order, *others)
    return edges_df.withColumn(NEIGHBOUR_RANK, F.row_number().over(window)).filter(F.col(NEIGHBOUR_RANK) <= n)
