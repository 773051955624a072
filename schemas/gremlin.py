"""The Gremlin CSV export for Amazon Neptune's bulk loader: headers, ids, writer options, reject reasons.

One vertex per catalog product and one edge per similarity pair. The column names of the frames the
export writes ARE the CSV headers (``~id``, ``name:String(single)``, ``score:Double``...), so the
contract lives here once and both the export job and the validator use it.
"""

from __future__ import annotations

# System columns (case sensitive, each at most once per header).
ID = "~id"
LABEL = "~label"
FROM = "~from"
TO = "~to"
VERTEX_SYSTEM_COLUMNS = (ID, LABEL)
EDGE_SYSTEM_COLUMNS = (ID, FROM, TO, LABEL)
VERTEX_REQUIRED_COLUMNS = (ID,)
EDGE_REQUIRED_COLUMNS = (ID, FROM, TO)

# Property types the loader accepts (type names are case-insensitive); Boolean is accepted for Bool.
TYPE_BOOL = "Bool"
TYPE_BYTE = "Byte"
TYPE_SHORT = "Short"
TYPE_INT = "Int"
TYPE_LONG = "Long"
TYPE_FLOAT = "Float"
TYPE_DOUBLE = "Double"
TYPE_STRING = "String"
TYPE_DATE = "Date"
TYPE_DATETIME = "Datetime"
PROPERTY_TYPES = (
    TYPE_BOOL,
    TYPE_BYTE,
    TYPE_SHORT,
    TYPE_INT,
    TYPE_LONG,
    TYPE_FLOAT,
    TYPE_DOUBLE,
    TYPE_STRING,
    TYPE_DATE,
    TYPE_DATETIME,
)
TYPE_ALIASES = {"boolean": TYPE_BOOL}
# The integer types' ranges (Java's byte, short, int and long).
INTEGER_RANGES = {
    TYPE_BYTE: (-(2**7), 2**7 - 1),
    TYPE_SHORT: (-(2**15), 2**15 - 1),
    TYPE_INT: (-(2**31), 2**31 - 1),
    TYPE_LONG: (-(2**63), 2**63 - 1),
}
CARDINALITY_SINGLE = "single"
CARDINALITY_SET = "set"
ARRAY_SEPARATOR = ";"
MAX_VALUE_BYTES = 55 * 1024 * 1024


def property_header(name: str, type_name: str, *, cardinality: str | None = None) -> str:
    """``name:Type`` or ``name:Type(cardinality)``; a ``:`` inside the name is escaped ``\\:``."""
    escaped = name.replace(":", "\\:")
    suffix = f"({cardinality})" if cardinality else ""
    return f"{escaped}:{type_name}{suffix}"


# Vertex properties (all single cardinality: a product has one name, one brand...).
VERTEX_PROPERTIES = {
    "sku": property_header("sku", TYPE_STRING, cardinality=CARDINALITY_SINGLE),
    "name": property_header("name", TYPE_STRING, cardinality=CARDINALITY_SINGLE),
    "brand": property_header("brand", TYPE_STRING, cardinality=CARDINALITY_SINGLE),
    "category": property_header("category", TYPE_STRING, cardinality=CARDINALITY_SINGLE),
    "subcategory": property_header("subcategory", TYPE_STRING, cardinality=CARDINALITY_SINGLE),
    "image": property_header("image", TYPE_STRING, cardinality=CARDINALITY_SINGLE),
}
VERTEX_EMBEDDING_STATUS = property_header("embeddingStatus", TYPE_STRING, cardinality=CARDINALITY_SINGLE)

# Edge properties (edge properties are always single: no cardinality, no arrays).
EDGE_SCORE = property_header("score", TYPE_DOUBLE)
EDGE_RANK = property_header("rank", TYPE_INT)
EDGE_METRIC = property_header("metric", TYPE_STRING)
EDGE_HIGHER_IS_CLOSER = property_header("higherIsCloser", TYPE_BOOL)

VERTEX_HEADER = (ID, LABEL, *VERTEX_PROPERTIES.values())
VERTEX_HEADER_WITH_STATUS = (*VERTEX_HEADER, VERTEX_EMBEDDING_STATUS)
EDGE_HEADER_TOPK = (ID, FROM, TO, LABEL, EDGE_SCORE, EDGE_RANK, EDGE_METRIC, EDGE_HIGHER_IS_CLOSER)
EDGE_HEADER_ALL_PAIRS = (ID, FROM, TO, LABEL, EDGE_SCORE, EDGE_METRIC, EDGE_HIGHER_IS_CLOSER)

