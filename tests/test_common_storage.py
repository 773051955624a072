"""URIs, staged output and the publish swap, on local disk and on S3 (moto server)."""
from __future__ import annotations

import os
import time

import boto3
import pytest

from jobs.common import storage
from jobs.common.cli import JobError


def _tree(root) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path) as handle:
                out[os.path.relpath(path, root)] = handle.read()
    return out


def _write(root, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as handle:
            handle.write(text)


def test_spark_path_and_join() -> None:
    assert storage.spark_path("s3://b/k") == "s3://b/k"
    assert storage.spark_path("s3a://b/k") == "s3://b/k"
    assert storage.spark_path("file:///tmp/x") == "file:///tmp/x"
    assert storage.spark_path("rel/dir") == "file://" + os.path.abspath("rel/dir")
    with pytest.raises(JobError, match="hdfs"):
        storage.spark_path("hdfs://nn/x")
    assert storage.join("s3://b/out/", "/train/", "dt=2024-03-31") == "s3://b/out/train/dt=2024-03-31"


def test_publish_replaces_only_the_target_folder(tmp_path) -> None:
    out = tmp_path / "out"
    _write(out, {"train/dt=2024-03-30/a.parquet": "old30", "train/dt=2024-03-31/a.parquet": "old31",
                 "train/dt=2024-03-31/b.parquet": "stale"})
    staged = storage.staging_uri(str(out), "preprocess", "run1")
    _write(staged, {"train/dt=2024-03-31/a.parquet": "new31"})

    storage.publish(storage.join(staged, "train/dt=2024-03-31"), str(out / "train/dt=2024-03-31"))

    assert _tree(out / "train") == {"dt=2024-03-30/a.parquet": "old30", "dt=2024-03-31/a.parquet": "new31"}
    assert not os.path.exists(os.path.join(staged, "train/dt=2024-03-31"))
    assert [p for p in os.listdir(out / "train") if "replaced" in p] == []


def test_publish_without_staged_output_changes_nothing(tmp_path) -> None:
    _write(tmp_path / "final", {"x": "good"})
    with pytest.raises(JobError, match="nothing staged"):
        storage.publish(str(tmp_path / "missing"), str(tmp_path / "final"))
    assert _tree(tmp_path / "final") == {"x": "good"}


def test_list_files_skips_markers_and_hidden_files(tmp_path) -> None:
    _write(tmp_path, {"p/part-0.csv.gz": "", "p/_SUCCESS": "", "p/.part-0.csv.gz.crc": "",
                      "p/_tmp/x.csv.gz": "", "p/sub/part-1.csv.gz": "", "p/notes.txt": ""})
    assert storage.list_files(str(tmp_path / "p"), suffixes=[".csv.gz"]) == [
        f"{tmp_path}/p/part-0.csv.gz", f"{tmp_path}/p/sub/part-1.csv.gz"]
    assert storage.list_files(str(tmp_path / "nothing")) == []


def test_json_round_trip_is_atomic_file(tmp_path) -> None:
    uri = str(tmp_path / "r" / "dt=2024-03-31.json")
    storage.write_json(uri, {"b": 1, "a": "é,\"x\""})
    assert storage.read_json(uri) == {"b": 1, "a": "é,\"x\""}
    assert os.listdir(tmp_path / "r") == ["dt=2024-03-31.json"]


def test_publish_on_s3_puts_a_version_behind_the_pointer(aws_env: str) -> None:
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="stylegraph-test")
    for key, body in {"out/train/dt=1/a": "old", "out/train/dt=1/stale": "old",
                      "out/train/dt=0/a": "keep", "out/_staging/p/r1/train/dt=1/a": "new",
                      "out/_staging/p/r1/train/dt=1/sub/b": "new-b"}.items():
        s3.put_object(Bucket="stylegraph-test", Key=key, Body=body.encode())

    storage.publish("s3://stylegraph-test/out/_staging/p/r1/train/dt=1", "s3://stylegraph-test/out/train/dt=1")

    pointer = storage.read_pointer("s3://stylegraph-test/out/train/dt=1")
    version = f"s3://stylegraph-test/out/train/dt=1/_v-{pointer['version']}"
    assert pointer["files"] == ["a", "sub/b"]
    # Readers see the new files only; the older layout's files stay for readers already on them.
    assert storage.list_files("s3://stylegraph-test/out/train") == [
        "s3://stylegraph-test/out/train/dt=0/a", f"{version}/a", f"{version}/sub/b"]
    assert storage.resolve("s3://stylegraph-test/out/train/dt=1/sub") == f"{version}/sub"
    assert storage.read_text("s3://stylegraph-test/out/train/dt=1/sub/b") == "new-b"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="stylegraph-test", Prefix="out/")["Contents"]}
    assert {"out/train/dt=1/a", "out/train/dt=1/stale"} <= keys
    assert not [k for k in keys if k.startswith("out/_staging/p/r1/train/dt=1/")]
    # After the grace period a later clean removes the older layout's files, never the current version.
    assert storage.clean_versions("s3://stylegraph-test/out/train/dt=1", now=time.time() + 7200) == [
        "s3://stylegraph-test/out/train/dt=1"]
    listed = s3.list_objects_v2(Bucket="stylegraph-test", Prefix="out/train/dt=1/")["Contents"]
    keys = {o["Key"] for o in listed}
    assert {k for k in keys if not k.endswith("/")} == {
        "out/train/dt=1/_CURRENT", f"out/train/dt=1/_v-{pointer['version']}/a",
        f"out/train/dt=1/_v-{pointer['version']}/sub/b"}


