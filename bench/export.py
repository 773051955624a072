"""Benchmark: the Gremlin CSV export on local[2] against Spark's native CSV writer, same run, same rows.

    .venv/bin/python -m bench.export            # 5 M edges (several minutes on 2 shared cores)
    .venv/bin/python -m bench.export --quick    # 200 k edges

Input: a 50,000-product catalog CSV and top-k similarity edges (src, dst, score, rank) as Parquet.
- "this job, --quality off": ``jobs.export_gremlin.main`` end to end (catalog read and checks, 50 k
  vertices written, every edge checked against the vertices and for duplicates, rejects, the edge CSVs,
  every file read back for the manifest's rows and sha256, staging and publish, report).
- "spark native CSV writer": ``spark.read.parquet(edges)`` with the same edge columns already formatted
  (same ~id, ~from, ~to, label, score, rank, metric, higherIsCloser expressions), written by
  ``df.write.csv`` with the same options and codec: what a user would write without the export's checks.
- with ``--with-gate``, "this job, quality gate on": the same with the quality gate wired in before
  publishing (it reads the staged CSVs back with Spark and runs great-expectations suites); timed once.
The native writer and the job without the gate run twice, alternating, the faster kept (shared machine).
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

LOG = logging.getLogger("bench.export")

RUN_DATE = "2024-03-31"
PRODUCTS = 50_000
TARGET_RATIO = 0.90
REPEATS = 2


def make_inputs(spark: Any, root: Path, edges: int) -> tuple[Path, Path]:
    """A catalog CSV of PRODUCTS products and ``edges`` top-k edges (k = edges / PRODUCTS) as Parquet."""
    from pyspark.sql import functions as F

    catalog = root / "catalog.csv"
    with open(catalog, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["sku", "name", "brand", "category", "subcategory", "image_path"])
        for i in range(PRODUCTS):
            writer.writerow(
                [
                    f"SKU{i:06d}",
                    f'Shoe {i}, "model" {i % 97}',
                    f"Brand {i % 300}",
                    "Shoes",
                    f"Sub {i % 20}",
                    f"Shoes/Sub {i % 20}/Brand {i % 300}/SKU{i:06d}.jpg",
                ]
            )
    k = max(1, edges // PRODUCTS)
    idx = F.col("id")
    src = (idx % PRODUCTS).cast("int")
    step = (F.floor(idx / PRODUCTS) + 1).cast("int")
    (
        spark.range(edges, numPartitions=8)
        .select(
            F.format_string("SKU%06d", src).alias("src"),
            F.format_string("SKU%06d", ((src + step * 7919) % PRODUCTS).cast("int")).alias("dst"),
            (F.lit(1.0) - step / F.lit(k + 1.0) + F.rand(seed=7) * 1e-3).alias("score"),
            step.alias("rank"),
        )
        .write.parquet(str(root / "edges"))
    )
    return catalog, root / "edges"


def native_write(spark: Any, edges: Path, out: Path, compression: str) -> float:
    """Spark's own CSV writer on the already-formatted edge frame (same columns and options as the job)."""
    from pyspark.sql import functions as F

    from jobs.transforms import gremlin as tg
    from schemas import gremlin as G

    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    frame = spark.read.parquet(str(edges)).withColumn(G.REASON, F.lit(None).cast("string"))
    formatted = frame.transform(tg.to_edge_rows, label="similar", metric="cosine", higher_is_closer=True)
    formatted.write.options(**G.GREMLIN_CSV_WRITE_OPTIONS).option("compression", compression).csv(str(out))
    return time.perf_counter() - started


def job_write(
    catalog: Path, edges: Path, out: Path, compression: str, *extra: str
) -> tuple[float, dict[str, Any]]:
    from jobs import export_gremlin

    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    report = export_gremlin.main(
        [
            "--catalog",
            str(catalog),
            "--edges",
            str(edges),
            "--output",
            str(out),
            "--run-date",
            RUN_DATE,
            "--compression",
            compression,
            "--report-dir",
            str(out.parent / "reports"),
            *extra,
        ]
    )
    return time.perf_counter() - started, report


def run(quick: bool, with_gate: bool = False) -> list[dict[str, Any]]:
    """Time the job and the native writer for gzip and uncompressed output; one dict per measurement."""
    from jobs.common.spark import get_spark

    edges = 200_000 if quick else 5_000_000
    spark = get_spark("stylegraph-bench-export", master="local[2]")
    root = Path(tempfile.mkdtemp(prefix="bench-export-"))
    results: list[dict[str, Any]] = []
    try:
        catalog, edges_path = make_inputs(spark, root, edges)
        job_write(catalog, edges_path, root / "warmup", "none", "--quality", "off")  # JIT before timing
        for compression in ("gzip", "none"):
            native_s, job_s, report = float("inf"), float("inf"), {}
            for _ in range(REPEATS):
                native_s = min(native_s, native_write(spark, edges_path, root / "native", compression))
                seconds, report = job_write(
                    catalog, edges_path, root / "job", compression, "--quality", "off"
                )
                job_s = min(job_s, seconds)
            timed = [("this job, --quality off", job_s)]
            if with_gate:
                timed.append(
                    (
                        "this job, quality gate on (1 run)",
                        job_write(catalog, edges_path, root / "job", compression)[0],
                    )
                )
            written = report["totals"]["edges"]["rows"]
            assert written == edges, f"the job wrote {written} edges, expected {edges}"
            case = f"{edges:,} edges, {compression}"
            files = {
                "files": report["totals"]["edges"]["files"],
                "mb": round(report["totals"]["edges"]["bytes"] / 2**20, 1),
            }
            results.append(
                {
                    "bench": "export",
                    "case": case,
                    "impl": "spark native CSV writer",
                    "seconds": round(native_s, 2),
                    "edges_per_s": round(edges / native_s),
                }
            )
            for impl, seconds in timed:
                results.append(
                    {
                        "bench": "export",
                        "case": case,
                        "impl": impl,
                        "seconds": round(seconds, 2),
                        "edges_per_s": round(edges / seconds),
                        "rate_vs_native": round(native_s / seconds, 3),
                        "target": f">= {TARGET_RATIO}",
                        **files,
                    }
                )
            LOG.info("%s", results[-1 - len(timed) :])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--with-gate", action="store_true", help="also time the job with its quality gate")
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    load_before = os.getloadavg()
    rows = run(args.quick, with_gate=args.with_gate)
    load_after = os.getloadavg()
    lines = [
        f"machine: {os.cpu_count()} cores, local[2], no GPU; shared with other work "
        f"(1-min load average {load_before[0]:.1f} before, {load_after[0]:.1f} after); best of {REPEATS}",
        "| case | implementation | seconds | edges/s | rate vs native | edge files (MB) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        files = f"{row['files']} ({row['mb']})" if "files" in row else ""
        lines.append(
            f"| {row['case']} | {row['impl']} | {row['seconds']} | {row['edges_per_s']:,} | "
            f"{row.get('rate_vs_native', '')} | {files} |"
        )
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
