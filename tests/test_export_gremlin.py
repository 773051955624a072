"""jobs.export_gremlin on small hand-made inputs: hostile strings, quarantine, manifest, layout, publishing.

Expected rows are written out by hand from the inputs (ids by the documented formula); the CSV files are
read back with Python's csv module (RFC 4180), independent of Spark's reader.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs import export_gremlin
from jobs.common.cli import JobError
from jobs.validate_gremlin_csv import validate_export
from schemas import embeddings as E

RUN_DATE = "2024-03-31"

# sku, name, brand, category, subcategory, image_path
CATALOG = [
    ["A1", 'Boot, "Chelsea"; size 9', "Acme", "Shoes", "Boots", "Shoes/Boots/Acme/A1.jpg"],
    ['Q"1,x', "multi\nline name", "  leading", "Sandals", "Flat", "C:\\path\\back\\slash\\"],
    [" 8sp", "emoji 👟🔥", "日本ブランド", "Обувь", "Ботинки", "x/ü.jpg"],
    ["B2", "", "Brand", "Shoes", "", "b2.jpg"],
    ["N1", "nul\x00name", "B", "c", "d", "e"],
    ["", "no sku", "b", "c", "d", "e"],
    ["   ", "blank sku", "b", "c", "d", "e"],
    ["A1", 'Boot, "Chelsea"; size 9', "Acme", "Shoes", "Boots", "Shoes/Boots/Acme/A1.jpg"],
    ["A1", "Other name", "Acme", "Shoes", "Boots", "other.jpg"],
    ["Z\x00", "sku with a NUL", "b", "c", "d", "e"],
]
MALFORMED_LINE = "M1,too,many,fields,here,x,y\n"

EMBEDDINGS = [
    ("A1", "ok"),
    ('Q"1,x', "error"),
    (" 8sp", "error"),
    (" 8sp", "ok"),
    ("N1", "ok"),
    ("GHOST", "ok"),
]

# src, dst, score, rank
EDGES = [
    ("A1", 'Q"1,x', 0.91, 1),
    ('Q"1,x', " 8sp", 0.5, 1),
    (" 8sp", "A1", 1e-5, 1),
    ("A1", " 8sp", 0.4, 2),
    ("A1", " 8sp", 0.4, 2),  # identical copy: dropped
    ("B2", "A1", 0.3, 1),
    ("B2", "A1", 0.2, 2),  # same pair, worse rank: quarantined
    ("A1", "B2", float("nan"), 3),
    ("A1", "N1", float("inf"), 4),
    ("A1", "A1", 1.0, 5),
    ("GHOST", "A1", 0.3, 1),
    ("A1", "GHOST", 0.3, 6),
    (None, "A1", 0.3, 1),
    ("N1", "B2", None, 1),
    ("Z\x00", "A1", 0.1, 1),
]
RAW_EDGE_SCHEMA = T.StructType(
    [
        T.StructField("src", T.StringType(), True),
        T.StructField("dst", T.StringType(), True),
        T.StructField("score", T.DoubleType(), True),
        T.StructField("rank", T.IntegerType(), True),
    ]
)

VERTEX_HEADER = [
    "~id",
    "~label",
    "sku:String(single)",
    "name:String(single)",
    "brand:String(single)",
    "category:String(single)",
    "subcategory:String(single)",
    "image:String(single)",
    "embeddingStatus:String(single)",
]
EXPECTED_VERTICES = [
    [
        "product:A1",
        "product",
        "A1",
        'Boot, "Chelsea"; size 9',
        "Acme",
        "Shoes",
        "Boots",
        "Shoes/Boots/Acme/A1.jpg",
        "ok",
    ],
    [
        'product:Q"1,x',
        "product",
        'Q"1,x',
        "multi\nline name",
        "  leading",
        "Sandals",
        "Flat",
        "C:\\path\\back\\slash\\",
        "error",
    ],
    ["product: 8sp", "product", " 8sp", "emoji 👟🔥", "日本ブランド", "Обувь", "Ботинки", "x/ü.jpg", "ok"],
    ["product:B2", "product", "B2", "", "Brand", "Shoes", "", "b2.jpg", ""],
    ["product:N1", "product", "N1", "nulname", "B", "c", "d", "e", "ok"],
]
EDGE_HEADER = [
    "~id",
    "~from",
    "~to",
    "~label",
    "score:Double",
    "rank:Int",
    "metric:String",
    "higherIsCloser:Bool",
]


def edge_id(src: str, dst: str, label: str = "similar") -> str:
    source, target = f"product:{src}", f"product:{dst}"
    return f"{label}:{len(source)}:{source}->{target}"


EXPECTED_EDGES = [
    [edge_id(s, d), f"product:{s}", f"product:{d}", "similar", score, str(rank), "cosine", "true"]
    for s, d, score, rank in [
        ("A1", 'Q"1,x', 0.91, 1),
        ('Q"1,x', " 8sp", 0.5, 1),
        (" 8sp", "A1", 1e-5, 1),
        ("A1", " 8sp", 0.4, 2),
        ("B2", "A1", 0.3, 1),
    ]
]


def read_csv_rows(path: Path) -> list[list[str]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", newline="") as handle:
        return list(csv.reader(handle, strict=True))


def data_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


def write_catalog(path: Path, rows: list[list[str]], extra: str = "") -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["sku", "name", "brand", "category", "subcategory", "image_path"])
        writer.writerows(rows)
        handle.write(extra)


def run_hostile_export(spark: Any, root: Path, edges: list[tuple]) -> dict[str, Any]:
    """The hostile catalog, embeddings and ``edges`` exported (gzip, gate off) under ``root``."""
    write_catalog(root / "catalog.csv", CATALOG, MALFORMED_LINE)
    embeddings = [
        (sku, f"{sku}.jpg", [0.0] if status == "ok" else None, status, None, "resnet152", None, None)
        for sku, status in EMBEDDINGS
    ]
    spark.createDataFrame(embeddings, E.EMBEDDING_SCHEMA).write.parquet(str(root / "embeddings"))
    spark.createDataFrame(edges, RAW_EDGE_SCHEMA).write.parquet(str(root / "edges"))
    output = root / "gremlin" / f"dt={RUN_DATE}"
    report = export_gremlin.main(
        [
            *export_argv(root / "catalog.csv", root / "edges", output),
            "--embeddings",
            str(root / "embeddings"),
            "--report-dir",
            str(root / "reports"),
            "--quality",
            "off",  # the gate has its own tests (tests/test_quality_gate_jobs.py)
        ]
    )
    return {"root": root, "output": output, "report": report}


@pytest.fixture(scope="module")
def hostile_export(spark, tmp_path_factory) -> dict[str, Any]:
    """Edges with repeated (src, dst) pairs: the Arrow write finds them, the Spark path redoes the edges."""
    return run_hostile_export(spark, tmp_path_factory.mktemp("export"), EDGES)


def export_argv(catalog: Any, edges: Any, output: Any) -> list[str]:
    """The export's required arguments (paths as strings) and the run date."""
    return ["--catalog", str(catalog), "--edges", str(edges), "--output", str(output), "--run-date", RUN_DATE]