def test_read_parquet_and_parquet_rows(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "data"
    (root / "k=1").mkdir(parents=True)
    pq.write_table(pa.table({"a": [1, 2, 3], "b": ["x", "y", None]}), root / "k=1" / "p0.parquet")
    pq.write_table(pa.table({"a": [4]}), root / "p1.parquet")  # no column b: filled with nulls
    pq.write_table(pa.table({"a": [99]}), root / "_hidden.parquet")  # skipped, as Spark does
    (root / "_SUCCESS").write_text("")
    assert storage.parquet_rows(str(root)) == 4
    table = storage.read_parquet(str(root))
    assert sorted(zip(table.column("a").to_pylist(), table.column("b").to_pylist(), strict=True)) == [
        (1, "x"), (2, "y"), (3, None), (4, None)]
    assert storage.read_parquet(str(root), ["a"]).column_names == ["a"]
    assert storage.parquet_rows(str(tmp_path / "missing")) == 0
    with pytest.raises(FileNotFoundError, match="no Parquet files"):
        storage.read_parquet(str(tmp_path / "missing"))


def test_atomic_file_appears_whole_or_not_at_all(tmp_path) -> None:
    uri = str(tmp_path / "out" / "part-00000.bin")
    first = storage.AtomicFile(uri)
    first.stream.write(b"half")
    assert os.listdir(tmp_path / "out") != ["part-00000.bin"]  # nothing under the final name yet
    assert [name.startswith(".part-00000.bin.") for name in os.listdir(tmp_path / "out")] == [True]
    first.abort()
    assert os.listdir(tmp_path / "out") == []
    for body in (b"whole", b"again"):  # a retried attempt replaces the file whole
        output = storage.AtomicFile(uri)
        output.stream.write(body)
        output.commit()
        assert os.listdir(tmp_path / "out") == ["part-00000.bin"]
        assert (tmp_path / "out" / "part-00000.bin").read_bytes() == body


def test_write_parquet_locally_and_on_s3(tmp_path, aws_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow as pa

    table = pa.table({"sku": ["a", 'é,"x"', None], "n": [1, 2, 3]})
    storage.write_parquet(table, str(tmp_path / "t" / "part-00000.parquet"))
    assert os.listdir(tmp_path / "t") == ["part-00000.parquet"]
    assert storage.read_parquet(str(tmp_path / "t")).equals(table)
    boto3.client("s3").create_bucket(Bucket="stylegraph-parquet")
    storage.write_parquet(table, "s3://stylegraph-parquet/t/part-00000.parquet")
    assert storage.read_parquet("s3://stylegraph-parquet/t").equals(table)

    def half_write(table, sink) -> None:  # bytes reach the stream, then the write breaks
        sink.write(b"PAR1 half a file")
        raise OSError("disk full")

    # A write that breaks leaves nothing behind: no object (closing an S3 stream completes the upload,
    # so the aborted object is deleted again), no file and no temporary file locally.
    import pyarrow.parquet as pq

    monkeypatch.setattr(pq, "write_table", half_write)
    with pytest.raises(OSError, match="disk full"):
        storage.write_parquet(table, "s3://stylegraph-parquet/t/part-00001.parquet")
    listed = boto3.client("s3").list_objects_v2(Bucket="stylegraph-parquet")["Contents"]
    assert [o["Key"] for o in listed if not o["Key"].endswith("/")] == ["t/part-00000.parquet"]
    with pytest.raises(OSError, match="disk full"):
        storage.write_parquet(table, str(tmp_path / "t" / "part-00001.parquet"))
    assert os.listdir(tmp_path / "t") == ["part-00000.parquet"]
