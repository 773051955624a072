"""The embed job's incremental nights: reuse of unchanged images' vectors, fallbacks to a full run, and
the padded model batches that make a vector depend on its image alone. Real Spark, torch and JPEGs."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from chispa import assert_df_equality

from jobs import embed_images
from jobs.common import storage
from jobs.transforms.embed_reuse import config_differences
from schemas import embeddings as E
from tests.test_embed_job import write_catalog
from tests.test_embed_models import CPU_PLAN, drawn_image
from udfs import embed_images as U
from udfs import image_models as M

NIGHT_1, NIGHT_2, NIGHT_3 = "2024-03-30", "2024-03-31", "2024-04-01"
BATCH_SIZE = 4


def write_jpeg(path: Path, seed: int, size: tuple[int, int] = (64, 48)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    drawn_image(size, seed).save(path, "JPEG", quality=90)


def catalog_rows(products: dict[str, str]) -> list[list[str]]:
    return [[sku, f"name {sku}", "Brand", "Shoes", "Boots", path] for sku, path in products.items()]


def embed(catalog: Path, images: Path, output: Path, run_date: str, *extra: str) -> dict[str, Any]:
    return embed_images.main(
        [
            "--catalog", str(catalog),
            "--images-root", str(images),
            "--output", str(output),
            "--model", "resnet18",
            "--weights", "random:0",
            "--batch-size", str(BATCH_SIZE),
            "--device", "cpu",
            "--run-date", run_date,
            *extra,
        ]
    )


def embeddings_df(spark: Any, output: Path, run_date: str) -> Any:
    return spark.read.schema(E.EMBEDDING_SCHEMA).parquet(str(output / "embeddings" / f"dt={run_date}"))


def parquet_schema(output: Path, run_date: str) -> Any:
    import pyarrow.parquet as pq

    return pq.read_schema(next((output / "embeddings" / f"dt={run_date}").glob("part-*.parquet")))


def counts(report: dict[str, Any]) -> tuple[Any, ...]:
    products = report["products"]
    return (
        report["mode"], products["reused"], products["embedded"], products["failed"], products["removed"],
        report["images_through_model"],
    )


def test_second_night_reuses_unchanged_vectors_and_equals_a_full_run(
    spark: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    images = tmp_path / "images"
    night_1 = {
        "untouched-1": "Boots/u1.jpg",
        "untouched-2": "Boots/u2.jpg",
        "moved": "Boots/old/m.jpg",  # same bytes under a new path on night 2: reused, new path
        "rephotographed": "Boots/r.jpg",  # same path, new bytes on night 2
        "removed": "Boots/gone.jpg",
        "broken": "Boots/broken.jpg",  # not an image, both nights: retried, never reused
    }
    for seed, (sku, path) in enumerate(night_1.items()):
        if sku == "broken":
            (images / path).write_text("not a picture")
        else:
            write_jpeg(images / path, seed)
    output = tmp_path / "out"
    report_1 = embed(write_catalog(tmp_path / "c1.csv", catalog_rows(night_1)), images, output, NIGHT_1)
    assert report_1["mode"] == "full"
    assert "no embeddings partition dated 2024-03-30 or earlier" in report_1["mode_reason"]
    night_1_df = embeddings_df(spark, output, NIGHT_1)
    old_vector = {r[E.SKU]: r[E.EMBEDDING] for r in night_1_df.collect()}

    # Night 2: one product removed, one added, one re-photographed in place, one moved, two untouched.
    (images / "Boots/new").mkdir(parents=True)
    shutil.move(images / night_1["moved"], images / "Boots/new/m.jpg")
    write_jpeg(images / night_1["rephotographed"], seed=100)
    write_jpeg(images / "Boots/added.jpg", seed=101)
    (images / night_1["removed"]).unlink()
    night_2 = {**night_1, "moved": "Boots/new/m.jpg", "added": "Boots/added.jpg"}
    del night_2["removed"]
    catalog_2 = write_catalog(tmp_path / "c2.csv", catalog_rows(night_2))

    with caplog.at_level(logging.INFO, logger="stylegraph.embed_images"):
        incremental = embed(catalog_2, images, output, NIGHT_2)
    full = embed(catalog_2, images, tmp_path / "full", NIGHT_2)

    changed, unchanged = {"rephotographed", "added"}, {"untouched-1", "untouched-2", "moved"}
    assert counts(incremental) == ("incremental", len(unchanged), len(changed), 1, 1, len(changed))
    assert counts(full) == ("full", 0, len(changed | unchanged), 1, None, len(changed | unchanged))
    assert f"incremental run: reusing unchanged images' vectors from {output}" in caplog.text
    incremental_df = embeddings_df(spark, output, NIGHT_2)
    full_df = embeddings_df(spark, tmp_path / "full", NIGHT_2)
    assert_df_equality(incremental_df, full_df, ignore_row_order=True)
    # The files too: reused rows are written with a full run's Parquet types (no nullable vector elements).
    assert parquet_schema(output, NIGHT_2) == parquet_schema(tmp_path / "full", NIGHT_2)

    rows = {r[E.SKU]: r for r in incremental_df.collect()}
    assert sorted(rows) == sorted(night_2)
    for sku, path in night_2.items():
        is_broken = sku == "broken"
        assert (rows[sku][E.IMAGE_PATH], rows[sku][E.STATUS]) == (path, "error" if is_broken else "ok")
        assert rows[sku][E.CONTENT_SHA256] == hashlib.sha256((images / path).read_bytes()).hexdigest()
    assert all(rows[sku][E.EMBEDDING] == old_vector[sku] for sku in unchanged)
    assert rows["rephotographed"][E.EMBEDDING] != old_vector["rephotographed"]

    # A rerun of night 2 starts from night 2's own output: nothing new goes through the model.
    rerun = embed(catalog_2, images, output, NIGHT_2)
    assert counts(rerun) == ("incremental", len(changed | unchanged), 0, 1, 0, 0)
    assert_df_equality(embeddings_df(spark, output, NIGHT_2), full_df, ignore_row_order=True)

    # Night 3 with another batch size and precision: the configuration differs, so everything is embedded,
    # and said why.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stylegraph.embed_images"):
        other = embed(catalog_2, images, output, NIGHT_3, "--batch-size", "2", "--precision", "fp32")
    assert counts(other) == ("full", 0, len(changed | unchanged), 1, 0, len(changed | unchanged))
    # fp32 is a change of numbers only where the default computes in bf16 (this CPU has native bf16).
    changed_keys = "autocast, batch_size" if M.cpu_has_native_bf16() else "batch_size"
    assert other["mode_reason"].endswith(f"differ in {changed_keys}")
    assert f"full run (every product is embedded): previous embeddings {output}" in caplog.text


def write_partition(dataset: Path, run_date: str, config: dict[str, Any] | None, rows: int = 1) -> Path:
    """An embeddings partition as the job writes it: Parquet files and its configuration file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = dataset / f"dt={run_date}"
    folder.mkdir(parents=True)
    table = pa.table(
        {
            field.name: pa.array([None] * rows, pa.string())
            for field in E.EMBEDDING_SCHEMA.fields
            if field.name != E.EMBEDDING
        }
        | {E.EMBEDDING: pa.array([[0.5]] * rows, pa.list_(pa.float32()))}
    )
    pq.write_table(table, folder / "part-0.parquet")
    if config is not None:
        (folder / embed_images.CONFIG_FILE).write_text(json.dumps(config))
    return folder