def test_hostile_vertices_round_trip_through_python_csv(hostile_export):
    files = data_files(hostile_export["output"] / "vertices")
    rows = [row for path in files for row in read_csv_rows(path)[1:]]
    assert sorted(rows) == sorted(EXPECTED_VERTICES)
    assert {tuple(read_csv_rows(path)[0]) for path in files} == {tuple(VERTEX_HEADER)}


def test_edges_round_trip_with_ids_scores_and_metric(hostile_export):
    files = data_files(hostile_export["output"] / "edges")
    assert {tuple(read_csv_rows(path)[0]) for path in files} == {tuple(EDGE_HEADER)}
    rows = [row for path in files for row in read_csv_rows(path)[1:]]
    parsed = [[*row[:4], float(row[4]), *row[5:]] for row in rows]  # Spark writes 1e-5 as 1.0E-5
    assert sorted(parsed, key=str) == sorted(EXPECTED_EDGES, key=str)


def test_every_line_of_every_file_starts_with_the_exact_header(hostile_export):
    for folder, header in (("vertices", VERTEX_HEADER), ("edges", EDGE_HEADER)):
        for path in data_files(hostile_export["output"] / folder):
            with gzip.open(path, "rb") as handle:
                assert handle.readline() == (",".join(header) + "\n").encode()


def test_only_compressed_data_files_under_the_loader_prefixes(hostile_export):
    output = hostile_export["output"]
    for folder in ("vertices", "edges"):
        names = [path.name for path in (output / folder).iterdir()]
        assert names and all(name.startswith("part-") and name.endswith(".csv.gz") for name in names), names
    assert sorted(path.name for path in output.iterdir()) == [
        "_STYLEGRAPH_OWNER",  # the export's own folder: a later run may replace it
        "_rejects",
        "edges",
        "manifest.json",
        "vertices",
    ]
    assert not (output.parent / "_staging").exists()
    for path in data_files(output):
        assert not path.name.endswith(".crc") and path.name != "_SUCCESS", path


def test_manifest_matches_the_files_on_disk(hostile_export):
    output = hostile_export["output"]
    manifest = json.loads((output / "manifest.json").read_text())
    on_disk = []
    for folder in ("vertices", "edges"):
        for path in data_files(output / folder):
            data = path.read_bytes()
            on_disk.append(
                {
                    "path": f"{folder}/{path.name}",
                    "rows": len(read_csv_rows(path)) - 1,
                    "bytes": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                }
            )
    assert sorted(manifest["files"], key=lambda f: f["path"]) == sorted(on_disk, key=lambda f: f["path"])
    vertex_files = [f for f in on_disk if f["path"].startswith("vertices/")]
    edge_files = [f for f in on_disk if f["path"].startswith("edges/")]
    assert manifest["totals"] == {
        "vertices": {"files": len(vertex_files), "rows": 5, "bytes": sum(f["bytes"] for f in vertex_files)},
        "edges": {"files": len(edge_files), "rows": 5, "bytes": sum(f["bytes"] for f in edge_files)},
        "files": len(on_disk),
        "rows": 10,
        "bytes": sum(f["bytes"] for f in on_disk),
    }
    assert manifest["headers"] == {"vertices": VERTEX_HEADER, "edges": EDGE_HEADER}
    assert (manifest["compression"], manifest["metric"], manifest["higher_is_closer"]) == (
        "gzip",
        "cosine",
        True,
    )


def test_quarantine_holds_each_bad_row_with_its_reason(spark, hostile_export):
    rejects = hostile_export["output"] / "_rejects"
    vertex_rejects = {
        (row["sku"], row["name"], row["reject_reason"])
        for row in spark.read.parquet(str(rejects / "vertices")).collect()
    }
    assert vertex_rejects == {
        (None, "no sku", "missing_sku"),  # the catalog reader reads an empty sku as null
        ("   ", "blank sku", "missing_sku"),
        ("A1", 'Boot, "Chelsea"; size 9', "duplicate_sku_identical"),
        ("A1", "Other name", "duplicate_sku"),
        ("Z\x00", "sku with a NUL", "sku_has_nul"),
        ("M1", "too", "malformed_csv_row"),
    }
    edge_rejects = edge_reject_rows(spark, rejects / "edges")
    assert edge_rejects == EXPECTED_UNIQUE_EDGE_REJECTS | {  # and the two repeated pairs' losers
        ("A1", " 8sp", 0.4, 2, "duplicate_edge_identical"),
        ("B2", "A1", 0.2, 2, "duplicate_edge"),
    }


def test_report_counts_every_row(hostile_export):
    report = hostile_export["report"]
    assert report["funnel"] == {
        "rows_in": len(CATALOG) + 1 + len(EDGES),
        "rows_out": 10,
        "rejected_by_reason": {
            "vertex.missing_sku": 2,
            "vertex.duplicate_sku": 1,
            "vertex.sku_has_nul": 1,
            "vertex.malformed_csv_row": 1,
            "edge.duplicate_edge": 1,
            "edge.non_finite_score": 2,
            "edge.self_loop": 1,
            "edge.from_vertex_missing": 2,
            "edge.to_vertex_missing": 1,
            "edge.missing_endpoint": 1,
            "edge.missing_score": 1,
        },
        "dropped_by_reason": {"vertex.duplicate_sku_identical": 1, "edge.duplicate_edge_identical": 1},
        "rows_rejected": 14,
        "rows_dropped": 2,
        "is_balanced": True,
    }
    assert report["vertices"]["vertices_with_nul_stripped"] == 1
    on_disk = json.loads((hostile_export["root"] / "reports" / "export" / f"dt={RUN_DATE}.json").read_text())
    assert on_disk["funnel"] == report["funnel"]


