"""Benchmark: the whole shop-by-style path at a size you choose, each stage a whole process, per core count.

    .venv/bin/python -m bench.scale --products 5000 --mode all-pairs        # 12.5 M edges
    .venv/bin/python -m bench.scale --products 50000 --mode top-k --k 10
    .venv/bin/python -m bench.scale --quick                                # 1,000 and 2,000 products
    .venv/bin/python -m bench.scale --sizes 50000 --cores 2 --out rows.jsonl  # the 1.25 B-edge headline
    .venv/bin/python -m bench.scale --sizes 50000 --cores 2 --no-validate     # export against the writer
    .venv/bin/python -m bench.scale --sizes 50000 --cores 2 --no-native       # validate against its peer

Stages, in order, each run as its own process (``python -m ...``) with ``STYLEGRAPH_SPARK_MASTER=local[C]``
for C in ``--cores`` (default 1 and 2, the speed-up from a second core):
- ``generate``: random normal float32 embeddings (``--dim``) as the embed job's Parquet and a catalog CSV.
- ``similarity``: ``jobs.similarity`` all-pairs unfiltered (every pair once) or top-k, to Parquet, with its
  default quality gate (the row's ``gate_s`` is the gate's phase in the job's report); with
  ``--gates-off`` also ``similarity, gate off`` (``--quality off``, run first, a diagnosis).
- ``export``: ``jobs.export_gremlin`` to gzip vertex and edge CSVs with its defaults, as users run it
  (its gate reads every vertex and a fixed 100,000 edge rows of the staged CSVs; ``gate_s`` as above); with
  ``--gates-off`` also ``export, gate off`` (``--quality off``, a diagnosis).
- ``validate``: ``jobs.validate_gremlin_csv`` with ``--workers C``; it must find 0 problems.
- ``decompress+split`` (peer of validate): C processes that only decompress the same edge files and split
  them into lines and fields. ``--no-validate`` skips these two (at 1.25 B edges, 18 of the 72 minutes).
- ``native csv`` (peer of export): Spark's own CSV writer (gzip) on the same edge Parquet with the same
  columns already formatted (``bench.export.native_write``), unchecked. ``--no-native`` skips it (at
  1.25 B edges, 25 minutes).
Per stage: wall and CPU seconds of the process tree (psutil, sampled every 0.2 s, and the waited
children's rusage, whichever is larger), edges/s, peak RSS of the process tree (sum; forked workers share
pages, so it overcounts a little), bytes on disk of what the stage wrote, number of files and their sizes.
Ratios: export rate / native rate and validate rate / decompress+split rate, at the same core count
(targets >= 0.9). Two sizes (``--products`` and half of it, or ``--sizes``) show whether peak memory
grows with the edges. ``--out`` appends each row to a JSON-lines file as soon as it is measured (a
long run leaves what it measured); ``--keep`` leaves the data under ``--work`` to rerun a stage by hand.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import logging
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

LOG = logging.getLogger("bench.scale")

RUN_DATE = "2024-03-31"
TARGET_RATIO = 0.90
ALL_PAIRS = "all-pairs"
TOP_K = "top-k"
READ_BYTES = 8 * 2**20
GENERATE = (
    "import sys, numpy as np\n"
    "from bench.similarity import make_vectors, write_embeddings\n"
    "n, dim, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]\n"
    "write_embeddings(__import__('pathlib').Path(out), make_vectors(n, dim, seed=11), files=4)\n"
)
NATIVE = (
    "import sys\n"
    "from pathlib import Path\n"
    "from bench.export import native_write\n"
    "from jobs.common.spark import get_spark\n"
    "spark = get_spark('stylegraph-bench-scale-native')\n"
    "catalog, edges, out = (Path(arg) for arg in sys.argv[1:4])\n"
    "native_write(spark, catalog, edges, out, 'gzip', with_vertices=False)\n"
)


class TreeMonitor:
    """Peak RSS (sum) and CPU seconds of a process and its descendants, sampled from a thread."""

    def __init__(self, pid: int, interval_s: float = 0.2) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak_rss = 0
        self.cpu_by_pid: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        rss = 0
        for process in processes:
            try:
                rss += process.memory_info().rss
                times = process.cpu_times()
                self.cpu_by_pid[process.pid] = times.user + times.system
            except psutil.Error:
                continue
        self.peak_rss = max(self.peak_rss, rss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> TreeMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_stage(command: list[str], cores: int) -> dict[str, float]:
    """Run one stage as a process on ``local[cores]``: wall s, CPU s, peak RSS bytes; fails loudly."""
    env = {
        **os.environ,
        "STYLEGRAPH_SPARK_MASTER": f"local[{cores}]",
        "PYSPARK_PYTHON": sys.executable,
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")) if p
        ),
    }
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with TreeMonitor(process.pid) as monitor:
        output, _ = process.communicate()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} failed ({process.returncode}):\n{output[-3000:]}")
    waited = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "wall_s": wall,
        "cpu_s": max(waited, sum(monitor.cpu_by_pid.values())),
        "peak_rss": monitor.peak_rss,
    }


def disk(path: Path, pattern: str = "*") -> dict[str, Any]:
    """Bytes, file count and the smallest/largest file of the data files under ``path``."""
    sizes = [
        p.stat().st_size for p in path.rglob(pattern) if p.is_file() and not p.name.startswith((".", "_"))
    ]
    if not sizes:
        return {"files": 0, "disk_mb": 0.0}
    return {
        "files": len(sizes),
        "disk_mb": round(sum(sizes) / 2**20, 1),
        "file_mb_min": round(min(sizes) / 2**20, 2),
        "file_mb_max": round(max(sizes) / 2**20, 2),
    }


def write_catalog(path: Path, products: int) -> None:
    """A catalog CSV whose skus are the generated embeddings' (``bench.similarity.sku``)."""
    from bench.similarity import sku

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["sku", "name", "brand", "category", "subcategory", "image_path"])
        for i in range(products):
            writer.writerow(
                [sku(i), f"Shoe {i}", f"Brand {i % 300}", "Shoes", f"Sub {i % 20}", f"Shoes/{i}.jpg"]
            )


