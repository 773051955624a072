"""The embed job end to end on local Spark: real images, real torch, seeded weights, tiny inputs."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from pyspark.sql import functions as F

from jobs import embed_images
from jobs.common import worker_daemon
from jobs.common.cli import JobError
from jobs.common.quality import QualityGateError
from tests.test_embed_models import (
    assert_close,
    drawn_image,
    min_cosine,
    png_header_only,
    reference_features,
    reference_inputs,
    write_good_images,
)
from udfs import image_models as M
from udfs.embed_images import WORKER_MODULES

RUN_DATE = "2024-03-31"
HEADER = ["sku", "name", "brand", "category", "subcategory", "image_path"]


def write_catalog(path: Path, rows: list[list[Any]]) -> Path:
    """RFC 4180 CSV (quotes doubled, fields with commas/newlines quoted); None -> empty field."""
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(HEADER)
        writer.writerows([["" if v is None else v for v in row] for row in rows])
    return path


def read_rows(spark: Any, folder: Path) -> list[dict[str, Any]]:
    return [row.asDict() for row in spark.read.parquet(str(folder)).collect()]


def reason(error: str | None) -> str | None:
    return error.split(":")[0] if error else None


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_catalog_run_matches_torchvision_and_accounts_for_every_row(
    spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = tmp_path / "images"
    good = write_good_images(images / "Shoes" / "Boots")
    bad = images / "Shoes" / "Broken"
    bad.mkdir(parents=True)
    jpeg = io.BytesIO()
    drawn_image((64, 48), 3).save(jpeg, "JPEG")
    (bad / "text.jpg").write_text("this is not a picture\n")
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (bad / "bomb.png").write_bytes(png_header_only(100_000, 100_000))
    (bad / "folder.jpg").mkdir()

    # Good images, each under a hostile sku or name (commas, quotes, newlines, unicode, leading space).
    good_rows = {
        f"g{i}" if i % 3 else f'g"{i}, sku\nwith newline': [
            f'Boot {i}, "quoted"\nline 2',
            "Brand é",
            "Shoes",
            "Boots",
            f"Shoes/Boots/{name}",
        ]
        for i, name in enumerate(good)
    }
    bad_rows = {
        "b-text": ("Shoes/Broken/text.jpg", "not_an_image"),
        "b-empty": ("Shoes/Broken/empty.jpg", "empty_file"),
        "b-truncated": ("Shoes/Broken/truncated.jpg", "truncated_image"),
        "b-bomb": ("Shoes/Broken/bomb.png", "decompression_bomb"),
        "b-folder": ("Shoes/Broken/folder.jpg", "unreadable_file"),
        "b-missing": ("Shoes/Broken/nowhere.jpg", "missing_file"),
        "b-escape": ("../outside.jpg", "invalid_image_path"),
        "b-nopath": (None, "missing_image_path"),
    }
    rejected = [
        [None, "no sku", "x", "Shoes", "Boots", "Shoes/Boots/rgb.jpg"],
        ["  ", "blank sku", "x", "Shoes", "Boots", "Shoes/Boots/rgb.jpg"],
        ["g1", "second g1", "x", "Shoes", "Boots", "Shoes/Boots/gray.png"],
    ]
    rows = [[sku, *values] for sku, values in good_rows.items()]
    rows[2:2] = [[sku, "broken", "x", "Shoes", "Broken", path] for sku, (path, _) in bad_rows.items()]
    rows.insert(1, rejected[0])
    rows.insert(5, rejected[1])
    rows.append(rejected[2])
    catalog = write_catalog(tmp_path / "catalog.csv", rows)
    output = tmp_path / "out"

    # The worker environment each of the job's Python functions is defined in (Spark takes it then).
    preloads: dict[str, str | None] = {}
    probe_executor, make_embed_udf = embed_images.probe_executor, embed_images.make_embed_udf

    def probe_in(spark: Any, spec: Any) -> Any:
        preloads["probe"] = spark.sparkContext.environment.get(worker_daemon.PRELOAD_ENV)
        return probe_executor(spark, spec)

    def embed_udf_in(*args: Any) -> Any:
        preloads["embed"] = spark.sparkContext.environment.get(worker_daemon.PRELOAD_ENV)
        return make_embed_udf(*args)

    monkeypatch.setattr(embed_images, "probe_executor", probe_in)
    monkeypatch.setattr(embed_images, "make_embed_udf", embed_udf_in)
    report = embed_images.main(
        [
            "--catalog",
            str(catalog),
            "--images-root",
            str(images),
            "--output",
            str(output),
            "--model",
            "resnet18",
            "--weights",
            "random:0",
            "--batch-size",
            "4",
            "--device",
            "cpu",
            "--precision",
            "fp32",
            "--run-date",
            RUN_DATE,
        ]
    )

    sha = hashlib.sha256(
        b"stylegraph random weights: torchvision resnet18 default init after torch.manual_seed(0)"
    ).hexdigest()
    written = read_rows(spark, output / "embeddings" / f"dt={RUN_DATE}")
    actual = sorted(
        (r["sku"], r["image_path"], r["status"], reason(r["error"]), r["model"], r["weights_sha256"])
        for r in written
    )
    expected = sorted(
        [(sku, values[-1], "ok", None, "resnet18", sha) for sku, values in good_rows.items()]
        + [(sku, path, "error", why, "resnet18", sha) for sku, (path, why) in bad_rows.items()]
    )
    assert actual == expected
    assert all(r["embedding"] is None for r in written if r["status"] == "error")

    # The embeddings equal torchvision's own model and transform, computed here independently.
    by_path = {
        r["image_path"]: np.asarray(r["embedding"], dtype=np.float32) for r in written if r["status"] == "ok"
    }
    names = list(good)
    reference = reference_features("resnet18", 0, [good[n] for n in names])
    assert_close(np.stack([by_path[f"Shoes/Boots/{n}"] for n in names]), reference)

    rejects = read_rows(spark, output / "rejects" / "embed" / f"dt={RUN_DATE}")
    assert sorted(rejects, key=lambda r: r["name"]) == [
        dict(zip([*HEADER, "reason"], [*row, why], strict=True))
        for row, why in sorted(
            zip(rejected, ["missing_sku", "missing_sku", "duplicate_sku"], strict=True), key=lambda p: p[0][1]
        )
    ]

    errors = {why: 1 for _, why in bad_rows.values()}
    assert report["funnel"] == {
        "rows_in": 19,
        "rows_out": 8,
        "rejected_by_reason": {"missing_sku": 2, "duplicate_sku": 1, **errors},
        "dropped_by_reason": {},
        "rows_rejected": 11,
        "rows_dropped": 0,
        "is_balanced": True,
    }
    assert (report["rows_written"], report["embeddings_ok"]) == (16, 8)
    assert report["embeddings_error_by_reason"] == errors
    assert report["catalog_rejects_by_reason"] == {"missing_sku": 2, "duplicate_sku": 1}
    on_disk = json.loads((output / "_reports" / "embed" / f"dt={RUN_DATE}.json").read_text())
    assert on_disk["funnel"] == report["funnel"]
    # The gate decided on the table the driver counted (no Spark pass over the vectors).
    gate = json.loads((output / "_reports" / "embed" / f"dt={RUN_DATE}.quality.json").read_text())
    assert gate["success"] and gate["datasets"]["embeddings"]["counted_by"] == "driver"
    assert files_under(output / "_staging") == []
    # Its Python tasks, the probe first, forked from a daemon that imported torch and the embedding code
    # once; the session's later tasks (another job's) do not.
    assert {name: worker_daemon.modules_to_preload(value) for name, value in preloads.items()} == {
        "probe": list(WORKER_MODULES), "embed": list(WORKER_MODULES)
    }
    assert worker_daemon.PRELOAD_ENV not in spark.sparkContext.environment


def test_weights_file_head_and_normalize(spark: Any, tmp_path: Path) -> None:
    images = tmp_path / "images"
    good = write_good_images(images)
    names = ["rgb.jpg", "cmyk.jpg", "rgba.png"]
    torch.manual_seed(3)
    backbone = torchvision.models.resnet18(weights=None)
    weights = tmp_path / "resnet18-finetuned.pth"
    torch.save(backbone.state_dict(), weights)
    torch.manual_seed(4)
    head = torch.nn.Linear(512, 8)
    head_path = tmp_path / "head.pth"
    torch.save(head.state_dict(), head_path)
    catalog = write_catalog(
        tmp_path / "catalog.csv", [[f"s{i}", "n", "b", "c", "s", n] for i, n in enumerate(names)]
    )
    output = tmp_path / "out"

    report = embed_images.main(
        [
            "--catalog",
            str(catalog),
            "--images-root",
            str(images),
            "--output",
            str(output),
            "--model",
            "resnet18",
            "--weights",
            str(weights),
            "--head",
            str(head_path),
            "--normalize",
            "--batch-size",
            "2",
            "--precision",
            "fp32",
            "--run-date",
            RUN_DATE,
        ]
    )

    backbone.fc = torch.nn.Identity()
    with torch.inference_mode():
        features = head(backbone.eval()(reference_inputs([good[n] for n in names])))
        expected = torch.nn.functional.normalize(features, dim=1).numpy()
    written = {r["sku"]: r for r in read_rows(spark, output / "embeddings" / f"dt={RUN_DATE}")}
    assert sorted(written) == ["s0", "s1", "s2"]
    assert {(r["model"], r["weights_sha256"], r["status"]) for r in written.values()} == {
        ("resnet18+head:8+l2", hashlib.sha256(weights.read_bytes()).hexdigest(), "ok")
    }
    actual = np.stack([np.asarray(written[f"s{i}"]["embedding"], dtype=np.float32) for i in range(3)])
    assert_close(actual, expected)
    assert report["head_sha256"] == hashlib.sha256(head_path.read_bytes()).hexdigest()
    assert report["dimensions"] == 8


def test_vectors_the_gate_refuses_are_checked_with_spark_and_nothing_is_published(
    spark: Any, tmp_path: Path
) -> None:
    """A head that gives NaN vectors: the driver's counts do not prove the suite, Spark's gate counts the
    bad rows, and the run fails with exit 2 and publishes nothing."""
    images = tmp_path / "images"
    names = sorted(write_good_images(images))[:3]
    head = torch.nn.Linear(512, 4)
    with torch.no_grad():
        head.weight.fill_(float("nan"))
    head_path = tmp_path / "nan-head.pth"
    torch.save(head.state_dict(), head_path)
    rows = [[f"s{i}", "n", "b", "c", "s", name] for i, name in enumerate(names)]
    catalog = write_catalog(tmp_path / "catalog.csv", rows)
    output = tmp_path / "out"
    with pytest.raises(JobError, match="every ok row has a finite embedding of 4 floats") as failed:
        embed_images.main(
            ["--catalog", str(catalog), "--images-root", str(images), "--output", str(output), "--model",
             "resnet18", "--weights", "random:0", "--head", str(head_path), "--precision", "fp32",
             "--run-date", RUN_DATE]
        )
    assert isinstance(failed.value, QualityGateError)  # exit 2, one line
    gate = json.loads((output / "_reports" / "embed" / f"dt={RUN_DATE}.quality.json").read_text())
    checked = gate["datasets"]["embeddings"]
    assert checked["counted_by"] == "spark" and not gate["success"]
    (vectors,) = [c for c in checked["expectations"] if not c["success"]]
    assert vectors["description"] == "every ok row has a finite embedding of 4 floats"
    assert vectors["observed_value"] == 3  # every product's vector, counted by Spark's query
    assert not (output / "embeddings").exists() and files_under(output / "_staging") == []


def test_images_root_listing_without_catalog(spark: Any, tmp_path: Path) -> None:
    images = tmp_path / "images"
    (images / "Boots" / "A").mkdir(parents=True)
    (images / "Boots" / "B").mkdir(parents=True)
    drawn_image((40, 30), 1).save(images / "Boots" / "A" / "1.jpg")
    drawn_image((30, 40), 2).save(images / "Boots" / "B" / "1.png")  # same sku as A/1.jpg
    drawn_image((36, 36), 3).save(images / "Boots" / "A" / "2.JPG")
    (images / "Boots" / "A" / "zero.jpg").write_bytes(b"")
    (images / "Boots" / "notes.txt").write_text("not a product")
    drawn_image((20, 20), 4).save(images / "Boots" / ".hidden.jpg", "JPEG")
    output = tmp_path / "out"

    report = embed_images.main(
        [
            "--images-root",
            str(images),
            "--output",
            str(output),
            "--model",
            "resnet18",
            "--weights",
            "random:0",
            "--precision",
            "fp32",
            "--run-date",
            RUN_DATE,
        ]
    )

    written = read_rows(spark, output / "embeddings" / f"dt={RUN_DATE}")
    assert sorted((r["sku"], r["image_path"], r["status"], reason(r["error"])) for r in written) == [
        ("1", "Boots/A/1.jpg", "ok", None),
        ("2", "Boots/A/2.JPG", "ok", None),
        ("zero", "Boots/A/zero.jpg", "error", "empty_file"),
    ]
    by_sku = {r["sku"]: np.asarray(r["embedding"], dtype=np.float32) for r in written if r["status"] == "ok"}
    reference = reference_features(
        "resnet18", 0, [images / "Boots" / "A" / "1.jpg", images / "Boots" / "A" / "2.JPG"]
    )
    assert_close(np.stack([by_sku["1"], by_sku["2"]]), reference)
    rejects = read_rows(spark, output / "rejects" / "embed" / f"dt={RUN_DATE}")
    assert rejects == [
        {**dict.fromkeys(HEADER), "sku": "1", "image_path": "Boots/B/1.png", "reason": "duplicate_sku"}
    ]
    assert report["input"] == "images_root"
    assert report["funnel"]["rejected_by_reason"] == {"duplicate_sku": 1, "empty_file": 1}
    assert (report["funnel"]["rows_in"], report["funnel"]["rows_out"]) == (4, 2)


def test_resnet152_default_model_on_two_images(spark: Any, tmp_path: Path) -> None:
    images = tmp_path / "images"
    good = write_good_images(images)
    names = ["exif_rotated.jpg", "palette.png"]
    catalog = write_catalog(
        tmp_path / "catalog.csv", [[f"p{i}", "n", "b", "c", "s", n] for i, n in enumerate(names)]
    )
    output = tmp_path / "out"

    report = embed_images.main(
        [
            "--catalog",
            str(catalog),
            "--images-root",
            str(images),
            "--output",
            str(output),
            "--weights",
            "random:1",
            "--run-date",
            RUN_DATE,
        ]
    )

    written = {r["sku"]: r for r in read_rows(spark, output / "embeddings" / f"dt={RUN_DATE}")}
    actual = np.stack([np.asarray(written[f"p{i}"]["embedding"], dtype=np.float32) for i in range(2)])
    assert actual.shape == (2, 2048)
    reference = reference_features("resnet152", 1, [good[n] for n in names])
    # The default precision: bf16 where this CPU computes it natively (close to fp32, not equal), else fp32.
    if M.cpu_has_native_bf16():
        assert min_cosine(actual, reference) > 0.999
        assert np.abs(actual - reference).max() > 1e-4 * np.abs(reference).max()
    else:
        assert_close(actual, reference)
    assert {r["model"] for r in written.values()} == {"resnet152"}
    assert (report["dimensions"], report["precision"]) == (2048, "auto")
    assert report["autocast"] == ("bfloat16" if M.cpu_has_native_bf16() else "fp32")


def test_bad_arguments_fail_before_any_work(spark: Any, tmp_path: Path) -> None:
    images = tmp_path / "images"
    write_good_images(images)
    catalog = write_catalog(tmp_path / "catalog.csv", [["s1", "n", "b", "c", "s", "rgb.jpg"]])
    torch.manual_seed(0)
    head_path = tmp_path / "head512.pth"
    torch.save(torch.nn.Linear(512, 16).state_dict(), head_path)
    output = tmp_path / "out"
    base = ["--images-root", str(images), "--output", str(output), "--run-date", RUN_DATE]
    cases = {
        "unknown model 'resnet99'": ["--catalog", str(catalog), "--model", "resnet99"],
        "file not found": ["--catalog", str(catalog), "--weights", str(tmp_path / "missing.pth")],
        "head takes 512 inputs but the model gives 2048": [
            "--catalog",
            str(catalog),
            "--model",
            "resnet50",
            "--weights",
            "random:0",
            "--head",
            str(head_path),
        ],
        "--catalog .*nope.csv: not found": ["--catalog", str(tmp_path / "nope.csv"), "--model", "resnet18"],
    }
    for message, argv in cases.items():
        with pytest.raises(JobError, match=message):
            embed_images.main([*base, *argv])
    assert not output.exists()


def test_no_input_images_is_an_error_and_writes_nothing(spark: Any, tmp_path: Path) -> None:
    empty_root = tmp_path / "empty"
    (empty_root / "Boots").mkdir(parents=True)
    (empty_root / "Boots" / "readme.txt").write_text("no images here")
    header_only = write_catalog(tmp_path / "catalog.csv", [])
    output = tmp_path / "out"
    common = ["--output", str(output), "--model", "resnet18", "--weights", "random:0", "--run-date", RUN_DATE]
    with pytest.raises(JobError, match=r"no input images: --images-root .*empty has no products"):
        embed_images.main(["--images-root", str(empty_root), *common])
    with pytest.raises(JobError, match=r"no input images: --catalog .*catalog.csv has no products"):
        embed_images.main(["--catalog", str(header_only), "--images-root", str(empty_root), *common])
    # A catalog whose images are all missing (wrong --images-root) embeds nothing: refused, nothing published.
    catalog = write_catalog(tmp_path / "some.csv", [["s1", "n", "b", "c", "s", "x/1.jpg"]])
    with pytest.raises(JobError, match=r"no image could be embedded .*missing_file"):
        embed_images.main(["--catalog", str(catalog), "--images-root", str(empty_root), *common])
    # Every catalog row quarantined (blank skus): the staged embeddings file is empty, read back as no rows.
    blank_rows = [[" ", "n", "b", "c", "s", "x/1.jpg"], [None, "n", "b", "c", "s", "x/2.jpg"]]
    blank = write_catalog(tmp_path / "blank.csv", blank_rows)
    with pytest.raises(JobError, match=r"no image could be embedded \(0 products"):
        embed_images.main(["--catalog", str(blank), "--images-root", str(empty_root), *common])
    assert files_under(output) == []


def test_partition_count_fills_whole_rounds_of_slots() -> None:
    # Slots come from jobs.common.spark.task_slots (tested in test_common_spark.py).
    cases = {
        (160, 2, 16): 2,  # one partition per slot
        (17, 2, 4): 2,
        (3, 2, 16): 1,  # never smaller than a batch
        (50_000, 16, 16): 32,  # <= 2048 rows each, in whole rounds of 16 slots
        (50_000, 2, 16): 26,
    }
    assert {args: embed_images.partition_count(*args) for args in cases} == cases


def test_products_are_spread_at_most_one_row_apart(spark: Any) -> None:
    # A plain repartition(3) puts 32 products in 9, 11 and 12 rows; a model batch is padded to its full
    # size, so a partition over a multiple of the batch size costs its task a whole extra batch.
    for n, inputs, partitions in ((32, 1, 3), (32, 5, 2), (97, 7, 3), (33, 2, 4)):
        skus = [f"s{i:03d}" for i in range(n)]
        products_df = spark.createDataFrame(
            [(sku, f"{sku}.jpg") for sku in reversed(skus)], "sku string, image_path string"
        ).repartition(inputs)
        rows = (
            products_df.transform(embed_images.spread_evenly, partitions)
            .select(F.spark_partition_id().alias("p"), "sku", "image_path")
            .collect()
        )
        by_partition: dict[int, list[str]] = {}
        for row in rows:
            by_partition.setdefault(row["p"], []).append(row["sku"])
        assert sorted(by_partition) == list(range(partitions))
        sizes = [len(batch) for batch in by_partition.values()]
        assert max(sizes) - min(sizes) <= 1, (n, partitions, sizes)
        # Every product once, with its path; each partition in sku order.
        assert sorted((row["sku"], row["image_path"]) for row in rows) == [(s, f"{s}.jpg") for s in skus]
        assert all(batch == sorted(batch) for batch in by_partition.values())
    # The one dealing task sits after a shuffle: what comes before it keeps its own tasks (a coalesce(1)
    # would run an incremental night's join in that one task).
    spread_df = products_df.transform(embed_images.spread_evenly, 2)
    plan = spread_df._jdf.queryExecution().executedPlan().toString()
    assert "Exchange SinglePartition" in plan and "Coalesce" not in plan
