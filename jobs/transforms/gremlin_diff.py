"""What changes in the graph between two Gremlin CSV exports: pure transformations, no I/O.

An export's elements (vertex rows or edge rows, every column a string as written in the CSV) are compared
by ``~id`` and by a hash of every other column (``~label``, ``~from``, ``~to`` and the properties, by
header name, so a property that appears or goes is a change). From tonight's rows and one or more
*bases* (exports that may be in the graph: the last one loaded, and one whose load failed half-way):

- rows to load: tonight's rows that some base lacks or holds with other values;
- ids to remove: ids some base has and tonight lacks;
- properties to clear: (id, property) where a base holds a value and tonight's row is blank (the bulk
  loader reads a blank field as "no value" and leaves the old value in place, so it must be dropped).

Tonight is compared with each base once (:func:`compare_with_base`, one join); the three outputs and the
counts are filters of those comparisons. Every function takes and returns DataFrames; the job reads and
writes.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from schemas import gremlin

HASH = "_property_hash"
KIND = "change"
PROPERTY = "property"
CLEARED = "cleared"
ADDED = "added"
CHANGED = "changed"
UNCHANGED = "unchanged"
REMOVED = "removed"
_BASE_HASH = "_base_hash"
_BASE_PREFIX = "_base_"
_IN_CURRENT = "_is_in_current"


def property_name(header: str) -> str:
    """The property key of a header column: ``name:String(single)`` -> ``name``; ``a\\:b:Int`` -> ``a:b``."""
    match = re.match(r"^((?:[^:\\]|\\.)*):", header)
    name = match.group(1) if match else header
    return name.replace("\\:", ":")


def property_columns(columns: Sequence[str]) -> list[str]:
    """The property columns of a header (every column that is not a system column)."""
    system = {gremlin.ID, gremlin.LABEL, gremlin.FROM, gremlin.TO}
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
    """sha-256 of every column but ``~id``, in name order, each as ``v<value>`` or ``n`` (blank), joined
    by NUL.

    ``columns`` is the union of both exports' headers, so two rows hash alike exactly when they carry the
    same values under the same headers. The export never writes a NUL, so the encoding is unambiguous.
    """
    hashed = sorted(column for column in columns if column != gremlin.ID)
    fields = [F.coalesce(F.concat(F.lit("v"), F.col(column)), F.lit("n")) for column in hashed]
    return F.sha2(F.concat_ws("\u0000", *fields), 256)


def with_property_hash(elements_df: DataFrame, columns: Sequence[str]) -> DataFrame:
    """``elements_df`` aligned to ``columns`` (see :func:`align_columns`) with :data:`HASH` added."""
    return elements_df.transform(align_columns, columns).withColumn(HASH, property_hash(columns))


def compare_with_base(current_df: DataFrame, base_df: DataFrame, columns: Sequence[str]) -> DataFrame:
    """Every id of either side once (a full outer join on ``~id``): ``columns`` (tonight's values, null
    for a removed id), :data:`KIND` (added, changed, unchanged, removed) and :data:`CLEARED` (the
    property keys the base holds a value for and tonight's row leaves blank).

    Both frames come from :func:`with_property_hash` over the same ``columns``.
    """
    props = property_columns(columns)
    base_side_df = base_df.select(
        gremlin.ID,
        F.col(HASH).alias(_BASE_HASH),
        *[F.col(column).alias(_BASE_PREFIX + column) for column in props],
    )
    current_side_df = current_df.select(*columns, HASH, F.lit(True).alias(_IN_CURRENT))
    kind = (
        F.when(F.col(_IN_CURRENT).isNull(), F.lit(REMOVED))
        .when(F.col(_BASE_HASH).isNull(), F.lit(ADDED))
        .when(F.col(_BASE_HASH) != F.col(HASH), F.lit(CHANGED))
        .otherwise(F.lit(UNCHANGED))
    )
    flags = F.array(
        *[
            F.when(
                F.col(_IN_CURRENT) & F.col(_BASE_PREFIX + column).isNotNull() & F.col(column).isNull(),
                F.lit(property_name(column)),
            )
            for column in props
        ],
        F.lit(None).cast("string"),  # never an empty array() of unknown type
    )
    return (
        current_side_df.join(base_side_df, on=gremlin.ID, how="full_outer")
        .withColumn(KIND, kind)
        .withColumn(CLEARED, F.filter(flags, lambda name: name.isNotNull()))
        .select(*columns, KIND, CLEARED)
    )


def filter_rows_to_load(comparisons: Sequence[DataFrame], header: Sequence[str]) -> DataFrame:
    """Tonight's rows (``header``'s columns) that some base lacks or holds with other values.

    ``comparisons``: :func:`compare_with_base` of tonight against each base (the first one's rows are
    returned; with several bases an id counts when any base says added or changed).
    """
    is_stale = F.col(KIND).isin(ADDED, CHANGED)
    first_df = comparisons[0]
    if len(comparisons) == 1:
        return first_df.filter(is_stale).select(*header)
    ids_df = functools.reduce(
        DataFrame.unionByName, [df.filter(is_stale).select(gremlin.ID) for df in comparisons]
    ).distinct()
    return (
        first_df.filter(F.col(KIND) != F.lit(REMOVED))
        .join(ids_df, on=gremlin.ID, how="left_semi")
        .select(*header)
    )


def ids_to_remove(comparisons: Sequence[DataFrame]) -> DataFrame:
    """``(~id)``: every id some base holds that tonight lacks, once."""
    removed = [df.filter(F.col(KIND) == F.lit(REMOVED)).select(gremlin.ID) for df in comparisons]
    return functools.reduce(DataFrame.unionByName, removed).distinct()


def properties_to_clear(comparisons: Sequence[DataFrame]) -> DataFrame:
    """``(~id, PROPERTY)``: a property key some base holds a value for and tonight leaves blank, once."""
    cleared = [df.select(gremlin.ID, F.explode(CLEARED).alias(PROPERTY)) for df in comparisons]
    return functools.reduce(DataFrame.unionByName, cleared).distinct()
