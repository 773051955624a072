"""Benchmark: an incremental embed night (2% of the catalog changed) against a full night, in one run.

    .venv/bin/python -m bench.embed_incremental            # ResNet-152 (production's model), 3,000 JPEGs
    .venv/bin/python -m bench.embed_incremental --quick    # ResNet-18, 300 JPEGs
    .venv/bin/python -m bench.embed_incremental --images 3000 --no-full-rerun --model resnet152

Every night is a whole cold process, ``python -m jobs.embed_images ...`` (JVM start, Python workers, torch
import and model load inside), on ``local[2]`` CPU with the job's defaults (quality gate on, batch 16).
The model is the production one, ResNet-152 (``--quick``: ResNet-18), with seeded random weights from a
``state_dict`` file (the network's work does not depend on the weights' values). On two CPU cores
ResNet-152 embeds about 6 images/s, so a full night of 3,000 images takes several minutes.

Night 1 embeds the whole catalog (JPEGs of 136x102, Zappos50K's thumbnail size). Then 2% of the
catalog changes: 1% re-photographed (same path, new bytes), 0.5% added, 0.5% removed. Night 2 runs twice
on that catalog: incremental (the default, reusing night 1) and ``--full`` into another output root. Both
outputs are compared row for row (they must be equal); with ``--no-full-rerun`` (a machine short of time)
night 2 runs incremental only and night 1 (same catalog size) is the full night it is held against. Each
run's time is broken down from its
report (``seconds_by_phase``; "process start" is the process's wall time outside ``main``: interpreter,
imports, JVM shutdown). Target: the incremental night at 10% or less of the full night's wall time.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

RUN_DATES = ("2024-03-30", "2024-03-31")
IMAGE_SIZE = (136, 102)
MODEL = "resnet152"
QUICK_MODEL = "resnet18"
CHANGED_SHARE = 0.02
TARGET_RATIO = 0.10
ROOT = Path(__file__).resolve().parent.parent


def write_image(path: Path, seed: int) -> None:
    """A product-like JPEG: a gradient, an ellipse and a box in colours drawn from ``seed``."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    width, height = IMAGE_SIZE
    x = np.linspace(0, 255, width)[None, :, None]
    y = np.linspace(0, 255, height)[:, None, None]
    tint = rng.uniform(0.3, 1.0, 3)
    pixels = (np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2) * tint).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    for shape in (draw.ellipse, draw.rectangle):
        xs, ys = sorted(rng.integers(0, width, 2).tolist()), sorted(rng.integers(0, height, 2).tolist())
        shape([xs[0], ys[0], xs[1], ys[1]], fill=tuple(rng.integers(0, 255, 3).tolist()))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "JPEG", quality=90)


def write_catalog(path: Path, products: dict[str, str]) -> None:
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["sku", "name", "brand", "category", "subcategory", "image_path"])
        for sku, rel in products.items():
            writer.writerow([sku, f"Boot {sku}", "Brand", "Shoes", "Boots", rel])


def change_catalog(
    images: Path, products: dict[str, str], count: int
) -> tuple[dict[str, str], dict[str, int]]:
    """2% of the catalog changed in place: re-photographed, added and removed products."""
    rephotographed, added, removed = count // 100, count // 200, count // 200
    skus = list(products)
    night_2 = dict(products)
    for i, sku in enumerate(skus[:rephotographed]):
        write_image(images / products[sku], seed=1_000_000 + i)
    for sku in skus[-removed:]:
        (images / night_2.pop(sku)).unlink()
    for i in range(added):
        sku = f"new{i:06d}"
        night_2[sku] = f"Shoes/Boots/New/{sku}.jpg"
        write_image(images / night_2[sku], seed=2_000_000 + i)
    return night_2, {"rephotographed": rephotographed, "added": added, "removed": removed}


