"""Benchmark: the similarity job on local[2] against FAISS, numpy and Spark's naive crossJoin, same run.

    .venv/bin/python -m bench.similarity            # full sizes (about 15 minutes on 2 cores)
    .venv/bin/python -m bench.similarity --quick    # small sizes (about 2 minutes)

Cases (random normal float32 embeddings, written first as Parquet in the embed job's schema; the job is
timed from ``main()`` to its report: read, checks, tiles, Parquet write, publish; the quality gate,
another engineer's step, is switched off with ``--quality off``):
- top-10 cosine at d=256 and d=2048 over N products: the job (2 task slots x 1 torch thread, and 1 task x
  2 threads at d=256) against FAISS ``IndexFlatIP`` on the L2-normalised matrix (2 OpenMP threads,
  in memory, no I/O), recall of the job's neighbour sets against FAISS's; numpy brute force (blocked
  GEMM + ``argpartition``, 2 BLAS threads) at d=256.
- top-10 at small N: the job against Spark's naive ``crossJoin`` + window (built-in array functions).
- the top-k kernel alone (``kernel_cpu``: all block pairs and merges, one thread, no Spark) against FAISS
  on one thread, in CPU seconds: how much of the job's time is the kernel and how much Spark around it.
- all-pairs over N products written to Parquet, against Spark's own Parquet writer on a
  ``spark.range`` frame with the same row count and column types (src, dst strings, score double).
- all-pairs over the full catalog size to a counting sink (``--sink count``): time and peak RSS.
Peak memory: RSS of the whole process tree (this process, the JVM, the Python workers) sampled every
0.2 s; forked Python workers share pages with their daemon, so the sum overcounts a little.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

LOG = logging.getLogger("bench.similarity")

RUN_DATE = "2024-03-31"
K = 10
FAISS_TARGET = 1.25
WRITER_TARGET = 0.80
THREADS = 2
# Escape hatches for a machine too loaded to finish the full run in time (stated in the output).
SKIP_2048_ENV = "BENCH_SIMILARITY_SKIP_2048"
COUNT_MIN_SCORE_ENV = "BENCH_SIMILARITY_COUNT_MIN_SCORE"


class PeakRss:
    """Peak RSS (bytes) of this process and all its descendants, sampled from a thread."""

    def __init__(self, interval_s: float = 0.2) -> None:
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        import psutil

        me = psutil.Process()
        total = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                continue
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def sku(i: int) -> str:
    return f"sku{i:07d}"


def make_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)


def write_embeddings(folder: Path, vectors: np.ndarray, files: int = 4) -> str:
    """The vectors as the embed job writes them (EMBEDDING_SCHEMA's columns), in ``files`` files."""
    n, dim = vectors.shape
    folder.mkdir(parents=True, exist_ok=True)
    for part, rows in enumerate(np.array_split(np.arange(n), files)):
        offsets = pa.array(np.arange(rows.size + 1, dtype=np.int32) * dim)
        table = pa.table(
            {
                "sku": pa.array([sku(i) for i in rows]),
                "image_path": pa.array([f"Shoes/{i}.jpg" for i in rows]),
                "embedding": pa.ListArray.from_arrays(offsets, pa.array(vectors[rows].ravel())),
                "status": pa.array(["ok"] * rows.size),
                "error": pa.array([None] * rows.size, type=pa.string()),
                "model": pa.array(["resnet152"] * rows.size),
                "weights_sha256": pa.array(["0" * 64] * rows.size),
            }
        )
        pq.write_table(table, folder / f"part-{part:05d}.parquet")
    return str(folder)


def run_job(input_uri: str, work: Path, *extra: str) -> tuple[dict[str, Any], float, int]:
    """(report, seconds, peak RSS bytes) of one job run into a fresh output folder."""
    from jobs import similarity

    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    with PeakRss() as rss:
        start = time.perf_counter()
        report = similarity.main(
            ["--input", input_uri, "--output", str(out), "--run-date", RUN_DATE,
             "--report-dir", str(work / "reports"), "--quality", "off", *extra]
        )
        seconds = time.perf_counter() - start
    return report, seconds, rss.peak


def job_neighbours(work: Path, n: int) -> np.ndarray:
    """The job's top-k dst indices per src (n x K), read back from its Parquet."""
    table = pq.read_table(work / "out" / "similarity" / f"dt={RUN_DATE}", columns=["src", "dst", "rank"])
    src = np.array([int(s[3:]) for s in table.column("src").to_pylist()])
    dst = np.array([int(s[3:]) for s in table.column("dst").to_pylist()])
    rank = table.column("rank").to_numpy()
    out = np.full((n, K), -1, dtype=np.int64)
    out[src, rank - 1] = dst
    return out


def faiss_topk(vectors: np.ndarray) -> tuple[np.ndarray, float]:
    import faiss

    faiss.omp_set_num_threads(THREADS)
    start = time.perf_counter()
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(unit)
    _, found = index.search(unit, K + 1)
    seconds = time.perf_counter() - start
    neighbours = np.array([[j for j in row if j != i][:K] for i, row in enumerate(found)])
    return neighbours, seconds


def kernel_cpu(vectors: np.ndarray, pair_block: int = 8192, tile: int = 2048) -> dict[str, Any]:
    """The job's top-k kernel without Spark, on one thread in this process, against FAISS on one thread:
    CPU seconds (``time.process_time``, less sensitive to a shared machine than wall time) of every
    block pair (``pair_candidates``, floors shared as one worker shares them) plus every block's merge
    and exact settling (``merge_block``); the job's defaults for the block sizes."""
    import math

    import faiss
    from threadpoolctl import threadpool_limits

    from udfs.similarity import matrix, pairs, tiles

    n = len(vectors)
    faiss.omp_set_num_threads(1)
    with threadpool_limits(limits=1, user_api="blas"):
        prep = matrix.prepare(pa.array([sku(i) for i in range(n)]), vectors, "cosine")
        start = time.process_time()
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(prep.work)
        index.search(prep.work, K + 1)
        faiss_cpu = time.process_time() - start
        width = tiles.candidate_width(n, K)
        blocks = math.ceil(n / pair_block)
        floors = np.full(n, -np.inf, dtype=np.float32)  # as one worker's shared floors
        start = time.process_time()
        found: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        for a, b in pairs.block_pairs(blocks):
            for block, keys, cols in pairs.pair_candidates(prep, a, b, pair_block, tile, width, floors):
                found.setdefault(block, []).append((keys, cols))
        pairs_cpu = time.process_time() - start
        for block in range(blocks):
            for _ in pairs.merge_block(prep, block, found.pop(block), K, pair_block, tile):
                pass
        kernel_cpu_s = time.process_time() - start
    return {"faiss_cpu_s": round(faiss_cpu, 2), "kernel_cpu_s": round(kernel_cpu_s, 2),
            "pairs_cpu_s": round(pairs_cpu, 2), "ratio": round(kernel_cpu_s / faiss_cpu, 3)}


def numpy_topk(vectors: np.ndarray, block: int = 2048) -> tuple[np.ndarray, float]:
    """Blocked numpy brute force: GEMM per row block, argpartition, sort the K."""
    start = time.perf_counter()
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    out = np.empty((len(unit), K), dtype=np.int64)
    for r0 in range(0, len(unit), block):
        scores = unit[r0 : r0 + block] @ unit.T
        rows = np.arange(scores.shape[0])
        scores[rows, rows + r0] = -np.inf
        part = np.argpartition(-scores, K, axis=1)[:, :K]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1)
        out[r0 : r0 + block] = np.take_along_axis(part, order, axis=1)
    return out, time.perf_counter() - start


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(a) & set(b)) for a, b in zip(found.tolist(), truth.tolist(), strict=True))
    return hits / truth.size


