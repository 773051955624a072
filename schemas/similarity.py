"""Similarity edges between products, best first."""
from __future__ import annotations

from pyspark.sql import types as T

SRC = "src"
DST = "dst"
SCORE = "score"
RANK = "rank"

# Metric names, and which direction is better for each.
COSINE = "cosine"
DOT = "dot"
L2 = "l2"
EXP_L1 = "exp_l1"  # the reference implementation's 1 - exp(-sqrt(L1 distance))
METRICS = (COSINE, DOT, L2, EXP_L1)
HIGHER_IS_CLOSER = {COSINE: True, DOT: True, L2: False, EXP_L1: False}

TOPK_EDGE_SCHEMA = T.StructType(
    [
        T.StructField(SRC, T.StringType(), False),
        T.StructField(DST, T.StringType(), False),
        T.StructField(SCORE, T.DoubleType(), False),
        T.StructField(RANK, T.IntegerType(), False),
    ]
)

ALL_PAIRS_EDGE_SCHEMA = T.StructType(
    [
        T.StructField(SRC, T.StringType(), False),
        T.StructField(DST, T.StringType(), False),
        T.StructField(SCORE, T.DoubleType(), False),
    ]
)

# What each tile task reports to the driver: the edge files it wrote (``file`` null: the edges were only
# counted, ``--sink count``) and their rows (not an output).
EDGE_FILE = "file"
EDGE_ROWS = "rows"
EDGE_METRICS = "metrics"  # the gate's counts of the file's edges (JSON; null when the gate is off)
WRITTEN_SCHEMA = T.StructType(
    [
        T.StructField(EDGE_FILE, T.StringType(), True),
        T.StructField(EDGE_ROWS, T.LongType(), False),
        T.StructField(EDGE_METRICS, T.StringType(), True),
    ]
)

# Top-k's intermediate rows between the pair step and the merge step (not an output): one row per
# (block pair, block), the block's rows' float32 candidates as raw little-endian arrays.
BLOCK = "block"
CANDIDATE_KEYS = "candidate_keys"  # float32, rows x width
CANDIDATE_COLUMNS = "candidate_columns"  # int32 row indices, rows x width
CANDIDATES_SCHEMA = T.StructType(
    [
        T.StructField(BLOCK, T.IntegerType(), False),
        T.StructField(CANDIDATE_KEYS, T.BinaryType(), False),
        T.StructField(CANDIDATE_COLUMNS, T.BinaryType(), False),
    ]
)

# Output modes (the report's "mode").
MODE_TOPK = "topk"
MODE_ALL_PAIRS = "all_pairs"

# Why an embedding row took no part in the similarity (rejects' "reason", the report's counts).
# A row whose status is not "ok" was already reported by the embed job: it is dropped on purpose here.
REASON_STATUS_ERROR = "embedding_status_error"
REASON_MISSING_SKU = "missing_sku"  # null or empty sku
REASON_DUPLICATE_SKU = "duplicate_sku"  # every copy of a sku that occurs in more than one "ok" row
REASON_NULL_EMBEDDING = "null_embedding"
REASON_WRONG_LENGTH = "wrong_length"  # length != the expected dimension (see jobs/similarity.py)
REASON_NON_FINITE = "non_finite"  # NaN or infinite value, or a squared norm beyond float32's range
REASON_ZERO_NORM = "zero_norm"  # all zeros: cosine is undefined (only rejected for --metric cosine)
DROPPED_REASONS = (REASON_STATUS_ERROR,)
# The check step's staged outputs: the valid skus (read by the tile tasks) and the rejected rows
# (REJECT_SCHEMA, published as the rejects dataset). Dropped rows are counted only.
CHECKED_VALID = "valid"
CHECKED_REJECTED = "rejected"
REJECT_REASONS = (
    REASON_MISSING_SKU,
    REASON_DUPLICATE_SKU,
    REASON_NULL_EMBEDDING,
    REASON_WRONG_LENGTH,
    REASON_NON_FINITE,
    REASON_ZERO_NORM,
)

REASON = "reason"
EMBEDDING_LENGTH = "embedding_length"
# What the check step learns of each embedding before the expected length is known (not an output).
NON_FINITE = "non_finite"
ZERO_NORM = "zero_norm"

# What the checks learn of each input row (udfs.similarity.checks.file_facts; not an output).
FACTS_SCHEMA = T.StructType(
    [
        T.StructField("sku", T.StringType(), True),
        T.StructField("image_path", T.StringType(), True),
        T.StructField("status", T.StringType(), True),
        T.StructField(EMBEDDING_LENGTH, T.IntegerType(), True),
        T.StructField(NON_FINITE, T.BooleanType(), True),
        T.StructField(ZERO_NORM, T.BooleanType(), True),
    ]
)
# Rejected embedding rows: one per input row left out for a data problem (the embedding is not copied).
REJECT_SCHEMA = T.StructType(
    [
        T.StructField("sku", T.StringType(), True),
        T.StructField("image_path", T.StringType(), True),
        T.StructField(EMBEDDING_LENGTH, T.IntegerType(), True),
        T.StructField(REASON, T.StringType(), False),
    ]
)