def test_the_run_dtype_is_part_of_the_fingerprint() -> None:
    """Vectors computed in bf16 and in fp32 are never mixed: the dtype the run resolved differs the
    fingerprint, whatever this machine's CPU (the job tests cover the resolution itself)."""
    weights = M.resolve_weights("resnet18", "random:0")
    fp32 = U.EmbedConfig("resnet18", weights, ".", autocast=None)
    details = {"model": "resnet18", "weights_sha256": weights.sha256, "head_sha256": None}

    def fingerprint(config: U.EmbedConfig) -> dict[str, Any]:
        return embed_images.embed_fingerprint(config, details, {})

    bf16 = dataclasses.replace(fp32, autocast="bfloat16")
    assert (fingerprint(fp32)["autocast"], fingerprint(bf16)["autocast"]) == (None, "bfloat16")
    assert config_differences(fingerprint(fp32), fingerprint(bf16)) == ["autocast"]
    # The requested precision alone is not a difference: the numbers follow the resolved dtype.
    asked_fp32 = dataclasses.replace(fp32, precision="fp32")
    assert config_differences(fingerprint(fp32), fingerprint(asked_fp32)) == []


def test_previous_partition_choice_and_every_fallback(tmp_path: Path) -> None:
    config = {"model": "resnet18", "batch_size": 4, "libraries": {"torch": "2.14.1"}}
    output = tmp_path / "out"
    dataset = output / "embeddings"

    def find(run_date: str, *, is_full: bool = False, current: dict[str, Any] = config) -> Any:
        return embed_images.find_previous(str(output), run_date, current, is_full=is_full)

    missing = find(NIGHT_2)
    assert (missing.uri, missing.is_reusable) == (None, False)
    assert "no embeddings partition dated 2024-03-31 or earlier" in missing.reason

    night_1 = write_partition(dataset, NIGHT_1, config)
    write_partition(dataset, NIGHT_3, config)  # later than the run: never the previous one
    (dataset / f"dt={NIGHT_2}.__replaced-1a2b").mkdir()  # a publish's set-aside copy: not a partition
    assert find(NIGHT_2) == embed_images.PreviousRun(
        str(night_1), True, f"reusing unchanged images' vectors from {night_1}"
    )
    assert find(NIGHT_3).uri == str(dataset / f"dt={NIGHT_3}")  # a rerun reads its own date
    assert find(NIGHT_2, is_full=True) == embed_images.PreviousRun(str(night_1), False, "--full")

    newer_torch = {**config, "libraries": {"torch": "2.15.0"}, "device": "cuda"}
    differs = find(NIGHT_2, current=newer_torch)
    assert (differs.uri, differs.is_reusable) == (str(night_1), False)
    assert differs.reason == f"previous embeddings {night_1} differ in device, libraries.torch"

    (night_1 / embed_images.CONFIG_FILE).write_text("{not json")
    assert find(NIGHT_2).reason.startswith(f"{night_1 / embed_images.CONFIG_FILE} cannot be read: ")
    (night_1 / embed_images.CONFIG_FILE).unlink()
    assert find(NIGHT_2) == embed_images.PreviousRun(
        str(night_1), False, f"previous embeddings {night_1} have no {embed_images.CONFIG_FILE}"
    )

    (night_1 / "part-0.parquet").write_bytes(b"PAR1 this is not parquet")
    unreadable = find(NIGHT_2)
    assert (unreadable.uri, unreadable.is_reusable) == (None, False)
    assert unreadable.reason.startswith(f"previous embeddings {night_1} cannot be read: ")

    # Written before content hashes were recorded: no content_sha256 column, nothing to match on.
    shutil.rmtree(night_1)
    old = write_partition(dataset, NIGHT_1, config)
    import pyarrow.parquet as pq

    pq.write_table(pq.read_table(old / "part-0.parquet").drop([E.CONTENT_SHA256]), old / "part-0.parquet")
    assert find(NIGHT_2).reason == (
        f"previous embeddings {old} cannot be read: {old}/part-0.parquet has no column(s) content_sha256"
    )
    assert storage.partition_dates(str(dataset)) == [NIGHT_1, NIGHT_3]