def exact_on_disagreements(vectors: np.ndarray, found: np.ndarray, truth: np.ndarray) -> str:
    """Where the job's neighbour set differs from FAISS's: is the job's the exact (float64) one?

    FAISS ranks in float32, so a near-tie can go either way there; the job settles in float64 (ties
    by sku = index). Returns "rows differing: D, job exact on E of them".
    """
    differing = [i for i, (a, b) in enumerate(zip(found.tolist(), truth.tolist(), strict=True))
                 if set(a) != set(b)]
    unit = vectors.astype(np.float64)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    exact = 0
    for i in differing:
        scores = unit @ unit[i]
        scores[i] = -np.inf
        order = sorted(range(len(scores)), key=lambda j: (-scores[j], j))[:K]
        exact += set(order) == set(found[i].tolist())
    return f"rows differing: {len(differing)}, job exact on {exact} of them"


def spark_naive_topk(spark: Any, input_uri: str, out: Path) -> float:
    """What a Spark user writes first: crossJoin, per-pair array arithmetic, a window for the top k."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    start = time.perf_counter()
    df = spark.read.parquet(input_uri).select("sku", "embedding")
    norm = F.sqrt(F.aggregate("embedding", F.lit(0.0), lambda acc, x: acc + x * x))
    unit = df.select("sku", F.transform("embedding", lambda x: x / norm).alias("v"))
    pairs = (
        unit.alias("a")
        .crossJoin(unit.alias("b"))
        .filter(F.col("a.sku") != F.col("b.sku"))
        .select(
            F.col("a.sku").alias("src"),
            F.col("b.sku").alias("dst"),
            F.aggregate(F.zip_with("a.v", "b.v", lambda x, y: x * y), F.lit(0.0), lambda s, p: s + p)
            .alias("score"),
        )
    )
    window = Window.partitionBy("src").orderBy(F.col("score").desc(), F.col("dst"))
    (
        pairs.withColumn("rank", F.row_number().over(window))
        .filter(F.col("rank") <= K)
        .write.mode("overwrite")
        .parquet(str(out))
    )
    return time.perf_counter() - start


def spark_native_write(spark: Any, rows: int, products: int, out: Path, max_records: int) -> float:
    """Spark's Parquet writer on a spark.range frame shaped like the edges (src, dst, score)."""
    from pyspark.sql import functions as F

    start = time.perf_counter()
    pid = F.col("id") % products
    (
        spark.range(0, rows, 1, numPartitions=THREADS)
        .select(
            F.concat(F.lit("sku"), F.lpad(pid.cast("string"), 7, "0")).alias("src"),
            F.concat(F.lit("sku"), F.lpad(((F.col("id") * 7919) % products).cast("string"), 7, "0"))
            .alias("dst"),
            F.rand(1).alias("score"),
        )
        .write.option("maxRecordsPerFile", max_records)
        .mode("overwrite")
        .parquet(str(out))
    )
    return time.perf_counter() - start


