"""The Glue Data Catalog follows the S3 pointer: with ``STYLEGRAPH_GLUE_DATABASE`` set, every publish of a
declared dataset's ``dt=D`` folder creates the table (Parquet, columns from schemas/) and points the
partition at the new ``_v-<id>/`` prefix; a kill between the pointer and the catalog keeps the catalog on
the previous version, which no cleaning deletes, until the next publish repairs it (moto server)."""
from __future__ import annotations

import time

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.common import glue_catalog, storage
from schemas import interactions as I

DAY = "2024-03-31"
DB = "stylegraph_test"
BUCKET = "stylegraph-catalog"


class SimulatedKill(BaseException):
    """Raised by the fault hook: the run dies here."""


def _stage(root: str, values: list[int]) -> str:
    staged = storage.join(storage.staging_uri(root, "preprocess", storage.new_run_id()), "train")
    fs, path = storage.filesystem(staged)
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path}/part-00000.parquet") as stream:
        pq.write_table(pa.table({
            "user_idx": pa.array(values, pa.int32()),
            "item_idx": pa.array(values, pa.int32()),
            "label": pa.array([1.0] * len(values), pa.float32()),
        }), stream)
    return staged


def _partition(glue, table: str = "train") -> dict:
    return glue.get_partition(DatabaseName=DB, TableName=table, PartitionValues=[DAY])["Partition"]


def _version(final: str) -> str:
    return storage.join(final, f"{storage.VERSION_PREFIX}{storage.read_pointer(final)['version']}")


def _catalog_rows(glue) -> list[int]:
    """What a reader through the catalog (Athena, Glue) reads: every Parquet file below the location."""
    location = _partition(glue)["StorageDescriptor"]["Location"]
    return sorted(storage.read_parquet(location.rstrip("/")).column("user_idx").to_pylist())


@pytest.fixture
def glue(aws_env: str, monkeypatch: pytest.MonkeyPatch):
    client = boto3.client("glue")
    if DB not in [d["Name"] for d in client.get_databases()["DatabaseList"]]:
        client.create_database(DatabaseInput={"Name": DB})
    for table in client.get_tables(DatabaseName=DB)["TableList"]:  # each test has its own work root
        client.delete_table(DatabaseName=DB, Name=table["Name"])
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    monkeypatch.setenv(glue_catalog.DATABASE_ENV, DB)
    return client


def test_each_publish_points_the_catalog_partition_at_its_version(glue) -> None:
    root = f"s3://{BUCKET}/twice/ncf"
    final = storage.partition_uri(root, "train", DAY)
    storage.publish(_stage(root, [1, 2, 3]), final)
    first = _version(final)
    table = glue.get_table(DatabaseName=DB, Name="train")["Table"]
    assert table["PartitionKeys"] == [{"Name": "dt", "Type": "string"}]
    descriptor = table["StorageDescriptor"]
    assert descriptor["Location"] == f"{root}/train/"
    assert descriptor["SerdeInfo"]["SerializationLibrary"] == glue_catalog.PARQUET_SERDE
    assert descriptor["InputFormat"] == glue_catalog.PARQUET_INPUT_FORMAT
    assert [(c["Name"], c["Type"]) for c in descriptor["Columns"]] == [
        (field.name, field.dataType.simpleString()) for field in I.NCF_ROW_SCHEMA.fields
    ] == [("user_idx", "int"), ("item_idx", "int"), ("label", "float")]
    assert _partition(glue)["StorageDescriptor"]["Location"] == first + "/"

    storage.publish(_stage(root, [10, 11]), final)
    second = _version(final)
    assert second != first
    partition = _partition(glue)["StorageDescriptor"]
    assert partition["Location"] == second + "/"
    assert partition["SerdeInfo"]["SerializationLibrary"] == glue_catalog.PARQUET_SERDE
    assert _catalog_rows(glue) == [10, 11]


def test_a_kill_between_pointer_and_catalog_is_repaired_by_the_next_run(
    glue, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = f"s3://{BUCKET}/killed/ncf"
    final = storage.partition_uri(root, "train", DAY)
    storage.publish(_stage(root, [1, 2, 3]), final)
    storage.publish(_stage(root, [4, 5]), final)
    in_catalog = _version(final)

    def kill(step: str) -> None:
        if step == "s3:after-pointer":
            raise SimulatedKill(step)

    monkeypatch.setattr(storage, "_fault_hook", kill)
    with pytest.raises(SimulatedKill):
        storage.publish(_stage(root, [6]), final)
    monkeypatch.setattr(storage, "_fault_hook", None)
    assert _version(final) != in_catalog  # the pointer moved on, the catalog did not
    assert _partition(glue)["StorageDescriptor"]["Location"] == in_catalog + "/"

    # Past every grace period, cleaning keeps the version the catalog readers are on.
    later = time.time() + storage.VERSION_GRACE_SECONDS + 60
    removed = storage.clean_versions(final, now=later)
    assert in_catalog not in removed and removed  # the first version went, the catalog's stayed
    assert _catalog_rows(glue) == [4, 5]

    storage.publish(_stage(root, [7, 8]), final)  # the next run
    current = _version(final)
    assert _partition(glue)["StorageDescriptor"]["Location"] == current + "/"
    assert _catalog_rows(glue) == [7, 8]
    assert in_catalog in storage.clean_versions(final, now=later)


def test_without_a_database_nothing_is_registered(aws_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(glue_catalog.DATABASE_ENV, raising=False)
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    client = boto3.client("glue")
    client.create_database(DatabaseInput={"Name": "untouched"})
    root = f"s3://{BUCKET}/nodb/ncf"
    storage.publish(_stage(root, [1]), storage.partition_uri(root, "train", DAY))
    assert client.get_tables(DatabaseName="untouched")["TableList"] == []


def test_which_folders_have_a_table() -> None:
    assert glue_catalog.table_of("s3a://b/w/style/rejects/embed/dt=2024-03-31/")[:3] == (
        "rejects_embed", "s3://b/w/style/rejects/embed", "2024-03-31")
    assert glue_catalog.table_of("s3://b/w/ncf/rejects/dt=2024-03-31")[:3] == (
        "rejects", "s3://b/w/ncf/rejects", "2024-03-31")
    assert glue_catalog.table_of("s3://b/w/style/gremlin/dt=2024-03-31") is None  # CSV, no table
    assert glue_catalog.table_of("s3://b/w/ncf/index/users") is None  # not a dt= partition
    assert glue_catalog.table_of("/tmp/w/ncf/train/dt=2024-03-31") is None  # local: no catalog


def test_a_missing_database_is_one_line(aws_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from jobs.common.cli import JobError

    boto3.client("s3").create_bucket(Bucket=BUCKET)
    monkeypatch.setenv(glue_catalog.DATABASE_ENV, "no_such_db")
    root = f"s3://{BUCKET}/missingdb/ncf"
    with pytest.raises(JobError, match="Glue database 'no_such_db'"):
        storage.publish(_stage(root, [1]), storage.partition_uri(root, "train", DAY))


def test_a_table_of_another_work_root_is_refused(glue) -> None:
    from jobs.common.cli import JobError

    first = f"s3://{BUCKET}/root-a/ncf"
    storage.publish(_stage(first, [1]), storage.partition_uri(first, "train", DAY))
    other = f"s3://{BUCKET}/root-b/ncf"
    with pytest.raises(JobError, match=f"located at {first}/train/, not {other}/train/"):
        storage.publish(_stage(other, [2]), storage.partition_uri(other, "train", DAY))
    assert _partition(glue)["StorageDescriptor"]["Location"].startswith(f"{first}/train/dt={DAY}/_v-")
