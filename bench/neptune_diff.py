"""Benchmark: what changes in the graph between two nights' exports, Spark against one DuckDB process.

    .venv/bin/python -m bench.neptune_diff            # 50,000 products, top-10: 500,000 edges a night
    .venv/bin/python -m bench.neptune_diff --quick    # 5,000 products

Two exports are made by the real export job (gzip, gate off) from synthetic nights: night 2 renames 5%
of the products and gives each of them a new top-10, drops 0.5% of the products (their edges go, and
the edges into them are quarantined by the export) and adds as many new ones with their top-10.

- "Spark local[2]": ``jobs.export_gremlin.write_diff`` (what the export runs when a loaded marker
  exists): both exports read as CSV, hashed, anti-joined; rows to load, ids to remove and properties to
  clear written as gzip CSV and described (rows, bytes, sha256).
- "DuckDB": the same outputs from one DuckDB process (``read_csv`` of both exports, ``md5`` of the
  non-id columns, anti-joins, ``COPY ... (COMPRESSION gzip)``).

Each runs as a whole child process (interpreter and, for Spark, JVM start-up included), twice,
alternating; the faster of each is kept, with the CPU seconds of that run (``getrusage`` of children).
The two must agree on every count. Then the removal requests the loader sends for that diff at several
batch sizes (ids per ``g.E(ids).drop()``), with the bytes of Gremlin per request.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

LOG = logging.getLogger("bench.neptune_diff")

PRODUCTS = 50_000
QUICK_PRODUCTS = 5_000
TOP_K = 10
CHANGED_EVERY = 20  # 5% of the products: renamed, new top-10
REMOVED_EVERY = 200  # 0.5%: gone
REPEATS = 2
BATCH_SIZES = (100, 250, 500, 1000, 2000)
DATES = ("2024-04-01", "2024-04-02")
SPARK = "diff, Spark local[2] (whole process)"
DUCKDB = "diff, DuckDB 1 process (whole process)"


def make_night(spark: Any, root: Path, night: int, products: int) -> tuple[Path, Path]:
    """Catalog CSV and top-k edges Parquet of one night."""
    import csv

    from pyspark.sql import functions as F

    folder = root / f"inputs-{night}"
    folder.mkdir(parents=True, exist_ok=True)
    is_changed = night == 2
    catalog = folder / "catalog.csv"
    with open(catalog, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["sku", "name", "brand", "category", "subcategory", "image_path"])
        skus = [(f"SKU{i:06d}", i) for i in range(products)]
        if is_changed:
            skus = [(sku, i) for sku, i in skus if i % REMOVED_EVERY != 1]
            skus += [(f"NEW{i:06d}", i) for i in range(products // REMOVED_EVERY)]
        for sku, i in skus:
            renamed = is_changed and sku.startswith("SKU") and i % CHANGED_EVERY == 0
            name = f"Shoe {i} v2" if renamed else f"Shoe {i}"
            writer.writerow([sku, name, f"Brand {i % 300}", "Shoes", f"Sub {i % 20}", f"img/{sku}.jpg"])
    idx = F.col("id")
    src = (idx % products).cast("int")
    step = (F.floor(idx / products) + 1).cast("int")
    prime = F.lit(7919)
    if is_changed:  # the changed products get other neighbours
        prime = F.when(src % CHANGED_EVERY == 0, F.lit(7907)).otherwise(prime)
    edges_df = spark.range(products * TOP_K, numPartitions=8).select(
        F.format_string("SKU%06d", src).alias("src"),
        F.format_string("SKU%06d", ((src + step * prime) % products).cast("int")).alias("dst"),
        (F.lit(1.0) - step / F.lit(TOP_K + 1.0)).alias("score"),
        step.alias("rank"),
    )
    if is_changed:
        edges_df = edges_df.filter(F.substring("src", 4, 6).cast("int") % REMOVED_EVERY != 1)
        new_df = spark.range((products // REMOVED_EVERY) * TOP_K).select(
            F.format_string("NEW%06d", (F.col("id") % (products // REMOVED_EVERY)).cast("int")).alias("src"),
            F.format_string("SKU%06d", ((F.col("id") * 31) % products).cast("int")).alias("dst"),
            F.lit(0.5).alias("score"),
            (F.floor(F.col("id") / (products // REMOVED_EVERY)) + 1).cast("int").alias("rank"),
        )
        edges_df = edges_df.unionByName(new_df)
    edges_df.write.mode("overwrite").parquet(str(folder / "edges"))
    return catalog, folder / "edges"


def export_night(spark: Any, root: Path, night: int, products: int) -> Path:
    from jobs import export_gremlin

    catalog, edges = make_night(spark, root, night, products)
    output = root / "gremlin" / f"dt={DATES[night - 1]}"
    export_gremlin.main(
        [
            "--catalog", str(catalog),
            "--edges", str(edges),
            "--output", str(output),
            "--run-date", DATES[night - 1],
            "--report-dir", str(root / "reports"),
            "--quality", "off",
            "--loaded-marker", str(root / "no-marker.json"),  # full exports: the diffs are timed here
        ]
    )  # fmt: skip
    return output


# ------------------------------------------------------------------------------------- child processes
def process_tree_cpu_seconds() -> float:
    """User + system CPU seconds of this process and its live descendants, rounded."""
    from bench.export import cpu_seconds

    return round(cpu_seconds(), 1)


def spark_diff(base: str, current: str, out: str) -> dict[str, Any]:
    from jobs.common import graph_marker as gm
    from jobs.common import storage
    from jobs.common.spark import get_spark
    from jobs.export_gremlin import DiffBase, write_diff
    from schemas import gremlin as G

    started = time.perf_counter()
    spark = get_spark("bench-neptune-diff", master="local[2]")
    headers = storage.read_json(storage.join(current, G.MANIFEST_NAME))["headers"]
    base_headers = storage.read_json(storage.join(base, G.MANIFEST_NAME))["headers"]
    ref = gm.export_ref(base, DATES[0])
    session_s = time.perf_counter() - started
    diff = write_diff(
        spark, current, headers, [DiffBase("loaded", ref, base_headers)], compression="gzip", out_uri=out
    )
    cpu = process_tree_cpu_seconds()  # the JVM and Spark's Python workers, before they exit
    spark.stop()
    counts = diff["counts"]
    return {
        "in_process_diff_s": round(time.perf_counter() - started - session_s, 2),
        "cpu_seconds": cpu,
        "counts": {kind: {k: counts[kind][k] for k in COUNT_KEYS} for kind in counts},
    }


COUNT_KEYS = ("to_load", "to_remove", "properties_to_clear")


def duckdb_diff(base: str, current: str, out: str) -> dict[str, Any]:
    import duckdb

    started = time.perf_counter()
    con = duckdb.connect()
    con.execute("SET threads TO 2")
    counts: dict[str, dict[str, int]] = {}
    os.makedirs(out, exist_ok=True)
    for kind in ("vertices", "edges"):
        header = json.loads(Path(current, "manifest.json").read_text())["headers"][kind]
        props = [c for c in header if c != "~id"]
        cols = ", ".join(f'"{c}"' for c in props)
        for name, root in (("base", base), ("cur", current)):
            con.execute(
                f"CREATE OR REPLACE TABLE {name} AS SELECT *, md5(CAST(row({cols}) AS VARCHAR)) AS h "
                f"FROM read_csv('{root}/{kind}/*.csv.gz', header=true, all_varchar=true, quote='\"', "
                "escape='\"')"
            )
        load_sql = 'SELECT c.* EXCLUDE (h) FROM cur c ANTI JOIN base b ON c."~id" = b."~id" AND c.h = b.h'
        remove_sql = 'SELECT b."~id" FROM base b ANTI JOIN cur c ON c."~id" = b."~id"'
        clear_sql = " UNION ALL ".join(
            f'SELECT c."~id", \'{p.split(":")[0]}\' AS property FROM cur c JOIN base b ON c."~id" = b."~id" '
            f'WHERE b."{p}" IS NOT NULL AND c."{p}" IS NULL'
            for p in props
            if p not in ("~label", "~from", "~to")
        )
        counts[kind] = {}
        for key, sql in (
            ("to_load", load_sql),
            ("to_remove", remove_sql),
            ("properties_to_clear", clear_sql),
        ):
            target = f"{out}/{kind}-{key}.csv.gz"
            con.execute(f"COPY ({sql}) TO '{target}' (HEADER, COMPRESSION gzip)")
            counts[kind][key] = con.execute(f"SELECT count(*) FROM ({sql})").fetchone()[0]
    return {
        "in_process_diff_s": round(time.perf_counter() - started, 2),
        "cpu_seconds": process_tree_cpu_seconds(),
        "counts": counts,
    }


def child(engine: str, base: Path, current: Path, out: Path) -> tuple[float, float, dict[str, Any]]:
    """Run one diff as a whole child process: wall seconds, CPU seconds, its result.

    The CPU seconds are the child's own count of its process tree (the JVM is not a direct child
    here, so ``getrusage`` alone misses it); ``getrusage`` of this process's children is the floor.
    """
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-m", "bench.neptune_diff", "--child", engine, str(base), str(current), str(out)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if completed.returncode != 0:
        raise RuntimeError(f"{engine} diff failed:\n{completed.stderr[-3000:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, max(cpu, result["cpu_seconds"]), result


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def removal_requests(counts: dict[str, dict[str, int]], edge_id_bytes: float) -> list[dict[str, Any]]:
    """Data API requests the loader sends for this diff at each batch size (clears, edges, vertices)."""
    rows = []
    for size in BATCH_SIZES:
        requests = sum(
            math.ceil(counts[kind][key] / size)
            for kind in ("vertices", "edges")
            for key in ("to_remove", "properties_to_clear")
        )
        rows.append(
            {
                "measure": f"removal requests, batch {size}",
                "requests": requests,
                "gremlin_kb_per_edge_request": round(size * (edge_id_bytes + 3) / 1024, 1),
            }
        )
    return rows


def run(quick: bool) -> list[dict[str, Any]]:
    """Make two nights' exports, time both diffs as whole processes, count the removal requests."""
    from jobs.common.spark import get_spark

    products = QUICK_PRODUCTS if quick else PRODUCTS
    with tempfile.TemporaryDirectory(prefix="bench-neptune-diff-") as tmp:
        root = Path(tmp)
        spark = get_spark("bench-neptune-diff-exports", master="local[2]")
        try:
            night_1 = export_night(spark, root, 1, products)
            night_2 = export_night(spark, root, 2, products)
        finally:
            spark.stop()
        best: dict[str, tuple[float, float, dict[str, Any]]] = {}
        for repeat in range(REPEATS):
            for engine in ("spark", "duckdb"):
                out = root / f"diff-{engine}-{repeat}"
                measured = child(engine, night_1, night_2, out)
                LOG.info(
                    "%s diff: %.1fs wall, %.1f CPU-s (load %s)",
                    engine,
                    measured[0],
                    measured[1],
                    load_average(),
                )
                if engine not in best or measured[0] < best[engine][0]:
                    best[engine] = measured
        spark_counts, duck_counts = best["spark"][2]["counts"], best["duckdb"][2]["counts"]
        if spark_counts != duck_counts:
            raise RuntimeError(f"the diffs disagree: Spark {spark_counts}, DuckDB {duck_counts}")
        edge_id = f"similar:{len('product:SKU000000')}:product:SKU000000->product:SKU000000"
        rows = [
            {
                "measure": name,
                "products": products,
                "edges_per_night": products * TOP_K,
                "seconds": round(best[engine][0], 1),
                "cpu_seconds": round(best[engine][1], 1),
                "diff_seconds_in_process": best[engine][2]["in_process_diff_s"],
                "vertices_to_load": spark_counts["vertices"]["to_load"],
                "edges_to_load": spark_counts["edges"]["to_load"],
                "vertices_to_remove": spark_counts["vertices"]["to_remove"],
                "edges_to_remove": spark_counts["edges"]["to_remove"],
                "properties_to_clear": spark_counts["vertices"]["properties_to_clear"],
                "load_average": load_average(),
            }
            for name, engine in ((SPARK, "spark"), (DUCKDB, "duckdb"))
        ]
        return rows + removal_requests(spark_counts, len(edge_id))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.neptune_diff", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--child", nargs=4, metavar=("ENGINE", "BASE", "CURRENT", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.child:
        engine, base, current, out = args.child
        result = spark_diff(base, current, out) if engine == "spark" else duckdb_diff(base, current, out)
        sys.stdout.write(json.dumps(result) + "\n")  # the parent reads this line
        return 0
    for row in run(args.quick):
        sys.stdout.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