def _split_file(path: str) -> int:
    """Decompress one gzip file and split it into lines and fields; its line count."""
    lines = 0
    carry = b""
    with gzip.open(path, "rb") as handle:
        while chunk := handle.read(READ_BYTES):
            parts = (carry + chunk).split(b"\n")
            carry = parts.pop()
            for line in parts:
                line.split(b",")
            lines += len(parts)
    return lines + (1 if carry else 0)


def decompress_split(folder: str, cores: int) -> int:
    """The peer of the validator: every edge file decompressed and split, ``cores`` processes."""
    files = sorted(str(p) for p in Path(folder).glob("*.csv.gz"))
    with multiprocessing.get_context("spawn").Pool(cores) as pool:
        return sum(pool.map(_split_file, files))


def gate_of(reports: Path, stage: str, phase: str) -> dict[str, Any]:
    """A gated stage's gate: its phase's seconds in the job's report, and who counted each dataset."""
    report = json.loads((reports / stage / f"dt={RUN_DATE}.json").read_text())
    quality = json.loads((reports / stage / f"dt={RUN_DATE}.quality.json").read_text())
    counted = sorted({dataset["counted_by"] for dataset in quality["datasets"].values()})
    return {"gate_s": report["seconds_by_phase"][phase], "gate_counted_by": "+".join(counted)}


