"""Benchmark: the embed job on local[2] CPU against bare torch on the same images, same run.

    .venv/bin/python -m bench.embed            # ResNet-152, 96 images (several minutes on 2 cores)
    .venv/bin/python -m bench.embed --quick    # ResNet-18, 32 images

The peer is what a user would otherwise write: one Python process, torch using every core
(``torch.set_num_threads(cores)``), a loop that opens each JPEG with PIL, applies torchvision's
``Resize(256)/CenterCrop(224)/ToTensor/Normalize`` and runs batches of 16 through the network under
``torch.inference_mode``. Both sides load the same ``state_dict`` file (seeded random weights) and embed
the same JPEGs. The Spark side is ``jobs.embed_images.main`` end to end (CSV read, checks, the UDF,
Parquet write, read-back checks, publish, report) on a SparkSession started beforehand; its Python
workers start, import torch and load the model inside the timed run. Peak memory: PSS (proportional
set size: shared library pages split between the processes sharing them) sampled every 0.2 s, for the
JVM, for the sum over the PySpark daemon and workers, and for the bench process itself under bare torch.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.peers.torch_embed import BATCH_SIZE  # the peer's batch, passed to the job as --batch-size

LOG = logging.getLogger("bench.embed")

RUN_DATE = "2024-03-31"
IMAGE_SIZE = (400, 300)  # a typical catalog thumbnail; Zappos50K's are 136x102
TARGET_RATIO = 0.85


def write_images(folder: Path, count: int, seed: int = 0) -> list[str]:
    """``count`` JPEG product-like pictures (gradient, shapes, noise); their relative paths."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    width, height = IMAGE_SIZE
    x = np.linspace(0, 255, width)[None, :, None]
    y = np.linspace(0, 255, height)[:, None, None]
    base = np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2)
    paths = []
    for i in range(count):
        pixels = np.clip(base[:, ::-1] if i % 2 else base + rng.normal(0, 20, base.shape), 0, 255)
        image = Image.fromarray(pixels.astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(image)
        box = sorted(rng.integers(0, width, 2).tolist()), sorted(rng.integers(0, height, 2).tolist())
        draw.ellipse(
            [box[0][0], box[1][0], box[0][1], box[1][1]], fill=tuple(rng.integers(0, 255, 3).tolist())
        )
        rel = f"Shoes/Boots/Brand{i % 7}/{i:06d}.jpg"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        image.save(folder / rel, quality=90)
        paths.append(rel)
    return paths


def write_catalog(path: Path, rel_paths: list[str]) -> None:
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["sku", "name", "brand", "category", "subcategory", "image_path"])
        for i, rel in enumerate(rel_paths):
            writer.writerow([f"{i:06d}", f'Boot {i}, "bench"', f"Brand{i % 7}", "Shoes", "Boots", rel])


def _pss(process: Any) -> int:
    """Proportional set size (shared pages split between sharers; Linux), else RSS."""
    try:
        return int(process.memory_full_info().pss)
    except AttributeError:
        return int(process.memory_info().rss)


class PeakMemory:
    """Samples chosen processes from a thread: the peak of each group's summed memory, and CPU seconds.

    CPU seconds (user + system) are each process's growth since it was first seen (or since the start,
    for processes that existed before), summed: on a shared machine, images per CPU-second compares
    the two contenders' efficiency whatever share of the cores each one was given.
    """

    def __init__(self, groups: Callable[[], dict[str, list[Any]]], interval_s: float = 0.2) -> None:
        self.groups = groups
        self.interval_s = interval_s
        self.peaks: dict[str, int] = {}
        self._cpu_first: dict[int, float] = {}
        self._cpu_last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            for name, processes in self.groups().items():
                total = 0
                for process in processes:
                    with contextlib.suppress(psutil.Error):  # a worker that just exited
                        total += _pss(process)
                        times = process.cpu_times()
                        self._cpu_first.setdefault(process.pid, times.user + times.system)
                        self._cpu_last[process.pid] = times.user + times.system
                self.peaks[name] = max(self.peaks.get(name, 0), total)
            self._stop.wait(self.interval_s)

    @property
    def cpu_seconds(self) -> float:
        return sum(self._cpu_last[pid] - first for pid, first in self._cpu_first.items())

    def __enter__(self) -> PeakMemory:
        import psutil

        for processes in self.groups().values():  # processes already running count from now
            for process in processes:
                with contextlib.suppress(psutil.Error):
                    times = process.cpu_times()
                    self._cpu_first[process.pid] = self._cpu_last[process.pid] = times.user + times.system
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def spark_processes() -> dict[str, list[Any]]:
    """The JVM and the PySpark Python workers below this process."""
    import psutil

    jvm, workers = [], []
    for process in psutil.Process().children(recursive=True):
        try:
            name = process.name()
        except psutil.Error:
            continue
        if name == "java":
            jvm.append(process)
        elif name.startswith("python"):
            workers.append(process)
    return {"jvm": jvm, "python_workers": workers}


def bare_torch(
    model_name: str, weights: Path, images: Path, rel_paths: list[str], threads: int
) -> dict[str, Any]:
    """The peer: one process, torch on ``threads`` cores, decode + transform + forward in a loop
    (``bench.peers.torch_embed``, the same loop its cold process runs)."""
    import psutil

    from bench.peers.torch_embed import embed_files, load_model

    started = time.time()
    model, compose = load_model(model_name, weights, threads)
    load_s = time.time() - started
    me = psutil.Process()
    with PeakMemory(lambda: {"bench_process": [me]}) as peak:
        started = time.time()
        vectors = embed_files(model, compose, [images / rel for rel in rel_paths])
        seconds = time.time() - started
    assert len(vectors) == len(rel_paths)
    return {"seconds": seconds, "model_load_s": load_s, "peak_pss": peak.peaks, "cpu_s": peak.cpu_seconds}