def test_the_validator_passes_the_export(hostile_export):
    output = hostile_export["output"]
    result = validate_export(str(output / "vertices"), str(output / "edges"))
    assert result.problems == []
    assert result.records == {"vertex": 5, "edge": 5}


# ------------------------------------------------------------------ sizing, all pairs, failure, errors
@pytest.fixture(scope="module")
def sized_inputs(spark, tmp_path_factory) -> dict[str, Path]:
    """1,000 products and 40,000 all-pairs edges (no rank), enough to need several 1 MB files."""
    root = tmp_path_factory.mktemp("sized")
    write_catalog(
        root / "catalog.csv", [[f"S{i:04d}", f"name {i}", "b", "c", "d", f"{i}.jpg"] for i in range(1000)]
    )
    (
        spark.range(40_000, numPartitions=4)
        .select(
            F.format_string("S%04d", (F.col("id") % 1000).cast("int")).alias("src"),
            F.format_string(
                "S%04d", ((F.col("id") % 1000 + 1 + F.floor(F.col("id") / 1000)) % 1000).cast("int")
            ).alias("dst"),
            (F.col("id") / 40_000.0).alias("score"),
        )
        .write.parquet(str(root / "edges"))
    )
    return {
        "root": root,
        "catalog": root / "catalog.csv",
        "edges": root / "edges",
        "output": root / "gremlin",
    }


def test_files_are_sized_near_the_target_and_all_pairs_has_no_rank(sized_inputs):
    args = [
        *export_argv(sized_inputs["catalog"], sized_inputs["edges"], sized_inputs["output"]),
        "--compression",
        "none",
        "--target-file-mb",
        "1",
        "--metric",
        "exp_l1",
        "--edge-label",
        "looks_like",
        "--quality",
        "off",
    ]
    report = export_gremlin.main(args)
    files = data_files(sized_inputs["output"] / "edges")
    sizes = [path.stat().st_size for path in files]
    rows = [row for path in files for row in read_csv_rows(path)[1:]]
    assert len(rows) == 40_000 and report["funnel"]["rows_out"] == 41_000
    assert max(sizes) <= 1.3 * 1024 * 1024 and sum(sizes) > 2 * 1024 * 1024 and len(files) >= 3
    assert len(files) <= math.ceil(sum(sizes) / (1024 * 1024)) + 4  # at most one short file per partition
    header = read_csv_rows(files[0])[0]
    assert header == ["~id", "~from", "~to", "~label", "score:Double", "metric:String", "higherIsCloser:Bool"]
    first = {row[0]: row for row in rows}[edge_id("S0000", "S0001", "looks_like")]
    assert first == [
        edge_id("S0000", "S0001", "looks_like"),
        "product:S0000",
        "product:S0001",
        "looks_like",
        "0",  # the shortest form that parses back to the same double (Spark writes 0.0)
        "exp_l1",
        "false",
    ]


def test_a_failed_export_leaves_the_previous_export_untouched(sized_inputs, monkeypatch):
    output = sized_inputs["output"]
    before = {str(path.relative_to(output)): path.read_bytes() for path in data_files(output)}
    assert "manifest.json" in before

    def disk_full(*args: Any, **kwargs: Any) -> Any:
        raise OSError("disk full after staging the files")

    monkeypatch.setattr(export_gremlin, "check_funnel", disk_full)
    with pytest.raises(OSError, match="disk full"):
        export_gremlin.main(
            [
                *export_argv(sized_inputs["catalog"], sized_inputs["edges"], output),
                "--compression",
                "gzip",
                "--quality",
                "off",
            ]
        )
    after = {str(path.relative_to(output)): path.read_bytes() for path in data_files(output)}
    assert after == before
    # The earlier run's reports sit beside the export (the default --report-dir), not inside it.
    assert sorted(os.listdir(output.parent)) == ["_reports", "catalog.csv", "edges", "gremlin"]


def test_the_gate_checks_each_edge_file_head_and_stops_bad_output(spark, sized_inputs, tmp_path, monkeypatch):
    output, reports = tmp_path / "gremlin", tmp_path / "R"
    args = [
        *export_argv(sized_inputs["catalog"], sized_inputs["edges"], output),
        "--report-dir",
        str(reports),
        "--compression",
        "none",
        "--target-file-mb",
        "1",
        "--gate-edge-rows",
        "9",
    ]
    export_gremlin.main(args)
    edge_files = data_files(output / "edges")
    per_file = math.ceil(9 / len(edge_files))
    quality_file = reports / "export" / f"dt={RUN_DATE}.quality.json"
    results = json.loads(quality_file.read_text())
    assert results["success"] is True and len(edge_files) >= 3
    assert (results["context"]["edge_rows_checked"], results["context"]["edge_sample"]) == (
        per_file * len(edge_files),
        f"first {per_file} rows of each edge file",
    )
    counted = {
        name: {check["element_count"] for check in dataset["expectations"]} - {None}
        for name, dataset in results["datasets"].items()
    }
    edges_checked = per_file * len(edge_files)
    assert counted == {"gremlin_vertices": {1000}, "gremlin_edges": {edges_checked}, "funnel": {1}}
    # Nothing was quarantined: both quarantines are empty Parquet with the reject schema.
    quarantines = {
        kind: spark.read.parquet(str(output / "_rejects" / kind)) for kind in ("vertices", "edges")
    }
    assert {kind: (df.columns, df.count()) for kind, df in quarantines.items()} == {
        "vertices": (
            [
                "sku",
                "name",
                "brand",
                "category",
                "subcategory",
                "image_path",
                "_corrupt_record",
                "reject_reason",
            ],
            0,
        ),
        "edges": (["src", "dst", "score", "reject_reason"], 0),
    }
    before = {str(p.relative_to(output)): p.read_bytes() for p in data_files(output)}

    # A writer bug that gives every edge the same ~id passes the job's own file checks; the gate stops it.
    real_pieces = export_gremlin.ga.vertex_pieces

    def same_id_pieces(skus: Any, *, label: str) -> Any:
        pieces = real_pieces(skus, label=label)
        same = pa.array(["similar:same"] * len(skus))
        return dataclasses.replace(pieces, id_head=same, id_tail=pa.array([""] * len(skus)))

    monkeypatch.setattr(export_gremlin.ga, "vertex_pieces", same_id_pieces)
    with pytest.raises(JobError, match="gremlin_edges: expect_column_values_to_be_unique"):
        export_gremlin.main(args)
    assert json.loads(quality_file.read_text())["success"] is False
    assert {str(p.relative_to(output)): p.read_bytes() for p in data_files(output)} == before
    assert sorted(os.listdir(tmp_path)) == ["R", "gremlin"]


