"""jobs/ncf_data.py: a whole epoch of a Parquet train set through petastorm into a torch DataLoader."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from jobs.ncf_data import ncf_dataloader, petastorm_url
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
