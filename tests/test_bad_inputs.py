"""Bad input is exit 2 and one line naming the file and the problem, with nothing written; files a job
does not read are counted; reads stay inside their roots."""
from __future__ import annotations

import datetime as dt
import gzip
import logging
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import jobs.preprocess_interactions as preprocess
from jobs import embed_images, run_report, similarity
from jobs.common.catalog import check_catalog_header
from jobs.common.cli import JobError
from jobs.generate_sample import generate_interactions
from schemas import embeddings as E
from schemas.catalog import CATALOG_COLUMNS
from udfs import image_models as M
from udfs.embed_images import ImageReader

DAY = dt.date(2024, 3, 31)


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("logs")
    generate_interactions(
        str(root), seed=3, end_date=DAY, days=1, users=30, items=[f"sku{n:03d}" for n in range(20)],
        events=600, bad_fraction=0.0,
    )
    return root / "interactions"


def _copy_logs(logs: Path, dst: Path) -> Path:
    for path in logs.rglob("*"):
        if path.is_file():
            target = dst / path.relative_to(logs)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    return dst


def _run_preprocess(inp: Path, out: Path) -> dict:
    return preprocess.main([
        "--input", str(inp), "--output", str(out), "--run-date", DAY.isoformat(),
        "--min-user-interactions", "1", "--min-item-interactions", "1", "--quality", "off",
    ])


@pytest.mark.parametrize("damage", ["truncated", "not gzip"])
def test_a_broken_gzip_log_is_named(spark, logs: Path, tmp_path: Path, damage: str) -> None:
    inp = _copy_logs(logs, tmp_path / "in")
    gz = sorted(inp.rglob("*.jsonl.gz"))[0]
    data = gz.read_bytes()
    gz.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"this is not gzip\n" * 50)
    with pytest.raises(JobError) as refused:
        _run_preprocess(inp, tmp_path / "out")
    message = str(refused.value)
    assert message.startswith(f"{gz}: ") and "\n" not in message
    assert ("truncated" if damage == "truncated" else "corrupt") in message
    assert not (tmp_path / "out").exists()


def test_log_files_the_job_does_not_read_are_counted_and_logged(
    logs: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inp = _copy_logs(logs, tmp_path / "in")
    day = inp / f"dt={DAY}"
    read = sorted(str(p) for p in day.iterdir())
    (day / "PART-00009.JSONL.GZ").write_bytes(gzip.compress(b'{"a": 1}\n'))
    (day / "part-00010.jsonl.bz2").write_bytes(b"BZh9")
    (day / "_SUCCESS").write_text("")  # a hidden marker: neither read nor counted
    with caplog.at_level(logging.WARNING, logger="stylegraph.preprocess"):
        files, run_day, unread = preprocess.input_files(str(inp), DAY, 0)
    assert files == run_day == read
    assert unread == [str(day / "PART-00009.JSONL.GZ"), str(day / "part-00010.jsonl.bz2")]
    assert sum("not read" in r.getMessage() for r in caplog.records) == 2


# ---------------------------------------------------------------------------------------- similarity


def _embeddings(path: Path, vectors: pa.Array, skus: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(skus)
    pq.write_table(pa.table({
        E.SKU: skus, E.IMAGE_PATH: [f"{s}.jpg" for s in skus], E.EMBEDDING: vectors,
        E.STATUS: [E.STATUS_OK] * n, E.ERROR: pa.array([None] * n, pa.string()),
        E.MODEL: ["m"] * n, E.WEIGHTS_SHA256: ["0"] * n,
    }), path)


def test_embeddings_stored_as_strings_or_mixed_floats_are_named(spark, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    floats = pa.array(list(rng.random((4, 3), dtype=np.float32)), pa.list_(pa.float32()))
    doubles = pa.array(list(rng.random((4, 3))), pa.list_(pa.float64()))
    strings = pa.array([str(list(v)) for v in rng.random((4, 3))], pa.string())
    cases = {
        "strings": ([strings], "column embedding is string, expected a list of float"),
        "mixed": ([floats, doubles], "every input file must use the same float type"),
    }
    for name, (columns, says) in cases.items():
        inp = tmp_path / name
        for i, column in enumerate(columns):
            _embeddings(inp / f"part-{i}.parquet", column, [f"{name}{i}{k}" for k in range(4)])
        with pytest.raises(JobError, match=says) as refused:
            similarity.main(["--input", str(inp), "--output", str(tmp_path / "out"), "--top-k", "2",
                             "--run-date", DAY.isoformat()])
        assert str(refused.value).startswith(str(inp / f"part-{len(columns) - 1}.parquet"))
        assert not (tmp_path / "out" / "similarity").exists()


# ------------------------------------------------------------------------------------------- catalog


def test_a_truncated_catalog_is_named(spark, tmp_path: Path) -> None:
    rows = ",".join(CATALOG_COLUMNS) + "\n" + "".join(
        f"{','.join(['x'] * (len(CATALOG_COLUMNS) - 1))},p{n}.jpg\n" for n in range(2000)
    )
    catalog = tmp_path / "catalog.csv.gz"
    data = gzip.compress(rows.encode())
    catalog.write_bytes(data[: len(data) - 40])
    with pytest.raises(JobError, match=r"catalog\.csv\.gz: truncated compressed file"):
        check_catalog_header(str(catalog))
    (tmp_path / "images").mkdir()
    with pytest.raises(JobError, match=r"catalog\.csv\.gz: truncated compressed file"):
        embed_images.main(["--catalog", str(catalog), "--images-root", str(tmp_path / "images"),
                           "--output", str(tmp_path / "out"), "--model", "resnet18",
                           "--run-date", DAY.isoformat()])
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.parquet"))
    catalog.write_bytes(data)
    check_catalog_header(str(catalog))  # whole: fine


# ------------------------------------------------------------------------------------------- roots


def test_no_symlink_reads_outside_the_images_root(tmp_path: Path) -> None:
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(b"outside")
    root = tmp_path / "images"
    (root / "a").mkdir(parents=True)
    (root / "a" / "in.jpg").write_bytes(b"inside")
    os.symlink(outside, root / "a" / "escape.jpg")
    os.symlink(tmp_path, root / "up")
    os.symlink(root / "a" / "in.jpg", root / "alias.jpg")  # a link that stays inside is fine
    reader = ImageReader(str(root), max_bytes=1 << 20)
    assert reader.read("a/in.jpg") == b"inside"
    assert reader.read("alias.jpg") == b"inside"
    for rel in ("a/escape.jpg", "up/secret.jpg"):
        with pytest.raises(M.ImageError) as refused:
            reader.read(rel)
        assert refused.value.reason == M.REASON_INVALID_IMAGE_PATH


def test_the_report_embeds_only_images_under_the_images_root(tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "images"
    root.mkdir()
    for path in (root / "ok.jpg", tmp_path / "secret.jpg"):
        Image.new("RGB", (8, 8), "red").save(path)
    os.symlink(tmp_path / "secret.jpg", root / "link.jpg")
    tile = run_report._tile({run_report.V_ID: "p", run_report.V_IMAGE: "ok.jpg"}, str(root), 16, {})
    assert tile.image_uri.startswith("data:image/jpeg;base64,") and tile.placeholder is None
    for value in (str(tmp_path / "secret.jpg"), "../secret.jpg", f"file://{tmp_path}/secret.jpg", "link.jpg"):
        tile = run_report._tile({run_report.V_ID: "p", run_report.V_IMAGE: value}, str(root), 16, {})
        assert tile.image_uri is None, value
        assert tile.placeholder.startswith(run_report.IMAGE_OUTSIDE_ROOT), value