def test_missing_input_and_bad_label_are_clear_errors(tmp_path):
    with pytest.raises(JobError, match="--edges: nothing at"):
        export_gremlin.main(
            ["--catalog", str(tmp_path), "--edges", str(tmp_path / "nope"), "--output", str(tmp_path / "out")]
        )
    with pytest.raises(JobError, match="label must match"):
        export_gremlin.main(
            [
                "--catalog",
                str(tmp_path),
                "--edges",
                str(tmp_path),
                "--output",
                str(tmp_path),
                "--edge-label",
                "similar:to",
            ]
        )
    assert sorted(os.listdir(tmp_path)) == []


def edge_reject_rows(spark, folder) -> set[tuple]:
    """(src, dst, score ("nan" for NaN), rank, reason) of the edge quarantine under ``folder``."""
    return {
        (
            row["src"],
            row["dst"],
            "nan" if row["score"] is not None and math.isnan(row["score"]) else row["score"],
            row["rank"],
            row["reject_reason"],
        )
        for row in spark.read.parquet(str(folder)).collect()
    }


def test_writer_round_trips_every_hostile_string(spark, tmp_path):
    values = [*HOSTILE_SKUS, "x\\", "עברית", "", None]  # and values no sku may be (blank, null)
    df = spark.createDataFrame(
        [(str(i), v) for i, v in enumerate(values)], "`~id` string, `name:String` string"
    )
    sizing = export_gremlin.Sizing(bytes_per_row=None, rows_per_file=1000, partitions=1)
    export_gremlin.write_csv(df, str(tmp_path / "out"), compression="gzip", sizing=sizing)
    (path,) = [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".csv.gz")]
    rows = read_csv_rows(path)
    assert rows[0] == ["~id", "name:String"]
    assert rows[1:] == [[str(i), v or ""] for i, v in enumerate(values)]
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    assert b'\\"' not in raw.replace(b'bs\\""q', b"")  # quotes doubled, never backslash-escaped
    assert f"\n{values.index(None)},\n".encode() in raw  # null is a blank field, not ""
    assert f"\n{values.index('')},\n".encode() in raw  # and so is the empty string
    assert io.BytesIO(raw).read().count(b"\x00") == 0


# ------------------------------------------------------------------ the Arrow edge writer (no repeated pair)
UNIQUE_EDGES = [row for index, row in enumerate(EDGES) if index not in (4, 6)]  # no (src, dst) twice
EXPECTED_UNIQUE_EDGE_REJECTS = {
    ("A1", "B2", "nan", 3, "non_finite_score"),
    ("A1", "N1", float("inf"), 4, "non_finite_score"),
    ("A1", "A1", 1.0, 5, "self_loop"),
    ("GHOST", "A1", 0.3, 1, "from_vertex_missing"),
    ("A1", "GHOST", 0.3, 6, "to_vertex_missing"),
    (None, "A1", 0.3, 1, "missing_endpoint"),
    ("N1", "B2", None, 1, "missing_score"),
    ("Z\x00", "A1", 0.1, 1, "from_vertex_missing"),
}


@pytest.fixture(scope="module")
def arrow_export(spark, tmp_path_factory) -> dict[str, Any]:
    return run_hostile_export(spark, tmp_path_factory.mktemp("arrow"), UNIQUE_EDGES)


def test_hostile_edges_written_by_the_arrow_tasks_round_trip(arrow_export, hostile_export):
    output = arrow_export["output"]
    files = data_files(output / "edges")
    assert [path.name for path in files] == [f"part-{i:05d}-c000.csv.gz" for i in range(len(files))]
    assert {tuple(read_csv_rows(path)[0]) for path in files} == {tuple(EDGE_HEADER)}
    rows = [row for path in files for row in read_csv_rows(path)[1:]]
    parsed = [[*row[:4], float(row[4]), *row[5:]] for row in rows]
    assert sorted(parsed, key=str) == sorted(EXPECTED_EDGES, key=str)
    # The quoted ids and ends, exactly as RFC 4180 wants them (quotes doubled, the field quoted).
    raw = b"".join(gzip.decompress(path.read_bytes()) for path in files)
    assert b'"similar:13:product:Q""1,x->product: 8sp","product:Q""1,x",product: 8sp,similar,0.5,1,' in raw
    assert arrow_export["report"]["edges"]["duplicate_keys"] == 0
    assert hostile_export["report"]["edges"]["duplicate_keys"] == 2  # (A1, 8sp) and (B2, A1): Spark path


def test_arrow_tasks_quarantine_and_count_every_bad_edge(spark, arrow_export):
    output = arrow_export["output"]
    rejects = edge_reject_rows(spark, output / "_rejects" / "edges")
    assert rejects == EXPECTED_UNIQUE_EDGE_REJECTS
    funnel = arrow_export["report"]["funnel"]
    assert {k: v for k, v in funnel["rejected_by_reason"].items() if k.startswith("edge.")} == {
        "edge.non_finite_score": 2,
        "edge.self_loop": 1,
        "edge.from_vertex_missing": 2,
        "edge.to_vertex_missing": 1,
        "edge.missing_endpoint": 1,
        "edge.missing_score": 1,
    }
    assert (funnel["rows_in"], funnel["rows_out"], funnel["is_balanced"]) == (
        len(CATALOG) + 1 + len(UNIQUE_EDGES),
        10,
        True,
    )
    assert [path.name for path in (output / "_rejects" / "edges").iterdir()] == ["part-00000.parquet"]


