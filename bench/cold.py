"""Benchmark: the jobs as users run them, whole processes, cold, default settings, against peer processes.

    .venv/bin/python -m bench.cold            # 50,000 products at d=256 and d=2048, the sample pipeline
    .venv/bin/python -m bench.cold --quick    # 5,000 products at d=256, the sample pipeline

Every contender is a fresh ``python -m ...`` process started by this one (interpreter start, imports, JVM
start, reading and writing files all included), timed wall-clock from start to exit, with the peak RSS of
the whole process tree sampled every 0.2 s:
- exact top-10 over N random normal float32 embeddings already on disk as Parquet (the embed job's
  columns, 4 files): ``python -m jobs.similarity`` with its defaults (quality gate on) against
  ``python -m bench.peers.faiss_topk`` (FAISS ``IndexFlatIP`` on all cores, Parquet in and out). The job
  is also run with ``--quality off`` and its report's own seconds are kept, so the time splits into
  what the process pays before and after ``main()`` (interpreter, imports, JVM stop), inside ``main()``
  by phase (input check with JVM and session start, tile tasks, gate, publish), and the gate.
- ``python -m jobs.pipeline`` on the generated sample (what ``make run`` runs; the sample is generated
  first and not timed): wall seconds in all and each stage's seconds from its report.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.similarity import PeakRss, make_vectors, write_embeddings

LOG = logging.getLogger("bench.cold")

RUN_DATE = "2024-03-31"
K = 10
ROOT = Path(__file__).resolve().parent.parent


def timed_process(args: list[str]) -> tuple[float, int, str]:
    """(wall seconds, peak RSS bytes of the tree, output) of one ``python -m ...`` process."""
    paths = (str(ROOT), os.environ.get("PYTHONPATH"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    with PeakRss() as rss:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                              check=False)
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        output = done.stdout[-3000:] + done.stderr[-3000:]
        raise RuntimeError(f"{args[:2]} exited {done.returncode}:\n{output}")
    return seconds, rss.peak, done.stdout + done.stderr


def similarity_case(work: Path, n: int, dim: int) -> list[dict[str, Any]]:
    embeddings = write_embeddings(work / f"emb-{n}-{dim}", make_vectors(n, dim, seed=3))
    case = f"top-{K} cosine N={n} d={dim}, Parquet in and out"
    rows = []
    peer_s, peer_rss, _ = timed_process(
        ["-m", "bench.peers.faiss_topk", "--input", embeddings, "--output", str(work / "faiss"),
         "--top-k", str(K)]
    )
    rows.append({"case": case, "contender": "FAISS IndexFlatIP process", "seconds": round(peer_s, 2),
                 "vs_peer": 1.0, "peak_rss_gb": round(peer_rss / 1e9, 2)})
    for label, extra in (("python -m jobs.similarity, defaults (gate on)", []),
                         ("python -m jobs.similarity --quality off", ["--quality", "off"])):
        out, reports = work / "job-out", work / "job-reports"
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(reports, ignore_errors=True)
        seconds, rss, _ = timed_process(
            ["-m", "jobs.similarity", "--input", embeddings, "--output", str(out), "--run-date", RUN_DATE,
             "--top-k", str(K), "--report-dir", str(reports), *extra]
        )
        report = json.loads((reports / "similarity" / f"dt={RUN_DATE}.json").read_text())
        main_s = float(report["seconds"])
        rows.append({"case": case, "contender": label, "seconds": round(seconds, 2),
                     "vs_peer": round(seconds / peer_s, 3), "peak_rss_gb": round(rss / 1e9, 2),
                     "inside_main_s": round(main_s, 2), "outside_main_s": round(seconds - main_s, 2),
                     "phases_s": report.get("seconds_by_phase", {})})
    return rows


def pipeline_case(work: Path) -> list[dict[str, Any]]:
    sample, run = work / "sample", work / "run"
    timed_process(
        ["-m", "jobs.generate_sample", "--output", str(sample), "--seed", "7", "--end-date", RUN_DATE]
    )
    seconds, rss, _ = timed_process(
        ["-m", "jobs.pipeline", "--workdir", str(run), "--sample", str(sample), "--run-date", RUN_DATE,
         "--seed", "7"]
    )
    row: dict[str, Any] = {
        "case": "make run on the sample (python -m jobs.pipeline)", "contender": "all stages",
        "seconds": round(seconds, 2), "peak_rss_gb": round(rss / 1e9, 2),
    }
    for report in sorted((run / "_reports").glob(f"*/dt={RUN_DATE}.json")):
        row[f"{report.parent.name}_s"] = round(float(json.loads(report.read_text()).get("seconds", 0)), 1)
    return [row]


def run(quick: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as tmp:
        work = Path(tmp)
        sizes = [(5_000, 256)] if quick else [(50_000, 256), (50_000, 2048)]
        for n, dim in sizes:
            LOG.info("similarity N=%d d=%d", n, dim)
            rows += similarity_case(work, n, dim)
        LOG.info("pipeline on the sample")
        rows += pipeline_case(work)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.cold", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for row in run(args.quick):
        sys.stdout.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
