"""The catalog header check every catalog reader runs before any work."""
from __future__ import annotations

import csv
import gzip
import os

import pytest

from jobs import embed_images, export_gremlin
from jobs.common.catalog import check_catalog_header
from jobs.common.cli import JobError
from schemas.catalog import CATALOG_CSV_OPTIONS, CATALOG_SCHEMA

GOOD = ["sku", "name", "brand", "category", "subcategory", "image_path"]
SWAPPED = ["sku", "brand", "name", "category", "subcategory", "image_path"]
ROW = ["7100001", 'Trail "Runner", 2', " Müller;Schuh", "Shoes", "Sneakers", "Shoes/S/M/7100001.jpg"]


def _write(path, header, opener=open) -> str:
    with opener(path, "wt", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)  # RFC 4180, CRLF line ends, as the catalog ships
        writer.writerow(header)
        writer.writerow(ROW)
    return str(path)


def test_the_expected_header_passes_and_the_row_lands_in_its_columns(spark, tmp_path) -> None:
    plain = _write(tmp_path / "catalog.csv", GOOD)
    gzipped = _write(tmp_path / "catalog.csv.gz", GOOD, gzip.open)
    folder = tmp_path / "parts"
    folder.mkdir()
    _write(folder / "part-0.csv", GOOD)
    _write(folder / "part-1.csv", GOOD)
    for uri in (plain, gzipped, str(folder)):
        assert check_catalog_header(uri) is None
        rows = spark.read.schema(CATALOG_SCHEMA).options(**CATALOG_CSV_OPTIONS).csv(uri).collect()
        assert {tuple(row) for row in rows} == {tuple(ROW)}


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (SWAPPED, "header 'sku,brand,name,category,subcategory,image_path' is not"),
        (GOOD[:-1], "header 'sku,name,brand,category,subcategory' is not"),
        (["SKU", *GOOD[1:]], "header 'SKU,name"),
    ],
)
def test_a_header_that_differs_is_a_clear_error_naming_the_file(tmp_path, header, message) -> None:
    folder = tmp_path / "parts"
    folder.mkdir()
    _write(folder / "part-0.csv", GOOD)
    bad = _write(folder / "part-1.csv", header)
    with pytest.raises(JobError, match=message) as raised:
        check_catalog_header(str(folder))
    assert bad in str(raised.value)


def test_empty_file_and_empty_folder_are_errors(tmp_path) -> None:
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(JobError, match="empty file"):
        check_catalog_header(str(tmp_path / "empty.csv"))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(JobError, match="no catalog file"):
        check_catalog_header(str(tmp_path / "nothing"))


def test_jobs_refuse_a_reordered_catalog_and_write_nothing(spark, tmp_path) -> None:
    catalog = _write(tmp_path / "catalog.csv", SWAPPED)
    (tmp_path / "images").mkdir()
    edges = tmp_path / "edges"
    edge_schema = "src string, dst string, score double, rank int"
    spark.createDataFrame([("7100001", "7100002", 0.5, 1)], edge_schema).write.parquet(str(edges))
    runs = [
        (embed_images.main, ["--catalog", catalog, "--images-root", str(tmp_path / "images"),
                             "--output", str(tmp_path / "embed_out"), "--model", "resnet18",
                             "--weights", "random:0", "--run-date", "2024-03-31"], "embed_out"),
        (export_gremlin.main, ["--catalog", catalog, "--edges", str(edges),
                               "--output", str(tmp_path / "export_out"), "--run-date", "2024-03-31"],
         "export_out"),
    ]
    for main, argv, output in runs:
        with pytest.raises(JobError, match="header 'sku,brand,name"):
            main(argv)
        written = [os.path.relpath(os.path.join(d, f), tmp_path)
                   for d, _, files in os.walk(tmp_path) for f in files]
        assert [path for path in written if path.startswith(output)] == []