def test_arrow_manifest_has_each_files_rows_bytes_and_sha256(arrow_export):
    output = arrow_export["output"]
    manifest = json.loads((output / "manifest.json").read_text())
    edge_files = [item for item in manifest["files"] if item["path"].startswith("edges/")]
    on_disk = [
        {
            "path": f"edges/{path.name}",
            "rows": len(read_csv_rows(path)) - 1,
            "bytes": path.stat().st_size,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        }
        for path in data_files(output / "edges")
    ]
    assert edge_files == on_disk
    assert manifest["totals"]["edges"] == {
        "files": len(on_disk),
        "rows": 5,
        "bytes": sum(item["bytes"] for item in on_disk),
    }
    result = validate_export(str(output / "vertices"), str(output / "edges"))
    assert result.problems == [] and result.records == {"vertex": 5, "edge": 5}


HOSTILE_SKUS = [
    "plain",
    "a,b",
    'a"b',
    '"',
    '""',
    "a\nb",
    "a\rb",
    "a\r\nb",
    "back\\slash",
    'bs\\"q',
    " lead",
    "trail ",
    "semi;colon",
    "emoji 👟",
    "日本語",
    "tab\tin",
    "\u2028",
]


def arrow_records(skus: list[str], edges: list[tuple], *, has_rank: bool, label: str = "similar") -> bytes:
    pieces = export_gremlin.ga.vertex_pieces(pa.array(skus), label=label)
    columns = {"src": [e[0] for e in edges], "dst": [e[1] for e in edges], "score": [e[2] for e in edges]}
    if has_rank:
        columns["rank"] = pa.array([e[3] for e in edges], pa.int32())
    batch = pa.RecordBatch.from_pydict(columns)
    checked = export_gremlin.ga.check_batch(batch, pieces.skus)
    good = batch.filter(pa.array(checked.reasons == 0))
    tail = export_gremlin.ga.record_tail("cosine", True)
    return bytes(
        export_gremlin.ga.format_edges(
            good, checked.from_index, checked.to_index, pieces, has_rank=has_rank, tail=tail
        )
    )


def test_arrow_rows_are_byte_for_byte_what_sparks_writer_writes(spark, tmp_path):
    # Scores that Java and Arrow both write the same way; every hostile sku on both ends.
    edges = [
        (src, dst, 0.25 * (1 + i % 3), None if i % 5 == 0 else i)
        for i, (src, dst) in enumerate(zip(HOSTILE_SKUS, HOSTILE_SKUS[1:] + HOSTILE_SKUS[:1], strict=True))
    ]
    edges_df = spark.createDataFrame(edges, RAW_EDGE_SCHEMA).withColumn(
        "reject_reason", F.lit(None).cast("string")
    )
    rows_df = edges_df.transform(
        export_gremlin.tg.to_edge_rows, label="similar", metric="cosine", higher_is_closer=True
    )
    sizing = export_gremlin.Sizing(bytes_per_row=None, rows_per_file=1000, partitions=1)
    export_gremlin.write_csv(rows_df, str(tmp_path / "spark"), compression="none", sizing=sizing)
    (path,) = [p for p in (tmp_path / "spark").iterdir() if p.name.endswith(".csv")]
    spark_bytes = path.read_bytes().split(b"\n", 1)[1]
    assert arrow_records(HOSTILE_SKUS, edges, has_rank=True) == spark_bytes
    assert b'\\"' not in spark_bytes.replace(b'bs\\""q', b"")


def test_arrow_scores_parse_back_to_the_same_double():
    values = [0.5, 1e-5, 0.1 + 0.2, 1e300, -1e-300, 5e-324, -0.0, 123456789.123, 1 / 3, 2.0**53 + 2]
    pieces_skus = ["a", "b"]
    text = arrow_records(pieces_skus, [("a", "b", value, 1) for value in values], has_rank=True)
    scores = [line.split(",")[4] for line in text.decode().splitlines()]
    assert [float(score) for score in scores] == values
    assert all(pc.match_substring_regex(pa.array(scores), r"^-?[0-9.e+-]+$").to_pylist())


