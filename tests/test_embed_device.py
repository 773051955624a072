"""``--device cuda`` where torch sees no GPU (this machine has none): exit 2 with one line saying why,
before any image is read or anything is written, never a silent CPU run."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from jobs import embed_images
from jobs.common.cli import EXIT_JOB_ERROR, run

RUN_DATE = "2024-03-31"


def test_device_cuda_without_a_gpu_exits_2_with_one_clear_line(
    spark: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert not torch.cuda.is_available()  # the premise: no GPU here
    catalog = tmp_path / "catalog.csv"
    catalog.write_text("not even a header\n")  # the device is refused before the catalog is read
    (tmp_path / "images").mkdir()
    argv = [
        "--catalog", str(catalog), "--images-root", str(tmp_path / "images"),
        "--output", str(tmp_path / "out"), "--weights", "random:0", "--device", "cuda",
        "--run-date", RUN_DATE, "--report-dir", str(tmp_path / "r"),
    ]
    caplog.set_level(logging.ERROR)
    assert run(embed_images.main, argv) == EXIT_JOB_ERROR
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0]
    assert errors[0].startswith(f"--device cuda: torch {torch.__version__} ")
    assert errors[0].endswith("(on the executors); refusing to embed on CPU")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalog.csv", "images"]