def run_size(
    root: Path,
    products: int,
    dim: int,
    mode: str,
    k: int,
    cores_list: list[int],
    out: Path | None = None,
    keep: bool = False,
    gates_off: bool = False,
    similarity_only: bool = False,
    validate: bool = True,
    native: bool = True,
) -> list[dict]:
    """Every stage at one size, at each core count; one row per (stage, cores), each also appended to
    ``out`` (JSON lines) as soon as it is measured; ``keep`` leaves the data behind; ``gates_off``
    also times similarity and export with ``--quality off``; ``similarity_only`` stops after the
    similarity."""
    py = sys.executable
    emb, catalog = root / "embeddings", root / "catalog" / "catalog.csv"
    rows: list[dict[str, Any]] = []
    measured = run_stage([py, "-c", GENERATE, str(products), str(dim), str(emb)], 1)
    write_catalog(catalog, products)
    edges_expected = products * (products - 1) // 2 if mode == ALL_PAIRS else products * min(k, products - 1)
    case = f"{products:,} products, d={dim}, {mode}{'' if mode == ALL_PAIRS else f' k={k}'}"

    def row(stage: str, cores: int, m: dict[str, float], edges: int, **extra: Any) -> dict[str, Any]:
        row_out = {
            "bench": "scale",
            "case": case,
            "stage": stage,
            "cores": cores,
            "seconds": round(m["wall_s"], 2),
            "cpu_s": round(m["cpu_s"], 1),
            "edges_per_s": round(edges / m["wall_s"]) if edges else None,
            "peak_rss_mb": round(m["peak_rss"] / 2**20),
            **extra,
        }
        rows.append(row_out)
        LOG.info("%s", row_out)
        if out is not None:
            with open(out, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row_out) + "\n")
        return row_out

    row("generate", 1, measured, 0, **disk(emb))
    mode_args = ["--all-pairs"] if mode == ALL_PAIRS else ["--top-k", str(k)]
    for cores in cores_list:
        work = root / f"c{cores}"
        shutil.rmtree(work, ignore_errors=True)
        similarity_out, reports = work / "style", work / "reports"
        edges_dir = similarity_out / "similarity" / f"dt={RUN_DATE}"
        export_dir = work / "gremlin" / f"dt={RUN_DATE}"
        similarity = [py, "-m", "jobs.similarity", "--input", str(emb), "--run-date", RUN_DATE, *mode_args]
        if gates_off:  # a diagnosis: the same without its gate, into folders of its own
            ungated = work / "ungated"
            m = run_stage([*similarity, "--output", str(ungated), "--report-dir", str(ungated / "r"),
                           "--quality", "off"], cores)
            row("similarity, gate off", cores, m, edges_expected)
            shutil.rmtree(ungated, ignore_errors=True)
        m = run_stage([*similarity, "--output", str(similarity_out), "--report-dir", str(reports)], cores)
        report = json.loads((reports / "similarity" / f"dt={RUN_DATE}.json").read_text())
        edges = report["edges"]
        if edges != edges_expected:
            raise RuntimeError(f"similarity wrote {edges} edges, expected {edges_expected}")
        row("similarity", cores, m, edges, **disk(edges_dir), **gate_of(reports, "similarity", "quality"))
        if similarity_only:
            if not keep:
                shutil.rmtree(work, ignore_errors=True)
            continue
        export = [
            py,
            "-m",
            "jobs.export_gremlin",
            "--catalog",
            str(catalog),
            "--edges",
            str(edges_dir),
            "--run-date",
            RUN_DATE,
            "--report-dir",
            str(reports),
            "--compression",
            "gzip",
        ]
        ungated_row = None
        if gates_off:  # a diagnosis: the same without its gate, into a folder of its own
            ungated_dir = work / "gremlin-ungated" / f"dt={RUN_DATE}"
            m = run_stage([*export, "--output", str(ungated_dir), "--quality", "off"], cores)
            ungated_row = row("export, gate off", cores, m, edges)
            shutil.rmtree(work / "gremlin-ungated", ignore_errors=True)
        m = run_stage([*export, "--output", str(export_dir)], cores)  # as users run it
        gate = gate_of(reports, "export", "quality_gate")
        export_row = row("export", cores, m, edges, **disk(export_dir / "edges"), **gate)
        if validate:
            m = run_stage(
                [
                    py,
                    "-m",
                    "jobs.validate_gremlin_csv",
                    "--vertices",
                    str(export_dir / "vertices"),
                    "--edges",
                    str(export_dir / "edges"),
                    "--workers",
                    str(cores),
                ],
                cores,
            )
            validate_row = row("validate", cores, m, edges)
            split = [
                py,
                "-c",
                "import sys; from bench.scale import decompress_split; "
                "print(decompress_split(sys.argv[1], int(sys.argv[2])))",
                str(export_dir / "edges"),
                str(cores),
            ]
            m = run_stage(split, cores)
            split_row = row("decompress+split (peer)", cores, m, edges)
            validate_row["rate_vs_peer"] = round(split_row["seconds"] / validate_row["seconds"], 3)
            validate_row["target"] = f">= {TARGET_RATIO}"
        if native:
            native_dir = work / "native"
            m = run_stage([py, "-c", NATIVE, str(catalog), str(edges_dir), str(native_dir)], cores)
            native_row = row("native csv (peer)", cores, m, edges, **disk(native_dir / "edges", "*.csv.gz"))
            shutil.rmtree(native_dir, ignore_errors=True)
            for ratioed in (export_row, ungated_row):
                if ratioed is not None:
                    ratioed["rate_vs_peer"] = round(native_row["seconds"] / ratioed["seconds"], 3)
                    ratioed["target"] = f">= {TARGET_RATIO}"
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    by_stage: dict[str, dict[int, float]] = {}
    for r in rows:
        by_stage.setdefault(r["stage"], {})[r["cores"]] = r["seconds"]
    for r in rows:
        single = by_stage[r["stage"]].get(1)
        if single and r["cores"] > 1:
            r["speedup_vs_1_core"] = round(single / r["seconds"], 2)
    return rows


