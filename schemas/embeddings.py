"""Image embeddings: one row per input product, always (failed images carry status "error")."""
from __future__ import annotations

from pyspark.sql import types as T

from schemas.catalog import CATALOG_COLUMNS

SKU = "sku"
IMAGE_PATH = "image_path"
EMBEDDING = "embedding"
STATUS = "status"
ERROR = "error"
MODEL = "model"
WEIGHTS_SHA256 = "weights_sha256"
# sha256 of the image file's bytes the row was computed from (null when the file could not be read): with
# the configuration it decides whether a later run may reuse the row's vector.
CONTENT_SHA256 = "content_sha256"

STATUS_OK = "ok"
STATUS_ERROR = "error"

EMBEDDING_SCHEMA = T.StructType(
    [
        T.StructField(SKU, T.StringType(), False),
        T.StructField(IMAGE_PATH, T.StringType(), True),
        T.StructField(EMBEDDING, T.ArrayType(T.FloatType(), containsNull=False), True),
        T.StructField(STATUS, T.StringType(), False),
        T.StructField(ERROR, T.StringType(), True),
        T.StructField(MODEL, T.StringType(), False),
        T.StructField(WEIGHTS_SHA256, T.StringType(), True),
        T.StructField(CONTENT_SHA256, T.StringType(), True),
    ]
)

# What the embedding pandas UDF returns per image (udfs/embed_images.py); the job flattens it into the
# columns above. ``error`` is "<reason>: <detail>", reason one of udfs.image_models.IMAGE_ERROR_REASONS.
EMBED_RESULT_TYPE = T.StructType(
    [
        T.StructField(EMBEDDING, T.ArrayType(T.FloatType(), containsNull=False), True),
        T.StructField(STATUS, T.StringType(), True),  # Arrow gives pandas UDF results as nullable
        T.StructField(ERROR, T.StringType(), True),
        T.StructField(CONTENT_SHA256, T.StringType(), True),
    ]
)

# Catalog rows the embed job quarantines (<output>/rejects/embed/dt=D/): the catalog's columns as read,
# plus why. Image failures are not here: they stay in the embeddings output with status "error".
REJECT_REASON = "reason"
REJECT_MISSING_SKU = "missing_sku"
REJECT_DUPLICATE_SKU = "duplicate_sku"
EMBED_REJECT_COLUMNS = (*CATALOG_COLUMNS, REJECT_REASON)
EMBED_REJECT_SCHEMA = T.StructType(
    [T.StructField(column, T.StringType(), True) for column in EMBED_REJECT_COLUMNS]
)
