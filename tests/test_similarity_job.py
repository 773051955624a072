"""The similarity job end to end on local Spark: brute-force equality, quarantine, failures."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import types as T

from jobs import similarity
from jobs.common.cli import JobError
from jobs.common.storage import read_json
from schemas import embeddings as E
from schemas import similarity as S
from tests.test_similarity_tiles import (
    assert_pairs_equal,
    assert_topk_equal,
    brute_all_pairs,
    brute_topk,
    sample_skus,
    sample_vectors,
)

RUN_DATE = "2024-03-31"
N, DIM = 37, 16

# The contract's schema, every field nullable: hostile files can carry what the contract forbids.
LOOSE_SCHEMA = T.StructType([T.StructField(f.name, f.dataType, True) for f in E.EMBEDDING_SCHEMA.fields])


def ok_row(sku: str | None, vector: list[float] | None, path: str = "img.jpg") -> tuple:
    return (sku, path, vector, E.STATUS_OK, None, "resnet152", "abc", None)


def ok_rows(skus: list[str], vectors: np.ndarray) -> list[tuple]:
    return [ok_row(sku, vector.tolist()) for sku, vector in zip(skus, vectors, strict=True)]


def write_input(spark: SparkSession, path: Path, rows: list[tuple], files: int) -> str:
    spark.createDataFrame(rows, LOOSE_SCHEMA).repartition(files).write.parquet(str(path))
    return str(path)


def read_edges(spark: SparkSession, out: Path) -> list[tuple]:
    return [tuple(r) for r in spark.read.parquet(str(out / "similarity" / f"dt={RUN_DATE}")).collect()]


def run_job(inp: str, out: Path, *extra: str) -> dict:
    return similarity.main(["--input", inp, "--output", str(out), "--run-date", RUN_DATE, *extra])


def counted_by(report: dict) -> dict[str, str]:
    """Who counted each dataset the gate checked: the tasks that wrote it ("writers") or Spark."""
    quality = read_json(report["report_uri"].removesuffix(".json") + ".quality.json")
    return {name: checked["counted_by"] for name, checked in quality["datasets"].items()}


@pytest.mark.parametrize(
    ("metric", "k", "files"),
    [(S.COSINE, 5, 2), (S.EXP_L1, 40, 8)],  # 40 >= N: every product gets all the others
)
def test_topk_job_equals_brute_force(
    spark: SparkSession, tmp_path: Path, metric: str, k: int, files: int
) -> None:
    skus = sample_skus(N)
    x = sample_vectors(N, DIM, seed=11)
    inp = write_input(spark, tmp_path / "in", ok_rows(skus, x), files)
    report = run_job(
        inp, tmp_path / "out", "--top-k", str(k), "--metric", metric, "--block-size", "8",
        "--parallelism", str(files),
    )
    assert_topk_equal(read_edges(spark, tmp_path / "out"), brute_topk(skus, x, metric, k))
    written_schema = spark.read.parquet(str(tmp_path / "out" / "similarity" / f"dt={RUN_DATE}")).schema
    assert written_schema == T.StructType(
        [T.StructField(f.name, f.dataType, True) for f in S.TOPK_EDGE_SCHEMA.fields]
    )
    keys = ("metric", "higher_is_closer", "mode", "k", "products", "edges", "row_blocks", "pair_block_rows")
    assert {key: report[key] for key in keys} == {
        "metric": metric,
        "higher_is_closer": S.HIGHER_IS_CLOSER[metric],
        "mode": S.MODE_TOPK,
        "k": k,
        "products": N,
        "edges": N * min(k, N - 1),
        # 37 products in blocks of at most 4 x 8 rows: two equal blocks (19 and 18 rows), not 32 and 5
        "row_blocks": 2,
        "pair_block_rows": 19,
    }
    assert read_json(report["report_uri"])["funnel"]["rows_out"] == N
    # The gate decided on what the tasks counted as they wrote: no second read of the edges.
    assert counted_by(report) == {"similarity_edges": "writers", "funnel": "driver"}
    # No rejected row: the rejects dataset is there, empty, with its columns.
    rejects_df = spark.read.parquet(str(tmp_path / "out" / "rejects" / "similarity" / f"dt={RUN_DATE}"))
    assert rejects_df.collect() == []
    assert [(f.name, f.dataType) for f in rejects_df.schema.fields] == [
        (f.name, f.dataType) for f in S.REJECT_SCHEMA.fields
    ]


@pytest.mark.parametrize(
    ("metric", "limit", "directed", "files"),
    [(S.L2, ("--max-distance", 5.0), False, 8), (S.DOT, ("--min-score", 1.0), True, 2)],
)
def test_all_pairs_job_equals_brute_force(
    spark: SparkSession, tmp_path: Path, metric: str, limit: tuple[str, float], directed: bool, files: int
) -> None:
    skus = sample_skus(N)
    x = sample_vectors(N, DIM, seed=12)
    inp = write_input(spark, tmp_path / "in", ok_rows(skus, x), files)
    flag, value = limit
    extra = ["--directed"] if directed else []
    report = run_job(
        inp, tmp_path / "out", "--all-pairs", flag, str(value), "--metric", metric, "--block-size", "8",
        "--parallelism", str(files), "--max-records-per-file", "50", *extra,
    )
    key = "min_score" if flag == "--min-score" else "max_distance"
    expected = brute_all_pairs(skus, x, metric, directed=directed, **{key: value})
    actual_rows = read_edges(spark, tmp_path / "out")
    actual = {(r[0], r[1]): r[2] for r in actual_rows}
    assert len(actual) == len(actual_rows)  # no pair twice
    assert_pairs_equal(actual, expected)
    assert report["mode"] == S.MODE_ALL_PAIRS and report["edges"] == len(expected) and report[key] == value
    parquet_files = list((tmp_path / "out" / "similarity" / f"dt={RUN_DATE}").glob("*.parquet"))
    assert len(parquet_files) >= math.ceil(len(expected) / 50)  # --max-records-per-file bounds each file
    assert max(pq.ParquetFile(f).metadata.num_rows for f in parquet_files) <= 50
    assert not [f for f in parquet_files[0].parent.iterdir() if f.suffix != ".parquet"]  # nothing else
    # Directed: each direction is a batch of its own, sorted by (src, dst), src < dst in one and src > dst
    # in the other: the tasks' counts prove every pair once, and the gate decides on them.
    assert counted_by(report) == {"similarity_edges": "writers", "funnel": "driver"}


def test_all_pairs_with_no_pair_kept_writes_an_empty_dataset(spark: SparkSession, tmp_path: Path) -> None:
    skus = sample_skus(N)
    inp = write_input(spark, tmp_path / "in", ok_rows(skus, sample_vectors(N, DIM, seed=13)), 2)
    # (the gate's "at least one row" fails an empty edge set: warn records it and publishes)
    report = run_job(
        inp, tmp_path / "out", "--all-pairs", "--min-score", "1.5", "--block-size", "8", "--quality", "warn"
    )
    assert report["edges"] == 0
    edges_df = spark.read.parquet(str(tmp_path / "out" / "similarity" / f"dt={RUN_DATE}"))
    assert edges_df.collect() == []
    assert [(f.name, f.dataType) for f in edges_df.schema.fields] == [
        (f.name, f.dataType) for f in S.ALL_PAIRS_EDGE_SCHEMA.fields
    ]


def test_bad_rows_are_quarantined_with_reasons(spark: SparkSession, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    good = {f"g{i}": rng.standard_normal(4).astype(np.float32).tolist() for i in range(6)}
    rows = [ok_row(s, v, path=f"{s}.jpg") for s, v in good.items()]
    rows += [
        ("g-err", "e.jpg", None, E.STATUS_ERROR, "decode: broken", "resnet152", "abc", None),  # dropped
        ok_row(None, [1.0, 0.0, 0.0, 0.0], path="null.jpg"),
        ok_row("   ", [1.0, 0.0, 0.0, 0.0], path="blank.jpg"),
        ok_row("dup", [1.0, 2.0, 3.0, 4.0], path="dup1.jpg"),
        ok_row("dup", [1.0, 2.0, 3.0, 4.0], path="dup2.jpg"),
        ok_row("noemb", None),
        ok_row("short", [1.0, 2.0, 3.0]),
        ok_row("nan", [1.0, float("nan"), 0.0, 0.0]),
        ok_row("inf", [1.0, float("-inf"), 0.0, 0.0]),
        ok_row("zero", [0.0, 0.0, 0.0, 0.0]),
        # an error row sharing a good sku is dropped; the good copy stays (duplicates count "ok" rows)
        ("g0", "g0-old.jpg", None, E.STATUS_ERROR, "timeout", "resnet152", "abc", None),
    ]
    inp = write_input(spark, tmp_path / "in", rows, 3)
    out = tmp_path / "out"
    report = run_job(inp, out, "--top-k", "3", "--block-size", "4", "--report-dir", str(tmp_path / "r"))

    rejects_df = spark.read.parquet(str(out / "rejects" / "similarity" / f"dt={RUN_DATE}"))
    assert rejects_df.columns == [f.name for f in S.REJECT_SCHEMA.fields]
    rejects = sorted((tuple(r) for r in rejects_df.collect()), key=str)
    assert rejects == sorted(
        [
            (None, "null.jpg", 4, S.REASON_MISSING_SKU),
            ("   ", "blank.jpg", 4, S.REASON_MISSING_SKU),
            ("dup", "dup1.jpg", 4, S.REASON_DUPLICATE_SKU),
            ("dup", "dup2.jpg", 4, S.REASON_DUPLICATE_SKU),
            ("noemb", "img.jpg", None, S.REASON_NULL_EMBEDDING),
            ("short", "img.jpg", 3, S.REASON_WRONG_LENGTH),
            ("nan", "img.jpg", 4, S.REASON_NON_FINITE),
            ("inf", "img.jpg", 4, S.REASON_NON_FINITE),
            ("zero", "img.jpg", 4, S.REASON_ZERO_NORM),
        ],
        key=str,
    )
    skus = sorted(good)
    assert_topk_equal(
        read_edges(spark, out), brute_topk(skus, np.array([good[s] for s in skus]), S.COSINE, 3)
    )
    assert report["funnel"] == {
        "rows_in": 17,
        "rows_out": 6,
        "rejected_by_reason": {
            S.REASON_MISSING_SKU: 2,
            S.REASON_DUPLICATE_SKU: 2,
            S.REASON_NULL_EMBEDDING: 1,
            S.REASON_WRONG_LENGTH: 1,
            S.REASON_NON_FINITE: 2,
            S.REASON_ZERO_NORM: 1,
        },
        "dropped_by_reason": {S.REASON_STATUS_ERROR: 2},
        "rows_rejected": 9,
        "rows_dropped": 2,
        "is_balanced": True,
    }
    assert report["embedding_dim"] == 4
    assert read_json(str(tmp_path / "r" / "similarity" / f"dt={RUN_DATE}.json"))["funnel"] == report["funnel"]

    # A later run with fewer than two valid products fails clearly and leaves the good output alone.
    before = sorted(read_edges(spark, out))
    lonely = write_input(spark, tmp_path / "in2", [ok_row("only", [1.0, 2.0]), ok_row("zero", [0.0, 0.0])], 1)
    with pytest.raises(JobError, match="1 valid embedding"):
        run_job(lonely, out, "--top-k", "3")
    assert sorted(read_edges(spark, out)) == before
    assert not list((out / "_staging").glob("*/*"))  # nothing staged left behind


@pytest.mark.parametrize(
    "argv",
    [
        ["--top-k", "3", "--all-pairs"],
        ["--all-pairs", "--metric", "l2", "--min-score", "0.5"],
        ["--all-pairs", "--metric", "cosine", "--max-distance", "0.5"],
        ["--top-k", "3", "--directed"],
        ["--top-k", "0"],
        ["--top-k", "3", "--metric", "hamming"],
    ],
)
def test_bad_arguments_are_job_errors(tmp_path: Path, argv: list[str]) -> None:
    with pytest.raises(JobError):
        run_job(str(tmp_path), tmp_path / "out", *argv)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value_type", [pa.float32(), pa.float64()])
@pytest.mark.parametrize("has_embed_columns", [True, False])
def test_any_parquet_with_sku_and_embedding_is_read(
    spark: SparkSession, tmp_path: Path, value_type: pa.DataType, has_embed_columns: bool
) -> None:
    """Only sku and embedding (a list of float or double) are required; a file without status counts
    every row as ok, one without image_path leaves it null in the rejects."""
    skus = sample_skus(N)
    x = sample_vectors(N, DIM, seed=5)
    columns = {
        E.SKU: pa.array(skus + ["short"], pa.string()),
        E.EMBEDDING: pa.array([*x.tolist(), [1.0, 2.0]], pa.list_(value_type)),
    }
    if has_embed_columns:
        columns[E.STATUS] = pa.array([E.STATUS_OK] * (N + 1), pa.string())
        columns[E.IMAGE_PATH] = pa.array([f"{sku}.jpg" for sku in [*skus, "short"]], pa.string())
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table(columns), tmp_path / "in" / "part-0.parquet")
    report = run_job(str(tmp_path / "in"), tmp_path / "out", "--top-k", "3", "--block-size", "4")
    assert_topk_equal(read_edges(spark, tmp_path / "out"), brute_topk(skus, x, S.COSINE, 3))
    assert report["funnel"]["rejected_by_reason"] == {S.REASON_WRONG_LENGTH: 1}
    rejects = spark.read.parquet(str(tmp_path / "out" / "rejects" / "similarity" / f"dt={RUN_DATE}"))
    assert [(r[E.SKU], r[E.IMAGE_PATH]) for r in rejects.collect()] == [
        ("short", "short.jpg" if has_embed_columns else None)
    ]


def test_input_without_sku_or_embedding_is_a_job_error(spark: SparkSession, tmp_path: Path) -> None:
    inp = write_input(spark, tmp_path / "in", ok_rows(["a", "b", "c"], np.eye(3, dtype=np.float32)), 1)
    spark.read.parquet(inp).drop(E.EMBEDDING).write.parquet(str(tmp_path / "in2"))
    with pytest.raises(JobError, match=r"\.parquet has no column\(s\) \['embedding'\]"):
        run_job(str(tmp_path / "in2"), tmp_path / "out", "--top-k", "2")
    assert not list((tmp_path / "out").glob("similarity/*"))
    # A file that is not Parquet at all (truncated, or something else named .parquet).
    (tmp_path / "in3").mkdir()
    (tmp_path / "in3" / "part-0.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(JobError, match=r"part-0\.parquet is not a readable Parquet file"):
        run_job(str(tmp_path / "in3"), tmp_path / "out", "--top-k", "2")
    assert not list((tmp_path / "out").glob("similarity/*"))


def test_missing_input_is_a_job_error(tmp_path: Path) -> None:
    with pytest.raises(JobError, match="does not exist"):
        run_job(str(tmp_path / "nope"), tmp_path / "out", "--top-k", "3")
    assert not (tmp_path / "out").exists()


def test_staged_edge_files_must_be_the_ones_reported_each_with_its_rows(tmp_path: Path) -> None:
    # Two files whose rows add up to what was reported, but not file by file: refused.
    folder = tmp_path / "edges"
    folder.mkdir()
    table = pa.table({"src": ["a", "b", "c"], "dst": ["b", "c", "a"], "score": [0.1, 0.2, 0.3]})
    pq.write_table(table.slice(0, 1), folder / "part-00000-c000.parquet")
    pq.write_table(table.slice(1, 2), folder / "part-00001-c000.parquet")
    schema = table.schema
    similarity.check_edge_files(str(folder), [("part-00000-c000.parquet", 1), ("part-00001-c000.parquet", 2)],
                                schema)
    with pytest.raises(RuntimeError, match="footers of"):
        similarity.check_edge_files(
            str(folder), [("part-00000-c000.parquet", 2), ("part-00001-c000.parquet", 1)], schema
        )
    with pytest.raises(RuntimeError, match="on storage, the tasks reported"):
        similarity.check_edge_files(str(folder), [("part-00000-c000.parquet", 3)], schema)
