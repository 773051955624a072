"""readers/ncf_torch.py: a whole epoch of a Parquet train set through petastorm into a torch DataLoader."""

from __future__ import annotations

import uuid
from collections import Counter

import boto3
import pytest
import torch

from readers.ncf_torch import ncf_dataloader, petastorm_url
from schemas import interactions as S


@pytest.fixture(scope="module")
def train_dir(spark, tmp_path_factory):
    """A train-like folder written by Spark: several files and row groups, repeated rows, hostile extremes."""
    rows = [(u, (u * 7 + k) % 50, 1.0 if k % 5 == 0 else 0.0) for u in range(40) for k in range(25)]
    rows += [(0, 0, 0.0), (0, 0, 0.0), (2**31 - 1, 0, 1.0)]  # duplicates are separate rows; int32 max
    folder = tmp_path_factory.mktemp("petastorm") / "train" / "dt=2024-03-31"
    df = spark.createDataFrame(rows, S.NCF_ROW_SCHEMA).repartition(3)
    df.write.option("parquet.block.size", 4096).parquet(str(folder))
    return folder, rows


def _epoch(loader) -> tuple[Counter, list[int], set]:
    seen: Counter = Counter()
    sizes = []
    dtypes = set()
    for users, items, labels in loader:
        sizes.append(len(users))
        dtypes.add((users.dtype, items.dtype, labels.dtype))
        seen.update(zip(users.tolist(), items.tolist(), labels.tolist(), strict=True))
    return seen, sizes, dtypes


def test_one_epoch_returns_every_row_once(train_dir):
    folder, rows = train_dir
    loader = ncf_dataloader(str(folder), batch_size=64, workers_count=1)
    assert isinstance(loader, torch.utils.data.DataLoader)
    seen, sizes, dtypes = _epoch(loader)
    assert seen == Counter(rows)
    assert sizes == [64] * (len(rows) // 64) + [len(rows) % 64]
    assert dtypes == {(torch.int64, torch.int64, torch.float32)}


def test_shuffled_epochs_cover_all_rows_in_new_orders(train_dir):
    folder, rows = train_dir
    loader = ncf_dataloader(petastorm_url(str(folder)), batch_size=100, shuffle=True, seed=7, workers_count=2)
    orders = []
    for _ in range(2):
        order = [tuple(r) for batch in loader for r in zip(*(t.tolist() for t in batch), strict=True)]
        assert Counter(order) == Counter(rows)
        orders.append(order)
    assert orders[0] != orders[1]
    assert orders[0] != sorted(orders[0])


def test_url_and_batch_size_checks(tmp_path):
    assert petastorm_url(str(tmp_path)) == f"file://{tmp_path}"
    with pytest.raises(ValueError, match="batch_size"):
        ncf_dataloader(str(tmp_path), batch_size=0)


def test_an_epoch_read_from_s3(train_dir, aws_env):
    """The training code reads ``s3://`` (here the local moto server) as it reads a local folder."""
    folder, rows = train_dir
    bucket = f"stylegraph-ncf-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    prefix = "work/ncf/train/dt=2024-03-31"
    for path in sorted(folder.iterdir()):
        s3.upload_file(str(path), bucket, f"{prefix}/{path.name}")
    uri = f"s3://{bucket}/{prefix}"
    assert petastorm_url(uri) == uri
    seen, sizes, dtypes = _epoch(ncf_dataloader(uri, batch_size=64, workers_count=2))
    assert seen == Counter(rows)
    assert sizes == [64] * (len(rows) // 64) + [len(rows) % 64]
    assert dtypes == {(torch.int64, torch.int64, torch.float32)}