@pytest.mark.parametrize("autocast", [None, "bfloat16"], ids=["fp32", "bf16"])
def test_padded_batches_make_a_vector_independent_of_its_batch(tmp_path: Path, autocast: str | None) -> None:
    """ResNet-50 on one CPU thread rounds a batch of 16 differently from a smaller one: padding every
    batch to the batch size gives an image the same bits alone or among 15 others, in either CPU
    precision."""
    size = 16
    jpegs = []
    for seed in range(size):
        buffer = io.BytesIO()
        drawn_image((80, 60), seed).save(buffer, "JPEG")
        jpegs.append(buffer.getvalue())
    images = [M.preprocess_bytes(data) for data in jpegs]
    weights = M.resolve_weights("resnet50", "random:0")
    config = U.EmbedConfig("resnet50", weights, str(tmp_path), batch_size=size)
    seen: list[int] = []

    def model() -> U.LoadedModel:
        return U.get_model(config, dataclasses.replace(CPU_PLAN, autocast_dtype=autocast))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        together = U.embed_prepared(model, [(image, "h") for image in images], size, seen.append)
        failed = M.ImageError(M.REASON_NOT_AN_IMAGE, "x")
        alone = U.embed_prepared(model, [(failed, None), (images[5], "h5")], size, seen.append)
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(together[E.EMBEDDING][5], alone[E.EMBEDDING][1])
    assert alone[E.STATUS].tolist() == ["error", "ok"]
    assert alone[E.CONTENT_SHA256].tolist() == [None, "h5"]
    assert seen == [size, 1]  # images through the model, padding not counted
    # Only failed images: the model is never asked for.
    nothing = U.embed_prepared(lambda: pytest.fail("model loaded"), [(failed, None)], size)
    assert nothing[E.STATUS].tolist() == ["error"]


def test_hash_udf_body_hashes_bytes_and_gives_none_for_unreadable_files(tmp_path: Path) -> None:
    import pandas as pd

    write_jpeg(tmp_path / "Boots" / "a.jpg", seed=1)
    (tmp_path / "Boots" / "text.jpg").write_text("not decoded, only hashed")
    paths = ["Boots/a.jpg", "Boots/text.jpg", "Boots/none.jpg", "../escape.jpg", None]
    hashes = pd.concat(
        list(U.hash_path_batches(iter([pd.Series(paths[:2]), pd.Series(paths[2:])]), str(tmp_path), 1 << 20))
    ).tolist()
    expected = [hashlib.sha256((tmp_path / p).read_bytes()).hexdigest() for p in paths[:2]]
    assert hashes == [*expected, None, None, None]
