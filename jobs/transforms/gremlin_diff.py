"""What changes in the graph between two Gremlin CSV exports: pure transformations, no I/O.

An export's elements (vertex rows or edge rows, every column a string as written in the CSV) are compared
by ``~id`` and by a hash of every other column (``~label``, ``~from``, ``~to`` and the properties, by
header name, so a property that appears or goes is a change). From tonight's rows and one or more
*bases* (exports that may be in the graph: the last one loaded, and one whose load failed half-way):

- rows to load: tonight's rows that some base lacks or holds with other values;
- ids to remove: ids some base has and tonight lacks;
- properties to clear: (id, property) where a base holds a value and tonight's row is blank (the bulk
  loader reads a blank field as "no value" and leaves the old value in place, so it must be dropped).

Every function takes and returns DataFrames; the job reads and writes.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from schemas import gremlin as G

HASH = "_property_hash"
KIND = "change"
PROPERTY = "property"
ADDED = "added"
CHANGED = "changed"
UNCHANGED = "unchanged"
_BASE_HASH = "_base_hash"
_BASE_PREFIX = "_base_"
_CLEARED = "_cleared"


def property_name(header: str) -> str:
    """The property key of a header column: ``name:String(single)`` -> ``name``; ``a\\:b:Int`` -> ``a:b``."""
    match = re.match(r"^((?:[^:\\]|\\.)*):", header)
    name = match.group(1) if match else header
    return name.replace("\\:", ":")


def property_columns(columns: Sequence[str]) -> list[str]:
    """The property columns of a header (every column that is not a system column)."""
    system = {G.ID, G.LABEL, G.FROM, G.TO}
    return [column for column in columns if column not in system]


def align_columns(elements_df: DataFrame, columns: Sequence[str]) -> DataFrame:
    """``elements_df`` with exactly ``columns`` (in that order); a column it lacks is a null string."""
    present = set(elements_df.columns)
    return elements_df.select(
        *[
            F.col(column) if column in present else F.lit(None).cast("string").alias(column)
            for column in columns
        ]
    )


def property_hash(columns: Sequence[str]) -> Column:
    """sha-256 of every non-id column by name (a blank value is left out, as the loader leaves it out).

    ``columns`` is the union of both exports' headers in a fixed order, so two rows hash alike exactly
    when they carry the same values under the same headers.
    """
    hashed = sorted(column for column in columns if column != G.ID)
    return F.sha2(F.to_json(F.struct(*[F.col(column) for column in hashed])), 256)


def with_property_hash(elements_df: DataFrame, columns: Sequence[str]) -> DataFrame:
    """Add :data:`HASH` (see :func:`property_hash`) computed over ``columns``."""
    return elements_df.withColumn(HASH, property_hash(columns))


def element_hashes(elements_df: DataFrame, columns: Sequence[str]) -> DataFrame:
    """``(~id, HASH)`` of every row, ``elements_df`` aligned to ``columns`` first."""
    return (
        elements_df.transform(align_columns, columns)
        .transform(with_property_hash, columns)
        .select(G.ID, HASH)
    )


def with_change_kind(current_hashes_df: DataFrame, base_hashes_df: DataFrame) -> DataFrame:
    """``(~id, HASH, KIND)``: tonight's ids tagged added, changed or unchanged against one base."""
    base_df = base_hashes_df.withColumnRenamed(HASH, _BASE_HASH)
    kind = (
        F.when(F.col(_BASE_HASH).isNull(), F.lit(ADDED))
        .when(F.col(_BASE_HASH) != F.col(HASH), F.lit(CHANGED))
        .otherwise(F.lit(UNCHANGED))
    )
    return (
        current_hashes_df.join(base_df, on=G.ID, how="left").withColumn(KIND, kind).select(G.ID, HASH, KIND)
    )


def filter_rows_to_load(
    current_df: DataFrame, current_hashes_df: DataFrame, bases_hashes: Sequence[DataFrame]
) -> DataFrame:
    """Tonight's rows (its own columns) that some base lacks or holds with other values."""
    stale_ids = [
        current_hashes_df.join(base_df, on=[G.ID, HASH], how="left_anti").select(G.ID)
        for base_df in bases_hashes
    ]
    ids_df = functools.reduce(DataFrame.unionByName, stale_ids).distinct()
    return current_df.join(ids_df, on=G.ID, how="left_semi")


def ids_to_remove(current_ids_df: DataFrame, bases_ids: Sequence[DataFrame]) -> DataFrame:
    """``(~id)``: every id some base holds that tonight lacks, once."""
    base_ids_df = functools.reduce(DataFrame.unionByName, [df.select(G.ID) for df in bases_ids]).distinct()
    return base_ids_df.join(current_ids_df.select(G.ID), on=G.ID, how="left_anti")


def properties_to_clear(
    current_df: DataFrame, bases: Sequence[DataFrame], columns: Sequence[str]
) -> DataFrame:
    """``(~id, PROPERTY)``: a property key a base holds a value for and tonight's row leaves blank.

    Only ids in both; ``columns`` is the union of the headers (both sides are aligned to it).
    """
    props = property_columns(columns)
    if not props:
        return current_df.sparkSession.createDataFrame([], f"`{G.ID}` string, {PROPERTY} string")
    current_aligned_df = current_df.transform(align_columns, columns)
    cleared = []
    for base_df in bases:
        renamed_df = base_df.transform(align_columns, columns).select(
            G.ID, *[F.col(column).alias(_BASE_PREFIX + column) for column in props]
        )
        flags = F.array(
            *[
                F.when(
                    F.col(_BASE_PREFIX + column).isNotNull() & F.col(column).isNull(),
                    F.lit(property_name(column)),
                )
                for column in props
            ]
        )
        cleared.append(
            current_aligned_df.join(renamed_df, on=G.ID, how="inner").select(
                G.ID, F.explode(F.filter(flags, lambda name: name.isNotNull())).alias(PROPERTY)
            )
        )
    return functools.reduce(DataFrame.unionByName, cleared).distinct()