def test_a_retried_task_rewrites_the_same_files(tmp_path, monkeypatch):
    from udfs import gremlin_edge_files as ef

    skus = [f"S{i:03d}" for i in range(100)] + ['q"uote,d']
    rows = [(skus[i % 101], skus[(i * 7 + 1) % 101], i / 2500, i % 9) for i in range(2500)]
    table = pa.table(
        {
            "src": [r[0] for r in rows],
            "dst": [r[1] for r in rows],
            "score": [r[2] for r in rows],
            "rank": pa.array([r[3] for r in rows], pa.int32()),
        }
    )
    export_gremlin.pq.write_table(table, tmp_path / "in.parquet")
    pieces = export_gremlin.ga.vertex_pieces(pa.array(skus), label="similar")
    reject_schema = pa.schema(
        [
            ("src", pa.string()),
            ("dst", pa.string()),
            ("score", pa.float64()),
            ("rank", pa.int32()),
            ("reject_reason", pa.string()),
        ]
    )
    spec = ef.EdgeWriteSpec(
        edges_uri=str(tmp_path / "edges"),
        rejects_uri=str(tmp_path / "rejects"),
        compression="gzip",
        rows_per_file=1000,
        columns=("src", "dst", "score", "rank"),
        has_rank=True,
        header=",".join(EDGE_HEADER),
        tail=export_gremlin.ga.record_tail("cosine", True),
        reject_schema=reject_schema,
        key_ranges=3,
        vertices=len(skus),
    )
    task = ef.EdgeTask(index=7, parts=((str(tmp_path / "in.parquet"), 0, 0, 2500),), rows=2500)

    def run_once() -> tuple[dict[str, bytes], Any]:
        out = list(ef.write_edge_task(task, spec, pieces))
        stats = [payload for _, (kind, payload) in out if kind == ef.STATS][0]
        files = {p.name: p.read_bytes() for p in sorted((tmp_path / "edges").iterdir())}
        return files, {k: v for k, v in stats.items() if "seconds" not in k}

    first_files, first_stats = run_once()
    # Self-loops (i * 7 + 1 == i mod 101) are rejected; the rest is written in files of 1,000 rows.
    loops = sum(1 for r in rows if r[0] == r[1])
    assert [f["rows"] for f in first_stats["files"]] == [1000, 1000, 2500 - loops - 2000]
    assert first_stats["rejected"] == {"self_loop": loops} and loops > 0
    assert list(first_files) == ["part-00007-c000.csv.gz", "part-00007-c001.csv.gz", "part-00007-c002.csv.gz"]
    for item in first_stats["files"]:
        assert hashlib.sha256(first_files[item["name"]]).hexdigest() == item["sha256"]
        assert len(first_files[item["name"]]) == item["bytes"]
    written = [row for name in first_files for row in read_csv_rows(tmp_path / "edges" / name)[1:]]
    expected = [
        [edge_id(s, d), f"product:{s}", f"product:{d}", "similar", score, str(rank), "cosine", "true"]
        for s, d, score, rank in rows
        if s != d
    ]
    assert [[*row[:4], float(row[4]), *row[5:]] for row in written] == expected

    # An attempt that dies half-way leaves no partial file under a data name, and a retry rewrites
    # the same names with the same bytes.
    calls = {"n": 0}
    real_format = export_gremlin.ga.format_edges

    def failing_format(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("executor lost")
        return real_format(*args, **kwargs)

    monkeypatch.setattr(ef.gremlin_arrow, "format_edges", failing_format)
    with pytest.raises(OSError, match="executor lost"):
        run_once()
    assert sorted(p.name for p in (tmp_path / "edges").iterdir()) == sorted(first_files)
    monkeypatch.setattr(ef.gremlin_arrow, "format_edges", real_format)
    assert run_once() == (first_files, first_stats)
    assert sorted(p.name for p in (tmp_path / "edges").iterdir()) == sorted(first_files)


def test_repeated_pairs_are_counted_exactly_across_tasks_and_ranges():
    from udfs import gremlin_edge_files as ef

    vertices, ranges = 10, 3
    tasks = [
        [(0, 1), (9, 8), (4, 4)],
        [(0, 1), (5, 5), (9, 7)],  # (0, 1) again, in another task
        [(3, 2), (2, 3), (9, 8), (9, 8)],  # (9, 8) twice more; (2, 3) is not (3, 2)
    ]
    items = []
    for task in tasks:
        keys = export_gremlin.ga.edge_keys(
            np.array([f for f, _ in task]), np.array([t for _, t in task]), vertices
        )
        items += list(ef.key_range_chunks(keys, vertices=vertices, key_ranges=ranges))
    assert {key_range for key_range, _ in items} == {0, 1, 2}
    by_range: dict[int, list] = {}
    for key_range, chunk in items:
        by_range.setdefault(key_range, []).append((key_range, (ef.KEYS, chunk)))
    repeats = {
        key_range: [payload for kind, payload in ef.count_repeats(chunks) if kind == ef.REPEATS]
        for key_range, chunks in by_range.items()
    }
    # Ranges by ~from: 0-3 -> 0, 4-6 -> 1, 7-9 -> 2. (0, 1) repeats once, (9, 8) twice.
    assert repeats == {0: [1], 1: [0], 2: [2]}


def test_no_good_edge_still_writes_a_header_only_edge_file(spark, tmp_path):
    write_catalog(
        tmp_path / "catalog.csv", [["A1", "n", "b", "c", "d", "e"], ["B2", "n", "b", "c", "d", "e"]]
    )
    rows = [("A1", "A1", 0.5, 1), ("A1", "ZZ", 0.5, 2), ("B2", "A1", float("nan"), 1)]
    spark.createDataFrame(rows, RAW_EDGE_SCHEMA).coalesce(1).write.parquet(str(tmp_path / "edges"))
    output = tmp_path / "out"
    report = export_gremlin.main(
        [
            *export_argv(tmp_path / "catalog.csv", tmp_path / "edges", output),
            "--compression",
            "none",
            "--quality",
            "off",
        ]
    )
    (path,) = data_files(output / "edges")
    assert path.read_text() == ",".join(EDGE_HEADER) + "\n"
    assert report["funnel"]["rejected_by_reason"] == {
        "edge.self_loop": 1,
        "edge.to_vertex_missing": 1,
        "edge.non_finite_score": 1,
    }
    assert report["totals"]["edges"] == {"files": 1, "rows": 0, "bytes": path.stat().st_size}
    assert validate_export(str(output / "vertices"), str(output / "edges")).problems == []


def test_data_files_on_s3_are_whole_objects_with_the_described_bytes(aws_env):
    import boto3

    from udfs import gremlin_edge_files as ef

    boto3.client("s3").create_bucket(Bucket="stylegraph-export")
    records = "similar:12:product:a,b->product:b,product:a,product:b,similar,0.5,cosine,true\n"
    uri = "s3://stylegraph-export/staged/edges/part-00000-c000.csv.gz"
    writer = ef.CsvFileWriter(uri, "gzip", "~id,~from")
    writer.write(memoryview(records.encode()), 1)
    item = writer.close()
    body = boto3.client("s3").get_object(
        Bucket="stylegraph-export", Key="staged/edges/part-00000-c000.csv.gz"
    )
    data = body["Body"].read()
    assert item == {
        "name": "part-00000-c000.csv.gz",
        "rows": 1,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    assert gzip.decompress(data).decode() == "~id,~from\n" + records
    # An attempt that dies leaves no object behind (closing an S3 stream completes its upload).
    failing = ef.CsvFileWriter(uri.replace("c000", "c001"), "gzip", "~id,~from")
    failing.write(memoryview(records.encode()), 1)
    failing.abort()
    listed = boto3.client("s3").list_objects_v2(Bucket="stylegraph-export")["Contents"]
    # (pyarrow leaves an empty "folder/" marker after a delete; publish copies files only.)
    assert [o["Key"] for o in listed if not o["Key"].endswith("/")] == ["staged/edges/part-00000-c000.csv.gz"]


def test_edge_tasks_are_whole_rounds_of_few_large_tasks_of_equal_rows():
    def plan(groups, slots, bytes_per_row=120.0):
        tasks = export_gremlin.plan_edge_tasks(groups, bytes_per_row=bytes_per_row, slots=slots)
        return [(task.index, task.parts, task.rows) for task in tasks]

    eight = [(f"f{g // 4}", g % 4, 625_000) for g in range(8)]  # 5 M rows in 2 files of 4 row groups
    assert plan(eight, 2) == [
        (0, tuple(("f0", g, 0, 625_000) for g in range(4)), 2_500_000),
        (1, tuple(("f1", g, 0, 625_000) for g in range(4)), 2_500_000),
    ]
    # Row groups of unequal sizes (a similarity output at 5 M edges): the tasks still get equal rows, a
    # row group split between two of them.
    uneven = [("a", 0, 1_048_576), ("a", 1, 1_048_576), ("a", 2, 1_048_576), ("b", 0, 621_055)]
    assert plan(uneven, 2) == [
        (0, (("a", 0, 0, 1_048_576), ("a", 1, 0, 834_815)), 1_883_391),
        (1, (("a", 1, 834_815, 1_048_576), ("a", 2, 0, 1_048_576), ("b", 0, 0, 621_055)), 1_883_392),
    ]
    # 25 M rows: at most KEYS_PER_RANGE rows a task -> 5 tasks, rounded up to whole rounds of 2 slots
    many = [("f", g, 625_000) for g in range(40)]
    assert [rows for _, _, rows in plan(many, 2)] == [4_166_666, 4_166_667, 4_166_667] * 2
    # every row in exactly one task, in input order
    ranges = [(g, low, high) for _, parts, _ in plan(many, 2) for _, g, low, high in parts]
    joined: list[list[int]] = []
    for g, low, high in ranges:
        if joined and joined[-1][0] == g and joined[-1][2] == low:
            joined[-1][2] = high
        else:
            joined.append([g, low, high])
    assert joined == [[g, 0, 625_000] for g in range(40)]
    # empty row groups are skipped; a small input is one task
    assert plan([("f", 0, 1_500), ("f", 1, 0), ("f", 2, 1_500)], 4) == [
        (0, (("f", 0, 0, 750),), 750),
        (1, (("f", 0, 750, 1_500),), 750),
        (2, (("f", 2, 0, 750),), 750),
        (3, (("f", 2, 750, 1_500),), 750),
    ]
    assert plan([("f", 0, 10), ("f", 1, 1_000)], 2) == [(0, (("f", 0, 0, 10), ("f", 1, 0, 1_000)), 1_010)]
    assert plan([("f", 0, 10), ("f", 1, 3_000)], 2, bytes_per_row=None) == [
        (0, (("f", 0, 0, 10), ("f", 1, 0, 3_000)), 3_010)
    ]
    assert plan([("f", 0, 0)], 2) == []


def test_an_edge_task_reads_its_row_ranges_in_input_order(tmp_path):
    import pyarrow.parquet as pq

    from udfs import gremlin_edge_files as ef

    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"src": [f"s{i}" for i in range(1000)]}), path, row_group_size=300)
    parts = ((str(path), 1, 250, 300), (str(path), 2, 0, 300), (str(path), 3, 0, 40))
    task = ef.EdgeTask(index=0, parts=parts, rows=390)
    batches = list(ef.read_task_batches(task, ["src"], batch_rows=128))
    assert [v for b in batches for v in b.column("src").to_pylist()] == [f"s{i}" for i in range(550, 940)]
    assert max(b.num_rows for b in batches) <= 128


