"""Benchmark: the Gremlin CSV export on local[2] against Spark's native CSV writer, same run, same rows.

    .venv/bin/python -m bench.export            # 5 M edges (several minutes on 2 shared cores)
    .venv/bin/python -m bench.export --quick    # 200 k edges

Input: a 50,000-product catalog CSV and top-k similarity edges (src, dst, score, rank) as Parquet.
- "this job, --quality off": ``jobs.export_gremlin.main`` end to end (catalog read and checks, 50 k
  vertices written, every edge checked against the vertices and for duplicates, rejects, the edge CSVs
  written by Python tasks with their rows, bytes and sha256, staging and publish, report).
- "spark native CSV writer, edges": ``spark.read.parquet(edges)`` with the same edge columns already
  formatted (same ~id, ~from, ~to, label, score, rank, metric, higherIsCloser expressions), written by
  ``df.write.csv`` with the same options and codec: what a user would write without the export's checks.
  The issue's target is measured against this peer.
- "spark native CSV writer, edges + vertices": the same plus the catalog read with its declared schema and
  written as vertex rows (same columns and options): the same two outputs the job writes, unchecked.
- "this job, quality gate on" (unless ``--no-gate``): the job with its default ``--quality enforce`` gate
  (every vertex and the head of every edge file parsed back and checked by great-expectations); 1 run.
The native writers and the job without the gate run twice, alternating, the faster kept (shared machine).
Each row also gives the CPU seconds of the driver, the JVM and the Python workers (psutil, the run kept):
on a machine shared with other work, CPU seconds move less than wall seconds.
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
NATIVE = "spark native CSV writer, edges"
NATIVE_BOTH = "spark native CSV writer, edges + vertices"
JOB = "this job, --quality off"
JOB_GATE = "this job, quality gate on (1 run)"


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its children (the JVM, Spark's Python workers)."""
    import psutil

    total = 0.0
    for process in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.Error:  # a worker that just exited
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[float, float, Any]:
    """Wall seconds, CPU seconds and the result of ``fn(*args, **kwargs)``."""
    cpu_before = cpu_seconds()
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - started, cpu_seconds() - cpu_before, result


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


def native_write(
    spark: Any, catalog: Path, edges: Path, out: Path, compression: str, *, with_vertices: bool
) -> float:
    """Spark's own CSV writer on the already-formatted edge frame (same columns and options as the job),
    and with ``with_vertices`` on the catalog's vertex rows too (the job's two outputs, unchecked)."""
    from pyspark.sql import functions as F

    from jobs.transforms import gremlin as tg
    from schemas import catalog as C
    from schemas import gremlin as G

    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    no_reason = F.lit(None).cast("string")
    if with_vertices:
        catalog_df = spark.read.schema(C.CATALOG_SCHEMA).options(**C.CATALOG_CSV_OPTIONS).csv(str(catalog))
        vertices = catalog_df.withColumn(G.REASON, no_reason).transform(
            tg.to_vertex_rows, label="product", with_status=False
        )
        vertices.write.options(**G.GREMLIN_CSV_WRITE_OPTIONS).option("compression", compression).csv(
            str(out / "vertices")
        )
    frame = spark.read.parquet(str(edges)).withColumn(G.REASON, no_reason)
    formatted = frame.transform(tg.to_edge_rows, label="similar", metric="cosine", higher_is_closer=True)
    formatted.write.options(**G.GREMLIN_CSV_WRITE_OPTIONS).option("compression", compression).csv(
        str(out / "edges")
    )
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


def run(quick: bool, with_gate: bool = True) -> list[dict[str, Any]]:
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
            best: dict[str, tuple[float, float, Any]] = {}
            for _ in range(REPEATS):
                peer = (spark, catalog, edges_path, root / "native", compression)
                wall, cpu, (_, report) = timed(
                    job_write, catalog, edges_path, root / "job", compression, "--quality", "off"
                )
                for impl, measured in (
                    (NATIVE, timed(native_write, *peer, with_vertices=False)),
                    (NATIVE_BOTH, timed(native_write, *peer, with_vertices=True)),
                    (JOB, (wall, cpu, report)),
                ):
                    if impl not in best or measured[0] < best[impl][0]:
                        best[impl] = measured
            if with_gate:
                wall, cpu, (_, report) = timed(job_write, catalog, edges_path, root / "job", compression)
                best[JOB_GATE] = (wall, cpu, report)
            report = best[JOB][2]
            written = report["totals"]["edges"]["rows"]
            assert written == edges, f"the job wrote {written} edges, expected {edges}"
            case = f"{edges:,} edges, {compression}"
            files = {
                "files": report["totals"]["edges"]["files"],
                "mb": round(report["totals"]["edges"]["bytes"] / 2**20, 1),
            }
            native_s, native_cpu = best[NATIVE][:2]
            both_s = best[NATIVE_BOTH][0]
            for impl, (seconds, cpu, job_report) in best.items():
                row = {
                    "bench": "export",
                    "case": case,
                    "impl": impl,
                    "seconds": round(seconds, 2),
                    "cpu_s": round(cpu, 1),
                    "edges_per_s": round(edges / seconds),
                }
                if impl in (JOB, JOB_GATE):
                    row |= {
                        "rate_vs_native": round(native_s / seconds, 3),
                        "rate_vs_same_output": round(both_s / seconds, 3),
                        "cpu_vs_native": round(cpu / native_cpu, 2),
                        "target": f">= {TARGET_RATIO}",
                        "phases": ", ".join(
                            f"{name} {value:.2f}"
                            for name, value in job_report.get("seconds_by_phase", {}).items()
                            if value
                        ),
                        **files,
                    }
                results.append(row)
            LOG.info("%s", results[-len(best) :])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-gate", action="store_true", help="do not time the job with its quality gate")
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    load_before = os.getloadavg()
    rows = run(args.quick, with_gate=not args.no_gate)
    load_after = os.getloadavg()
    lines = [
        f"machine: {os.cpu_count()} cores, local[2], no GPU; shared with other work "
        f"(1-min load average {load_before[0]:.1f} before, {load_after[0]:.1f} after); best of {REPEATS}",
        "| case | implementation | seconds | CPU s | edges/s | rate vs native (edges) | "
        "rate vs native (edges + vertices) | CPU vs native (edges) | edge files (MB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        files = f"{row['files']} ({row['mb']})" if "files" in row else ""
        lines.append(
            f"| {row['case']} | {row['impl']} | {row['seconds']} | {row['cpu_s']} | {row['edges_per_s']:,} | "
            f"{row.get('rate_vs_native', '')} | {row.get('rate_vs_same_output', '')} | "
            f"{row.get('cpu_vs_native', '')} | {files} |"
        )
    lines += [f"- {row['case']}, {row['impl']}: {row['phases']}" for row in rows if row.get("phases")]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