def spark_job(model_name: str, weights: Path, catalog: Path, images: Path, output: Path) -> dict[str, Any]:
    """The embed job, end to end, on the running local[2] session."""
    from jobs import embed_images

    with PeakMemory(spark_processes) as peak:
        started = time.time()
        report = embed_images.main(
            [
                "--catalog",
                str(catalog),
                "--images-root",
                str(images),
                "--output",
                str(output),
                "--model",
                model_name,
                "--weights",
                str(weights),
                "--device",
                "cpu",
                "--batch-size",
                str(BATCH_SIZE),
                "--run-date",
                RUN_DATE,
            ]
        )
        seconds = time.time() - started
    assert report["embeddings_ok"] == report["funnel"]["rows_in"], report["funnel"]
    return {
        "seconds": seconds,
        "udf_stage_s": report["embed_seconds"],
        "peak_pss": peak.peaks,
        "cpu_s": peak.cpu_seconds,
    }


def run(quick: bool) -> list[dict[str, Any]]:
    """Run the benchmark; one result row per contender (and the ratio on the Spark rows)."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    import torch
    import torchvision

    from jobs.common.spark import get_spark

    model_name, count = ("resnet18", 32) if quick else ("resnet152", 96)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bench-embed-") as tmp:
        root = Path(tmp)
        images = root / "images"
        rel_paths = write_images(images, count)
        write_catalog(root / "catalog.csv", rel_paths)
        torch.manual_seed(0)
        weights = root / f"{model_name}.pth"
        torch.save(getattr(torchvision.models, model_name)(weights=None).state_dict(), weights)

        spark = get_spark("bench-embed", master="local[2]")
        spark.range(1).count()  # JVM up before timing; Python workers are not (they start inside the job)
        torch_result = bare_torch(model_name, weights, images, rel_paths, threads=cores)
        spark_cold = spark_job(model_name, weights, root / "catalog.csv", images, root / "out1")
        spark_warm = spark_job(model_name, weights, root / "catalog.csv", images, root / "out2")
        spark.stop()

    torch_ips = count / torch_result["seconds"]
    torch_per_cpu = count / torch_result["cpu_s"]
    machine = f"{cores} cores, shared with other engineers' test runs, no GPU"
    rows = [
        {
            "bench": "embed",
            "contender": f"bare torch, 1 process, {cores} threads",
            "model": model_name,
            "images": count,
            "seconds": round(torch_result["seconds"], 2),
            "images_per_s": round(torch_ips, 2),
            "ratio_vs_torch": 1.0,
            "cpu_s": round(torch_result["cpu_s"], 1),
            "images_per_cpu_s": round(torch_per_cpu, 3),
            "cpu_ratio_vs_torch": 1.0,
            "peak_pss_mb": {k: v >> 20 for k, v in torch_result["peak_pss"].items()},
            "note": f"model load {torch_result['model_load_s']:.1f}s not timed",
            "machine": machine,
        }
    ]
    for label, result in (("cold workers", spark_cold), ("warm workers", spark_warm)):
        ips = count / result["seconds"]
        rows.append(
            {
                "bench": "embed",
                "contender": f"Spark job local[2], whole main(), {label}",
                "model": model_name,
                "images": count,
                "seconds": round(result["seconds"], 2),
                "images_per_s": round(ips, 2),
                "ratio_vs_torch": round(ips / torch_ips, 3),
                "cpu_s": round(result["cpu_s"], 1),
                "images_per_cpu_s": round(count / result["cpu_s"], 3),
                "cpu_ratio_vs_torch": round(count / result["cpu_s"] / torch_per_cpu, 3),
                "peak_pss_mb": {k: v >> 20 for k, v in result["peak_pss"].items()},
                "note": f"UDF write stage {result['udf_stage_s']:.1f}s "
                f"= {count / result['udf_stage_s']:.2f} img/s",
                "machine": machine,
            }
        )
    rows.append(
        {
            "bench": "embed",
            "contender": "GPU",
            "model": model_name,
            "images": count,
            "seconds": None,
            "images_per_s": None,
            "ratio_vs_torch": None,
            "cpu_s": None,
            "images_per_cpu_s": None,
            "cpu_ratio_vs_torch": None,
            "peak_pss_mb": {},
            "note": "not measured: no GPU is available to this task",
            "machine": machine,
        }
    )
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        f"machine: {rows[0]['machine']}; model {rows[0]['model']}, {rows[0]['images']} JPEGs "
        f"{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}, batch {BATCH_SIZE}; "
        f"target: Spark >= {TARGET_RATIO:.0%} of bare torch"
    )
    print(
        "| contender | seconds | images/s | ratio vs bare torch | CPU s | images/CPU-s | CPU ratio "
        "| peak PSS (MB) | note |"
    )
    print("|---|---|---|---|---|---|---|---|---|")

    def cell(value: Any) -> str:
        return "-" if value is None else str(value)

    for row in rows:
        peaks = ", ".join(f"{k} {v}" for k, v in row["peak_pss_mb"].items()) or "-"
        print(
            f"| {row['contender']} | {cell(row['seconds'])} | {cell(row['images_per_s'])} | "
            f"{cell(row['ratio_vs_torch'])} | {cell(row['cpu_s'])} | {cell(row['images_per_cpu_s'])} | "
            f"{cell(row['cpu_ratio_vs_torch'])} | {peaks} | {row['note']} |"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="ResNet-18 on 32 images (default ResNet-152, 96)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    print_table(run(args.quick))


if __name__ == "__main__":
    main()