GATE_HEADER = ["~id", "~from", "~to", "~label", "score:Double", "note:String"]
# Quoted commas, quotes and newlines (LF and CRLF), blank and quoted-blank fields, non-ASCII text.
GATE_TEXT = (
    "~id,~from,~to,~label,score:Double,note:String\n"
    'e1,a,b,similar,0.5,"says ""hi"", twice"\n'
    'e2,"Q""1,x",b,similar,-1e-07,"two\nlines"\n'
    "e3,a, 8sp,,,\n"
    "e4,日本,Обувь👟,similar,NaN,x\n"
    'e5,"a\r\nb",b,similar,1,last\n'
)


def _gate_csv(path: Path, opener: Any = open) -> None:
    with opener(path, "wt", encoding="utf-8", newline="") as handle:
        handle.write(GATE_TEXT)


@pytest.mark.parametrize("suffix", ["csv", "csv.gz", "csv.bz2"])
def test_the_gate_reads_a_csv_head_with_arrow_as_spark_reads_it(spark, tmp_path, suffix):
    import bz2

    path = tmp_path / f"edges.{suffix}"
    opener = {"csv": open, "csv.gz": gzip.open, "csv.bz2": bz2.open}[suffix]
    _gate_csv(path, opener)
    columns = ["~id", "~from", "~to", "~label", "score:Double"]
    read = export_gremlin.read_csv_records(str(path), GATE_HEADER, columns, None)
    schema = T.StructType([T.StructField(name, T.StringType(), True) for name in GATE_HEADER])
    sparks = (
        spark.read.options(**export_gremlin.gremlin.GREMLIN_CSV_WRITE_OPTIONS, multiLine="true")
        .schema(schema)
        .csv(str(path))
        .select(*columns)
        .collect()
    )
    assert read.column_names == columns
    assert read.to_pylist() == [row.asDict() for row in sparks]
    assert read.column("~from").to_pylist() == ["a", 'Q"1,x', "a", "日本", "a\r\nb"]
    assert read.column("~label").to_pylist()[2] is None  # a blank field is no value, as in Spark
    assert read.column("score:Double").to_pylist()[2] is None
    # The head: the first rows only, even across a quoted newline.
    head = export_gremlin.read_csv_records(str(path), GATE_HEADER, ["~id"], 2)
    assert head.column("~id").to_pylist() == ["e1", "e2"]


def test_the_gate_counts_the_sampled_csvs_on_the_driver_and_leaves_what_arrow_cannot_read_to_spark(
    spark, sized_inputs, tmp_path, monkeypatch
):
    output, reports = tmp_path / "gremlin", tmp_path / "R"
    args = [
        *export_argv(sized_inputs["catalog"], sized_inputs["edges"], output),
        "--report-dir",
        str(reports),
        "--gate-edge-rows",
        "50",
    ]
    quality_file = reports / "export" / f"dt={RUN_DATE}.quality.json"

    def counted_by() -> dict[str, str]:
        results = json.loads(quality_file.read_text())
        return {name: dataset["counted_by"] for name, dataset in results["datasets"].items()}

    export_gremlin.main(args)
    assert counted_by() == {"gremlin_vertices": "driver", "gremlin_edges": "driver", "funnel": "driver"}
    spark_frames = []
    real_gate_frames = export_gremlin.gate_frames

    def counting_gate_frames(*a: Any, **k: Any) -> Any:
        spark_frames.append(1)
        return real_gate_frames(*a, **k)

    monkeypatch.setattr(export_gremlin, "gate_frames", counting_gate_frames)
    export_gremlin.main(args)
    assert spark_frames == []  # a good night reads nothing with Spark

    def unreadable(uri: str, header: Any, columns: Any, rows: Any) -> pa.Table:
        raise pa.ArrowInvalid(f"CSV parse error: {uri}")

    monkeypatch.setattr(export_gremlin, "read_csv_records", unreadable)
    export_gremlin.main(args)
    assert counted_by() == {"gremlin_vertices": "spark", "gremlin_edges": "spark", "funnel": "driver"}
    assert spark_frames == [1]  # both datasets from one reading


