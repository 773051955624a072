"""What a quality gate costs: great-expectations on Spark vs the same checks as one hand-written Spark pass.

    .venv/bin/python -m bench.quality_gate [--quick]

Data: top-10 similarity edges of N products (``spark.range``-generated, written to Parquet and read back,
the way a job's gate reads its staged output). Gate: ``run_gate("similarity", {"similarity_edges": ...})``
with ``top_k=10`` (13 expectations). Peer: the same checks written by hand: one aggregate for the row-level
conditions plus one group-by per (src, dst) uniqueness and per-src count. The gate's extra cost is what
great-expectations' metric-per-job execution and its result objects add. Ratios are within one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.common import quality
from jobs.common.spark import get_spark
from schemas import similarity as S

TOP_K = 10
REPEATS = 2


def edges_df(spark: SparkSession, products: int) -> DataFrame:
    """``products * TOP_K`` valid edges: src != dst, ranks 1..k, finite scores."""
    return (
        spark.range(products * TOP_K)
        .select(
            (F.col("id") / TOP_K).cast("long").alias("p"),
            (F.col("id") % TOP_K + 1).cast("int").alias(S.RANK),
        )
        .select(
            F.concat(F.lit("sku-"), F.col("p")).alias(S.SRC),
            F.concat(F.lit("sku-"), (F.col("p") + F.col(S.RANK)) % products).alias(S.DST),
            (F.lit(1.0) / F.col(S.RANK)).alias(S.SCORE),
            F.col(S.RANK),
        )
    )


def hand_written_checks(edges: DataFrame) -> bool:
    """The gate's checks as one aggregate and two group-bys."""
    score = F.col(S.SCORE)
    row = edges.agg(
        F.count(F.lit(1)).alias("rows"),
        F.sum(F.when(F.col(S.SRC).isNull() | F.col(S.DST).isNull() | score.isNull(), 1).otherwise(0)).alias(
            "nulls"
        ),
        F.sum(F.when(F.col(S.SRC) == F.col(S.DST), 1).otherwise(0)).alias("loops"),
        F.sum(F.when(F.isnan(score) | (F.abs(score) == float("inf")), 1).otherwise(0)).alias("non_finite"),
        F.sum(F.when(F.col(S.RANK).isNull() | ~F.col(S.RANK).between(1, TOP_K), 1).otherwise(0)).alias(
            "ranks"
        ),
    ).first()
    duplicates = edges.groupBy(S.SRC, S.DST).count().filter(F.col("count") > 1).limit(1).count()
    too_many = edges.groupBy(S.SRC).count().filter(F.col("count") > TOP_K).limit(1).count()
    return row["rows"] > 0 and not any(
        (row["nulls"], row["loops"], row["non_finite"], row["ranks"], duplicates, too_many)
    )


def _best(fn: Any) -> float:
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def run(quick: bool) -> list[dict[str, Any]]:
    spark = get_spark("bench-quality-gate", master=os.environ.get("STYLEGRAPH_SPARK_MASTER", "local[2]"))
    sizes = [1_000] if quick else [1_000, 50_000]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for products in sizes:
            path = os.path.join(tmp, f"edges-{products}")
            edges_df(spark, products).write.parquet(path)
            staged = spark.read.parquet(path)
            edges = products * TOP_K

            def gate(staged: DataFrame = staged) -> None:
                result = quality.run_gate(
                    "similarity",
                    {quality.SIMILARITY_EDGES: staged},
                    reports_root=os.path.join(tmp, "R"),
                    run_date="2024-03-31",
                    context={quality.TOP_K: TOP_K},
                )
                assert result["success"], result["failed_critical"]

            def peer(staged: DataFrame = staged) -> None:
                assert hand_written_checks(staged)

            gate_s, peer_s = _best(gate), _best(peer)
            rows.append(
                {
                    "products": products,
                    "edges": edges,
                    "gate_s": round(gate_s, 2),
                    "hand_written_s": round(peer_s, 2),
                    "gate_vs_hand_written": round(gate_s / peer_s, 2),
                    "gate_edges_per_s": int(edges / gate_s),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rows = run(args.quick)
    print(
        f"machine: {os.cpu_count()} cores, {platform.machine()}, Spark local[2], shared with other engineers"
    )
    print(f"{'products':>9} {'edges':>9} {'gate s':>7} {'hand s':>7} {'ratio':>6} {'edges/s':>9}")
    for r in rows:
        print(
            f"{r['products']:>9} {r['edges']:>9} {r['gate_s']:>7} {r['hand_written_s']:>7} "
            f"{r['gate_vs_hand_written']:>6} {r['gate_edges_per_s']:>9}"
        )


if __name__ == "__main__":
    main()
