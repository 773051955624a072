"""The product catalog: a CSV with a header, one row per product."""
from __future__ import annotations

from pyspark.sql import types as T

SKU = "sku"
NAME = "name"
BRAND = "brand"
CATEGORY = "category"
SUBCATEGORY = "subcategory"
IMAGE_PATH = "image_path"  # relative to the images root

CATALOG_COLUMNS = (SKU, NAME, BRAND, CATEGORY, SUBCATEGORY, IMAGE_PATH)

CATALOG_SCHEMA = T.StructType([T.StructField(column, T.StringType(), True) for column in CATALOG_COLUMNS])

# Options every reader and writer of the catalog CSV uses: RFC 4180 (a quote inside a quoted field is
# doubled), fields may span lines.
CATALOG_CSV_OPTIONS = {
    "header": "true",
    "quote": '"',
    "escape": '"',
    "multiLine": "true",
    "encoding": "UTF-8",
    "ignoreLeadingWhiteSpace": "false",
    "ignoreTrailingWhiteSpace": "false",
}