def test_the_gate_reads_records_across_arrow_blocks_with_newlines_in_quotes(tmp_path):
    # About 4 MB: Arrow reads it in blocks of 1 MB; nine of ten newlines are inside quotes.
    path = tmp_path / "edges.csv"
    note = '"' + "\n".join(["line"] * 9) + '"'
    with open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(",".join(GATE_HEADER) + "\n")
        for i in range(60_000):
            handle.write(f"e{i},a{i},b{i},similar,0.{i},{note}\n")
    read = export_gremlin.read_csv_records(str(path), GATE_HEADER, ["~id", "note:String"], None)
    assert read.num_rows == 60_000
    assert read.column("~id").to_pylist() == [f"e{i}" for i in range(60_000)]
    assert set(read.column("note:String").to_pylist()) == {note[1:-1]}


def test_the_gate_reads_csv_heads_and_parquet_files_on_s3(aws_env):
    import boto3
    import pyarrow.parquet as pq

    from jobs.common import quality, quality_pass

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="stylegraph-gate")
    key = "staged/edges/part-00000-c000.csv.gz"
    s3.put_object(Bucket="stylegraph-gate", Key=key, Body=gzip.compress(GATE_TEXT.encode()))
    read = export_gremlin.read_csv_records(f"s3://stylegraph-gate/{key}", GATE_HEADER, ["~id", "~from"], 2)
    assert read.to_pylist() == [{"~id": "e1", "~from": "a"}, {"~id": "e2", "~from": 'Q"1,x'}]
    # A staged Parquet file, counted as the preprocess gate's tasks count it.
    sink = pa.BufferOutputStream()
    rows = {
        "user_idx": pa.array([0, 0, 1], pa.int32()),
        "item_idx": pa.array([0, 1, 0], pa.int32()),
        "label": pa.array([1.0, 0.0, 1.0], pa.float32()),
    }
    pq.write_table(pa.table(rows), sink)
    s3.put_object(Bucket="stylegraph-gate", Key="ncf/test/part-0.parquet", Body=sink.getvalue().to_pybytes())
    context = {quality.N_USERS: 2, quality.N_ITEMS: 2}
    suite = quality.suite_of(quality.TRAIN, quality.QualityThresholds(), context)
    partial = quality._file_partial("s3://stylegraph-gate/ncf/test/part-0.parquet", suite)
    assert partial[quality_pass.ROWS] == 3 and partial[quality_pass.UNPROVEN] == []
    assert [e[quality_pass.LISTED] for e in partial[quality_pass.EXTENTS]] == [{"user_idx": [0, 1]}]


@pytest.mark.parametrize(
    "text",
    [
        GATE_TEXT.replace("e3,a, 8sp,,,", 'e3,a, 8sp,,"",'),  # a quoted blank: the writer writes it bare
        GATE_TEXT.replace("e4,日本", 'e4,"日本"'),  # quotes where none are needed
        GATE_TEXT.replace("-1e-07", '"-1"e-07'),  # Arrow reads -1e-07, Spark "-1"e-07
        GATE_TEXT.replace("e1,a,b", 'e1,a,"a"  '),  # Arrow reads "a  ", Spark "a": a self-loop
        GATE_TEXT.replace("\n", "\r"),  # CR line ends: Spark's lineSep is \n
        GATE_TEXT.replace("similar,0.5,", "similar,0.5,\r").replace("\n", "\r\n", 1),  # CRLF
        "\ufeff" + GATE_TEXT,  # a byte order mark
        GATE_TEXT.replace("~from,~to", "~to,~from", 1),  # columns in another order than the header's
    ],
)
def test_the_gate_counts_only_text_that_is_the_exports_own_csv(tmp_path, text):
    # Arrow and Spark split odd quoting and line ends differently; such a file goes to Spark's reader.
    path = tmp_path / "edges.csv"
    path.write_bytes(text.encode())
    with pytest.raises((export_gremlin.NotCanonicalCsvError, pa.ArrowInvalid)):
        export_gremlin.read_csv_records(str(path), GATE_HEADER, ["~id", "~from", "~to", "score:Double"], None)


def test_a_csv_head_is_parsed_once_from_the_first_chunk(tmp_path, monkeypatch):
    # The head of a large file: one chunk read, cut after its last whole line, parsed once (a chunk
    # that ends inside a record must not make every later chunk parse the whole file again).
    path = tmp_path / "edges.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8", newline="") as handle:
        handle.write(",".join(GATE_HEADER) + "\n")
        for i in range(200_000):
            handle.write(f"e{i},a{i},b{i},similar,0.{i},note {i}\n")
    parsed: list[int] = []
    real_parse = export_gremlin._parse_csv

    def counting_parse(data: bytes, header: Any) -> pa.Table:
        parsed.append(len(data))
        return real_parse(data, header)

    monkeypatch.setattr(export_gremlin, "_parse_csv", counting_parse)
    head = export_gremlin.read_csv_records(str(path), GATE_HEADER, ["~id"], 1_000)
    assert head.column("~id").to_pylist() == [f"e{i}" for i in range(1_000)]
    assert len(parsed) == 1 and parsed[0] <= 1_000 * 256


def test_a_csv_head_takes_more_lines_where_records_span_lines(tmp_path):
    # Every record holds a quoted newline: the head's lines are twice its records.
    path = tmp_path / "edges.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8", newline="") as handle:
        handle.write(",".join(GATE_HEADER) + "\n")
        for i in range(20_000):
            handle.write(f'e{i},a{i},b{i},similar,0.{i},"two\nlines {i}"\n')
    head = export_gremlin.read_csv_records(str(path), GATE_HEADER, ["~id", "note:String"], 5_000)
    assert head.column("~id").to_pylist() == [f"e{i}" for i in range(5_000)]
    assert head.column("note:String").to_pylist()[-1] == "two\nlines 4999"