def run(quick: bool) -> list[dict[str, Any]]:
    """Run every case; returns one dict per measurement."""
    from jobs.common.spark import get_spark

    sizes: dict[str, Any] = (
        {"topk_n": 5_000, "naive_n": 500, "pairs_n": 2_000, "count_n": 5_000, "count_min_score": None}
        if quick
        else {"topk_n": 50_000, "naive_n": 2_000, "pairs_n": 10_000, "count_n": 50_000,
              "count_min_score": None}
    )
    if os.environ.get(COUNT_MIN_SCORE_ENV):
        sizes["count_min_score"] = float(os.environ[COUNT_MIN_SCORE_ENV])

    spark = get_spark("stylegraph-bench-similarity", master="local[2]")
    root = Path(tempfile.mkdtemp(prefix="bench-similarity-"))
    results: list[dict[str, Any]] = []

    def add(case: str, impl: str, seconds: float, **extra: Any) -> dict[str, Any]:
        row = {"bench": "similarity", "case": case, "impl": impl, "seconds": round(seconds, 2), **extra}
        results.append(row)
        LOG.info("%s", row)
        return row

    try:
        # A tiny run first starts both Python workers (torch import) before the timed runs: 15 block
        # pairs and 2 files, so both task slots run Python (FAISS's import is not timed either).
        warm_uri = write_embeddings(root / "emb-warm", make_vectors(300, 16, seed=0), files=2)
        run_job(warm_uri, root / "job", "--top-k", str(K), "--block-size", "16")

        def topk_case(dim: int) -> None:
            n = sizes["topk_n"]
            vectors = make_vectors(n, dim, seed=2)
            input_uri = write_embeddings(root / f"emb-{n}-{dim}", vectors)
            case = f"top-{K} cosine N={n} d={dim}"
            truth, faiss_s = faiss_topk(vectors)
            add(case, "faiss IndexFlatIP (2 threads)", faiss_s)
            report, job_s, peak = run_job(input_uri, root / "job", "--top-k", str(K))
            add(
                case, "this job, 2 slots x 1 thread", job_s,
                ratio_vs_faiss=round(job_s / faiss_s, 3), target=f"<= {FAISS_TARGET}",
                recall_vs_faiss=recall(job_neighbours(root / "job", n), truth),
                vs_float64=exact_on_disagreements(vectors, job_neighbours(root / "job", n), truth),
                peak_rss_gb=round(peak / 2**30, 2),
            )
            if dim == 256:
                found, numpy_s = numpy_topk(vectors)
                add(case, "numpy brute force", numpy_s, ratio_vs_faiss=round(numpy_s / faiss_s, 3),
                    recall_vs_faiss=recall(found, truth))
                one_task = ("--parallelism", "1", "--threads-per-task", "2")
                _, one_s, _ = run_job(input_uri, root / "job", "--top-k", str(K), *one_task)
                add(case, "this job, 1 task x 2 threads", one_s, ratio_vs_faiss=round(one_s / faiss_s, 3))
            shutil.rmtree(root / f"emb-{n}-{dim}", ignore_errors=True)

        topk_case(256)
        cpu = kernel_cpu(make_vectors(sizes["topk_n"], 256, seed=2))
        add(f"top-{K} cosine N={sizes['topk_n']} d=256, kernel only, 1 thread, CPU seconds",
            "this job's kernel (pairs + merges) vs faiss (1 thread)", cpu["kernel_cpu_s"],
            ratio_vs_faiss=cpu["ratio"], **cpu)

        n = sizes["pairs_n"]
        input_uri = write_embeddings(root / f"emb-{n}-256", make_vectors(n, 256, seed=3))
        report, job_s, peak = run_job(input_uri, root / "job", "--all-pairs")
        edges = report["edges"]
        native_s = spark_native_write(spark, edges, n, root / "native", 5_000_000)
        case = f"all-pairs N={n} d=256 ({edges:,} edges) to Parquet"
        add(case, "spark native Parquet writer, spark.range frame", native_s,
            rows_per_s=round(edges / native_s))
        add(case, "this job", job_s, rows_per_s=round(edges / job_s),
            rate_vs_native=round(native_s / job_s, 3), target=f">= {WRITER_TARGET}",
            peak_rss_gb=round(peak / 2**30, 2))
        shutil.rmtree(root / "native", ignore_errors=True)
        shutil.rmtree(root / "job", ignore_errors=True)

        n = sizes["naive_n"]
        input_uri = write_embeddings(root / f"emb-{n}-256", make_vectors(n, 256, seed=1), files=2)
        _, job_s, _ = run_job(input_uri, root / "job", "--top-k", str(K))
        naive_s = spark_naive_topk(spark, input_uri, root / "naive")
        case = f"top-{K} cosine N={n} d=256"
        add(case, "spark crossJoin+window", naive_s, ratio_vs_job=round(naive_s / job_s, 1))
        add(case, "this job", job_s, ratio_vs_peer=round(job_s / naive_s, 3))

        n = sizes["count_n"]
        input_uri = write_embeddings(root / f"emb-{n}-256", make_vectors(n, 256, seed=4))
        sink = ["--sink", "count"] + (["--min-score", str(sizes["count_min_score"])]
                                      if sizes["count_min_score"] is not None else [])
        report, job_s, peak = run_job(input_uri, root / "job", "--all-pairs", *sink)
        add(f"all-pairs N={n} d=256, {' '.join(sink[2:]) or 'no filter'} ({report['edges']:,} edges kept) "
            "to a counting sink", "this job", job_s,
            rows_per_s=round(report["edges"] / job_s), peak_rss_gb=round(peak / 2**30, 2))
        if os.environ.get(SKIP_2048_ENV) != "1":
            topk_case(2048)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    load_before = os.getloadavg()
    rows = run(args.quick)
    load_after = os.getloadavg()
    lines = [
        f"machine: {os.cpu_count()} cores, local[2], no GPU; shared with other work "
        f"(1-min load average {load_before[0]:.1f} before, {load_after[0]:.1f} after)",
        "| case | implementation | seconds | vs peer | recall / rate | peak RSS GB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        ratio = row.get("ratio_vs_faiss", row.get("rate_vs_native", row.get("ratio_vs_peer",
                        row.get("ratio_vs_job", ""))))
        extra = row.get("recall_vs_faiss", row.get("rows_per_s", ""))
        if "vs_float64" in row:
            extra = f"{extra} ({row['vs_float64']})"
        peak = row.get("peak_rss_gb", "")
        lines.append(f"| {row['case']} | {row['impl']} | {row['seconds']} | {ratio} | {extra} | {peak} |")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
