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
- embed ResNet-152 on CPU (seeded random weights saved as a ``state_dict`` file, generated 400x300 JPEGs):
  ``python -m jobs.embed_images`` with its defaults and with ``--precision fp32`` against
  ``python -m bench.peers.torch_embed`` (bare torch on all cores, the same images and weights, Parquet
  out) in fp32 and under bf16 autocast, each at two catalog sizes, three times in interleaved rounds
  (the median counts); a contender's fixed cost is its time at zero images on the line through the two
  sizes, its marginal rate the images per second between them (targets: fixed cost <= 8 s, marginal
  rate >= 0.9 of the peer's), and the smallest cosine between its vectors and the fp32 peer's says what
  a lower precision changed.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
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
EMBED_SIZES = (32, 96)  # both at least a batch per task slot on 2 cores: every size uses both
# Each embed contender runs this many times at each size, the rounds interleaved; its time at a size is
# the median. A line through two single runs swings its intercept by a second on a shared machine.
EMBED_REPEATS = 3
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


def embed_case(
    work: Path, sizes: tuple[int, int], model: str = "resnet152", repeats: int = EMBED_REPEATS
) -> list[dict[str, Any]]:
    """The embed job and a bare torch process on the same JPEGs at two catalog sizes: each contender's
    fixed cost (the time at zero images, by the line through both sizes) and marginal rate (images per
    second between them), from its median time at each size over ``repeats`` interleaved rounds. The job
    runs with its defaults (precision ``auto``: bf16 on a CPU with native bf16) and with ``--precision
    fp32``; the peer in fp32 (what a user writes) and under bf16 autocast.
    Each job row also gives how far its vectors are from the fp32 peer's (smallest cosine)."""
    import torch
    import torchvision

    from bench.embed import IMAGE_SIZE, write_catalog, write_images
    from udfs.image_models import cpu_has_native_bf16

    small, large = sizes
    images = work / "images"
    rel_paths = write_images(images, large)
    torch.manual_seed(0)
    weights = work / f"{model}.pth"
    torch.save(getattr(torchvision.models, model)(weights=None).state_dict(), weights)
    peer = "bare torch process (bench.peers.torch_embed)"
    peer_bf16 = f"{peer}, bf16 autocast"
    contenders = {  # label: (module, extra arguments, the peer of the same precision)
        peer: ("bench.peers.torch_embed", [], peer),
        peer_bf16: ("bench.peers.torch_embed", ["--bf16"], peer_bf16),
        "python -m jobs.embed_images, defaults": (
            "jobs.embed_images", [], peer_bf16 if cpu_has_native_bf16() else peer
        ),
        "python -m jobs.embed_images --precision fp32": ("jobs.embed_images", ["--precision", "fp32"], peer),
    }
    runs: dict[str, dict[int, list[float]]] = {}
    rss: dict[str, int] = {}
    phases: dict[str, dict[int, dict[str, float]]] = {}  # the job's own phase seconds (its median run)
    phase_runs: dict[tuple[str, int], list[tuple[float, dict[str, float]]]] = {}
    cosine: dict[str, float] = {}
    for n in sizes:
        write_catalog(work / f"catalog-{n}.csv", rel_paths[:n])
    order = list(contenders.items())
    for round_index in range(repeats):
        for n in sizes:
            common = ["--catalog", str(work / f"catalog-{n}.csv"), "--images-root", str(images),
                      "--weights", str(weights), "--model", model]
            vectors: dict[str, dict[str, Any]] = {}
            # Each round starts from another contender: none always runs first, after a cooler machine.
            shift = round_index % len(order)
            for index, (label, (module, extra, _)) in enumerate(order[shift:] + order[:shift]):
                out = work / f"embed-{n}" / str(index)
                shutil.rmtree(out, ignore_errors=True)  # every run a fresh, full one
                if module.startswith("jobs."):
                    args = [*common, *extra, "--output", str(out / "j"), "--run-date", RUN_DATE,
                            "--report-dir", str(out / "r")]
                else:
                    args = [*common, *extra, "--output", str(out / "p")]
                value, peak, _ = timed_process(["-m", module, *args])
                runs.setdefault(label, {}).setdefault(n, []).append(value)
                rss[label] = max(rss.get(label, 0), peak)
                if module.startswith("jobs."):
                    report = json.loads((out / "r" / "embed" / f"dt={RUN_DATE}.json").read_text())
                    outside = round(value - report["seconds"], 2)
                    phase_runs.setdefault((label, n), []).append(
                        (value, {**report.get("seconds_by_phase", {}), "outside_main": outside})
                    )
                    vectors[label] = read_vectors(out / "j" / "embeddings" / f"dt={RUN_DATE}")
                else:
                    vectors[label] = read_vectors(out / "p")
            for label in vectors:
                cosine[label] = min(cosine.get(label, 1.0), min_cosine(vectors[label], vectors[peer]))
    seconds = {label: {n: statistics.median(values) for n, values in by_size.items()}
               for label, by_size in runs.items()}
    for (label, n), timed in phase_runs.items():  # the phases of the run whose time is the median
        phases.setdefault(label, {})[n] = sorted(timed, key=lambda pair: pair[0])[len(timed) // 2][1]
    case = f"embed {model} CPU, {small} and {large} JPEGs of {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}"

    def rate(label: str) -> float:
        return (large - small) / (seconds[label][large] - seconds[label][small])

    rows = []
    for label, (_, _, same) in contenders.items():  # the same-precision peer of each
        rows.append({
            "case": case, "contender": label,
            "seconds": {n: round(seconds[label][n], 2) for n in sizes},
            "seconds_runs": {n: [round(value, 2) for value in runs[label][n]] for n in sizes},
            "marginal_images_per_s": round(rate(label), 2),
            "marginal_vs_peer": round(rate(label) / rate(peer), 3),
            "marginal_vs_same_precision_peer": round(rate(label) / rate(same), 3),
            "fixed_s": round(seconds[label][small] - small / rate(label), 2),
            "peak_rss_gb": round(rss[label] / 1e9, 2),
            "min_cosine_vs_fp32_peer": round(cosine[label], 6),
            **({"phases_s": phases[label]} if label in phases else {}),
        })
    return rows


def read_vectors(folder: Path) -> dict[str, Any]:
    """``sku -> float32 vector`` of the rows with a vector in the Parquet files under ``folder``."""
    import numpy as np
    import pyarrow.parquet as pq

    table = pq.read_table(str(folder), columns=["sku", "embedding"])
    return {
        sku: np.asarray(vector, dtype=np.float32)
        for sku, vector in zip(table["sku"].to_pylist(), table["embedding"].to_pylist(), strict=True)
        if vector is not None
    }


def min_cosine(vectors: dict[str, Any], reference: dict[str, Any]) -> float:
    """The smallest cosine similarity between the two contenders' vectors of the same sku."""
    import numpy as np

    if set(vectors) != set(reference):  # a contender that lost images cannot hide behind the others
        raise RuntimeError(
            f"the contenders embedded different products: {len(vectors)} against {len(reference)}"
        )
    skus = sorted(vectors)
    a = np.stack([vectors[s] for s in skus])
    b = np.stack([reference[s] for s in skus])
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


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
        LOG.info("embed")
        if quick:
            rows += embed_case(work, (32, 64), "resnet18", repeats=1)
        else:
            rows += embed_case(work, EMBED_SIZES)
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