# Ids: a vertex is `product:<sku>`; an edge is `<label>:<len(from)>:<from>-><to>`. Labels are restricted
# to LABEL_PATTERN (no ':'), so the edge id decodes uniquely back to (label, from, to).
VERTEX_ID_PREFIX = "product:"
DEFAULT_VERTEX_LABEL = "product"
DEFAULT_EDGE_LABEL = "similar"
LABEL_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$"
EDGE_ID_ARROW = "->"

# Layout of an export.
VERTICES_DIR = "vertices"
EDGES_DIR = "edges"
REJECTS_DIR = "_rejects"
MANIFEST_NAME = "manifest.json"

COMPRESSION_GZIP = "gzip"
COMPRESSION_BZIP2 = "bzip2"
COMPRESSION_NONE = "none"
COMPRESSIONS = (COMPRESSION_GZIP, COMPRESSION_BZIP2, COMPRESSION_NONE)
FILE_SUFFIX = {COMPRESSION_GZIP: ".csv.gz", COMPRESSION_BZIP2: ".csv.bz2", COMPRESSION_NONE: ".csv"}

# Spark's CSV writer, told to speak RFC 4180: a quote inside a quoted field is doubled (escape='"',
# never a backslash); null and "" are both written as a blank field (the loader's "no value"); leading
# and trailing spaces are data, not trimmed; one header line in every file; "\n" ends a record.
GREMLIN_CSV_WRITE_OPTIONS = {
    "header": "true",
    "sep": ",",
    "quote": '"',
    "escape": '"',
    "escapeQuotes": "true",
    "quoteAll": "false",
    "nullValue": "",
    "emptyValue": "",
    "encoding": "UTF-8",
    "lineSep": "\n",
    "ignoreLeadingWhiteSpace": "false",
    "ignoreTrailingWhiteSpace": "false",
}

# Internal columns of the export's frames.
REASON = "reject_reason"
ROW_ORDER = "_row_order"
EDGE_KEY = "_edge_key"

# Why a catalog row is not a vertex.
VERTEX_MISSING_SKU = "missing_sku"
VERTEX_SKU_HAS_NUL = "sku_has_nul"
VERTEX_MALFORMED_ROW = "malformed_csv_row"
VERTEX_DUPLICATE_SKU = "duplicate_sku"  # rejected: same sku, different values (the first row is kept)
VERTEX_DUPLICATE_IDENTICAL = "duplicate_sku_identical"  # dropped on purpose: an exact copy of a kept row
VERTEX_REJECT_REASONS = (VERTEX_MALFORMED_ROW, VERTEX_MISSING_SKU, VERTEX_SKU_HAS_NUL, VERTEX_DUPLICATE_SKU)

# Why a similarity row is not an edge (checked in this order; the first that applies is the reason).
EDGE_MISSING_ENDPOINT = "missing_endpoint"
EDGE_MISSING_SCORE = "missing_score"
EDGE_NON_FINITE_SCORE = "non_finite_score"
EDGE_SELF_LOOP = "self_loop"
EDGE_FROM_MISSING = "from_vertex_missing"
EDGE_TO_MISSING = "to_vertex_missing"
EDGE_DUPLICATE = "duplicate_edge"  # rejected: same (from, to), different score or rank (the best is kept)
EDGE_DUPLICATE_IDENTICAL = "duplicate_edge_identical"  # dropped on purpose: an exact copy of a kept edge
EDGE_REJECT_REASONS = (
    EDGE_MISSING_ENDPOINT,
    EDGE_MISSING_SCORE,
    EDGE_NON_FINITE_SCORE,
    EDGE_SELF_LOOP,
    EDGE_FROM_MISSING,
    EDGE_TO_MISSING,
    EDGE_DUPLICATE,
)

# What a night changes (written beside the export's CSVs, under DIFF_DIR): rows to load (Gremlin CSVs
# with the export's headers), ids to remove and properties to clear (CSVs of these headers).
DIFF_DIR = "diff"
DIFF_REMOVE_DIR = "remove"
DIFF_CLEAR_DIR = "clear"
REMOVE_HEADER = (ID,)
CLEAR_HEADER = (ID, "property")

# Beside the dated exports (in the gremlin root): which export the graph holds, written by the loader
# after a verified load, and which one a load has started on (removed when it succeeds).
LOADED_MARKER_NAME = "_LOADED.json"
LOADING_MARKER_NAME = "_LOADING.json"
