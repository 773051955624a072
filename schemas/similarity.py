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