def run_night(
    catalog: Path, images: Path, output: Path, weights: Path, run_date: str, *extra: str, model: str = MODEL
) -> dict[str, Any]:
    """One cold ``python -m jobs.embed_images`` process; its wall time, report and quality seconds."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "STYLEGRAPH_SPARK_MASTER": "local[2]",
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
    }
    command = [
        sys.executable, "-m", "jobs.embed_images",
        "--catalog", str(catalog), "--images-root", str(images), "--output", str(output),
        "--model", model, "--weights", str(weights), "--device", "cpu", "--run-date", run_date, *extra,
    ]
    started = time.time()
    completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    wall = time.time() - started
    if completed.returncode != 0:
        raise RuntimeError(f"embed job failed ({completed.returncode}):\n{completed.stderr[-4000:]}")
    reports = output / "_reports" / "embed"
    report = json.loads((reports / f"dt={run_date}.json").read_text())
    quality = json.loads((reports / f"dt={run_date}.quality.json").read_text())
    return {"wall_s": wall, "report": report, "quality_s": quality.get("seconds")}


def compare_partitions(first: Path, second: Path) -> str:
    """``equal`` when two embeddings partitions hold the same Parquet schema and the same rows (sorted
    by sku, every column), else what differs."""
    import pyarrow.parquet as pq

    tables = [pq.read_table(folder).sort_by("sku") for folder in (first, second)]
    if tables[0].schema != tables[1].schema:
        return f"schemas differ: {tables[0].schema} / {tables[1].schema}"
    differing = [name for name in tables[0].column_names if tables[0][name] != tables[1][name]]
    return f"rows differ in {differing}" if differing else "equal"


def row(label: str, night: dict[str, Any], full_wall: float | None) -> dict[str, Any]:
    report = night["report"]
    phases = {**report["seconds_by_phase"]}
    phases["quality (of which)"] = night["quality_s"]
    return {
        "bench": "embed_incremental",
        "run": label,
        "mode": report["mode"],
        "products": report["rows_written"],
        "through_model": report["images_through_model"],
        "reused": report["products"]["reused"],
        "wall_s": round(night["wall_s"], 1),
        "ratio_vs_full": round(night["wall_s"] / full_wall, 3) if full_wall else None,
        "process_start_s": round(night["wall_s"] - report["seconds"], 1),
        "seconds_by_phase": ", ".join(f"{k} {v:.1f}" for k, v in phases.items() if v is not None),
    }


def run(
    quick: bool, count: int | None = None, full_rerun: bool = True, model: str | None = None
) -> list[dict[str, Any]]:
    """Night 1 full, then night 2 incremental (and full) on the changed catalog; one row per run."""
    import torch
    import torchvision

    count = count or (300 if quick else 3000)
    model = model or (QUICK_MODEL if quick else MODEL)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-embed-incremental-") as tmp:
        root = Path(tmp)
        images = root / "images"
        products = {f"{i:06d}": f"Shoes/Boots/Brand{i % 7}/{i:06d}.jpg" for i in range(count)}
        for i, rel in enumerate(products.values()):
            write_image(images / rel, seed=i)
        write_catalog(root / "night1.csv", products)
        torch.manual_seed(0)
        weights = root / f"{model}.pth"
        torch.save(getattr(torchvision.models, model)(weights=None).state_dict(), weights)

        night_1 = run_night(root / "night1.csv", images, root / "out", weights, RUN_DATES[0], model=model)
        night_2_products, changes = change_catalog(images, products, count)
        write_catalog(root / "night2.csv", night_2_products)
        incremental = run_night(root / "night2.csv", images, root / "out", weights, RUN_DATES[1], model=model)
        full, is_equal = night_1, None
        if full_rerun:
            full = run_night(
                root / "night2.csv", images, root / "full", weights, RUN_DATES[1], "--full", model=model
            )
            partition = Path("embeddings") / f"dt={RUN_DATES[1]}"
            is_equal = compare_partitions(root / "out" / partition, root / "full" / partition)
        shutil.rmtree(images)
    load_after = os.getloadavg()
    if is_equal not in (None, "equal"):
        raise AssertionError(f"the incremental night's output differs from the full night's: {is_equal}")
    changed = changes["rephotographed"] + changes["added"]
    through_model = incremental["report"]["images_through_model"]
    if through_model != changed:
        raise AssertionError(f"{through_model} images through the model, {changed} changed")
    note = (
        f"{count} JPEGs {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}, {model} CPU, local[2], 2% changed "
        f"({changes['rephotographed']} re-photographed, {changes['added']} added, "
        f"{changes['removed']} removed); "
        f"night 2 outputs (incremental against --full): {is_equal or 'not compared'}; "
        f"target incremental <= {TARGET_RATIO:.0%} of full; "
        f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after"
    )
    rows = [
        row("night 1, full (the previous partition)", night_1, None if full_rerun else night_1["wall_s"]),
        row("night 2, incremental (default)", incremental, full["wall_s"]),
    ]
    if full_rerun:
        rows.append(row("night 2, --full", full, full["wall_s"]))
    for item in rows:
        item["note"] = note
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 images instead of 3,000")
    parser.add_argument("--images", type=int, default=None, help="catalog size (default 3,000; quick 300)")
    parser.add_argument(
        "--no-full-rerun", action="store_true", help="night 1 is the full night (skips night 2 --full)"
    )
    parser.add_argument(
        "--model", default=None, help=f"torchvision model (default {MODEL}; quick {QUICK_MODEL})"
    )
    args = parser.parse_args(argv)
    for item in run(args.quick, args.images, full_rerun=not args.no_full_rerun, model=args.model):
        print(json.dumps(item))


if __name__ == "__main__":
    main()
