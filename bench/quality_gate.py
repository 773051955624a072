"""What a quality gate costs: the gate vs great-expectations' own Spark engine vs hand-written checks.

    .venv/bin/python -m bench.quality_gate [--quick]

Two datasets, each written to Parquet and read back, the way a job's gate reads its staged output:

* ``similarity_edges``: top-10 edges of N products (``spark.range``-generated), ``top_k=10``
  (13 expectations), frames cached by the gate (the similarity job's default);
* ``test`` (NCF): U users x 100 rows (1 positive + 99 negatives), the preprocess job's test suite
  (13 expectations), frames re-read rather than cached (``cache_frames=False``, as the job runs it).

Three ways to run the same suite, same frame, same run:

* ``gate``: ``run_gate`` as the jobs call it (one Spark query per dataset for the metrics, each
  expectation decided on them by great-expectations' rules, great-expectations not imported);
* ``gx_engine``: every expectation through great-expectations' own Spark engine (one or more Spark
  jobs per expectation: how the gate ran before);
* ``hand_written``: the same checks as one aggregate plus the group-bys they need, no
  great-expectations (similarity edges only).

Ratios are within one run; the machine is shared, so compare ratios, not seconds across runs.
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

from jobs.common import quality, quality_metrics
from jobs.common.spark import get_spark
from schemas import expectations as suites
from schemas import interactions as ia
from schemas import similarity as S

TOP_K = 10
TEST_ROWS_PER_USER = 100
N_ITEMS = 50_000
REPEATS = 3
RUN_DATE = "2024-03-31"


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


def ncf_test_df(spark: SparkSession, users: int) -> DataFrame:
    """A valid NCF test set: per user one positive and 99 distinct negatives, sorted by user."""
    row = F.col("id") % TEST_ROWS_PER_USER
    user = (F.col("id") / TEST_ROWS_PER_USER).cast("int")
    return spark.range(users * TEST_ROWS_PER_USER).select(
        user.alias(ia.USER_IDX),
        ((user * 7919 + row) % N_ITEMS).cast("int").alias(ia.ITEM_IDX),
        F.when(row == 0, 1.0).otherwise(0.0).cast("float").alias(ia.LABEL),
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


def _case(
    tmp: str, dataset: str, staged: DataFrame, context: dict[str, Any], cache: bool
) -> tuple[float, float, int]:
    """Best-of seconds of the gate and of great-expectations' engine on one staged frame, and its rows."""

    def gate() -> None:
        result = quality.run_gate(
            "bench", {dataset: staged}, reports_root=os.path.join(tmp, "R"), run_date=RUN_DATE,
            context=context, cache_frames=cache,
        )
        assert result["success"], result["failed_critical"]

    def gx_engine() -> None:
        expectations = suites.SUITES[dataset](quality.QualityThresholds(), context)
        checks = quality_metrics.validate_with_gx_engine(dataset, staged, expectations, cache=cache)
        assert all(c["success"] for c in checks if c["severity"] == quality.CRITICAL), checks

    gate_s = _best(gate)
    return gate_s, _best(gx_engine), staged.count()


def run(quick: bool) -> list[dict[str, Any]]:
    spark = get_spark("bench-quality-gate", master=os.environ.get("STYLEGRAPH_SPARK_MASTER", "local[2]"))
    sizes = [1_000] if quick else [1_000, 50_000]
    test_users = [2_000] if quick else [2_000, 100_000]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for products in sizes:
            path = os.path.join(tmp, f"edges-{products}")
            edges_df(spark, products).write.parquet(path)
            staged = spark.read.parquet(path)
            gate_s, gx_s, n = _case(tmp, quality.SIMILARITY_EDGES, staged, {quality.TOP_K: TOP_K}, True)
            peer_s = _best(lambda staged=staged: hand_written_checks(staged))
            rows.append(_row(quality.SIMILARITY_EDGES, n, gate_s, gx_s, peer_s))
        for users in test_users:
            path = os.path.join(tmp, f"test-{users}")
            ncf_test_df(spark, users).write.parquet(path)
            staged = spark.read.parquet(path)
            context = {
                quality.N_USERS: users,
                quality.N_ITEMS: N_ITEMS,
                quality.TEST_NEGATIVES: TEST_ROWS_PER_USER - 1,
            }
            gate_s, gx_s, n = _case(tmp, quality.TEST, staged, context, False)
            rows.append(_row(quality.TEST, n, gate_s, gx_s, None))
    return rows


def _row(dataset: str, n: int, gate_s: float, gx_s: float, peer_s: float | None) -> dict[str, Any]:
    return {
        "bench": "quality_gate",
        "dataset": dataset,
        "rows": n,
        "gate_s": round(gate_s, 2),
        "gx_engine_s": round(gx_s, 2),
        "hand_written_s": round(peer_s, 2) if peer_s is not None else None,
        "gx_engine_vs_gate": round(gx_s / gate_s, 2),
        "gate_vs_hand_written": round(gate_s / peer_s, 2) if peer_s else None,
        "gate_rows_per_s": int(n / gate_s),
        "load_average_1_5_15": [round(x, 1) for x in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rows = run(args.quick)
    lines = [
        f"machine: {os.cpu_count()} cores, {platform.machine()}, Spark local[2], shared with other engineers",
        "| dataset | rows | gate s | GE engine s | GE engine / gate | hand-written s | gate / hand-written "
        "| gate rows/s | load 1/5/15 |",
        "|" + "---|" * 9,
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['rows']:,} | {r['gate_s']} | {r['gx_engine_s']} "
            f"| {r['gx_engine_vs_gate']}x "
            f"| {r['hand_written_s'] if r['hand_written_s'] is not None else '-'} "
            f"| {str(r['gate_vs_hand_written']) + 'x' if r['gate_vs_hand_written'] else '-'} "
            f"| {r['gate_rows_per_s']:,} | {r['load_average_1_5_15']} |"
        )
    print("\n".join(lines))  # noqa: T201 - a benchmark's table is its output


if __name__ == "__main__":
    main()
