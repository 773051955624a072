"""Image embeddings: one row per input product, always (failed images carry status "error")."""
from __future__ import annotations

from pyspark.sql import types as T

SKU = "sku"
IMAGE_PATH = "image_path"
EMBEDDING = "embedding"
STATUS = "status"
ERROR = "error"
MODEL = "model"
WEIGHTS_SHA256 = "weights_sha256"

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
    ]
)