def run(
    quick: bool,
    sizes: list[int] | None = None,
    dim: int = 256,
    mode: str = ALL_PAIRS,
    k: int = 10,
    cores: list[int] | None = None,
    work: str | None = None,
    out: Path | None = None,
    keep: bool = False,
    gates_off: bool = False,
    similarity_only: bool = False,
    validate: bool = True,
    native: bool = True,
) -> list[dict[str, Any]]:
    """Every stage at each size (default: 1,000 and 2,000 products quick, 2,500 and 5,000 full)."""
    sizes = sizes or ([1000, 2000] if quick else [2500, 5000])
    root = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=work))
    try:
        rows: list[dict[str, Any]] = []
        for products in sizes:
            rows += run_size(
                root / str(products), products, dim, mode, k, cores or [1, 2], out, keep, gates_off,
                similarity_only, validate, native,
            )
        return rows
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 and 2,000 products")
    parser.add_argument("--products", type=int, default=None, help="the larger size (the other is half)")
    parser.add_argument(
        "--sizes", default=None, help="comma-separated product counts (instead of --products)"
    )
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--mode", choices=[ALL_PAIRS, TOP_K], default=ALL_PAIRS)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--cores", default="1,2", help="comma-separated core counts (local[C])")
    parser.add_argument("--work", default=None, help="folder for the data (default: the temporary folder)")
    parser.add_argument("--out", default=None, help="append each row to this JSON-lines file as measured")
    parser.add_argument("--keep", action="store_true", help="leave the data under --work (to rerun a stage)")
    parser.add_argument(
        "--gates-off", action="store_true",
        help="also time similarity and export with --quality off (a diagnosis of the gates' cost)",
    )
    parser.add_argument("--similarity-only", action="store_true", help="stop after the similarity stage")
    parser.add_argument(
        "--no-validate", action="store_true", help="skip the validator and its decompress+split peer"
    )
    parser.add_argument("--no-native", action="store_true", help="skip Spark's native CSV writer")
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.sizes:
        sizes = [int(size) for size in args.sizes.split(",")]
    elif args.products:
        sizes = [args.products // 2, args.products]
    else:
        sizes = None
    rows = run(
        args.quick,
        sizes,
        args.dim,
        args.mode,
        args.k,
        [int(c) for c in args.cores.split(",")],
        args.work,
        Path(args.out) if args.out else None,
        args.keep,
        args.gates_off,
        args.similarity_only,
        not args.no_validate,
        not args.no_native,
    )
    from bench.run_all import markdown_table

    sys.stdout.write(markdown_table(rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
