"""Read the NCF train and test sets into PyTorch through petastorm.

The training code does::

    from readers.ncf_torch import ncf_dataloader
    loader = ncf_dataloader("W/ncf/train/dt=2024-03-31", batch_size=1024, shuffle=True, seed=7)
    for epoch in range(epochs):
        for users, items, labels in loader:   # int64, int64, float32 tensors of up to batch_size rows
            ...

Each pass over the loader opens a fresh petastorm ``make_batch_reader`` over the Parquet folder (one
epoch), re-batches its row groups to ``batch_size`` rows and closes the reader at the end, so the
loader can be iterated once per epoch like any ``torch.utils.data.DataLoader``. petastorm needs URLs
(``file://`` or ``s3://``); a local path is turned into a ``file://`` URL here. ``s3://`` is read through
pyarrow's own S3 filesystem (:func:`jobs.common.storage.filesystem`: the usual AWS credentials, region
and endpoint variables) handed to petastorm's ``Reader``: ``make_batch_reader`` resolves ``s3://`` paths
through fsspec's s3fs, whose aiobotocore pins a botocore older than the stack's boto3.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from fsspec.implementations.arrow import ArrowFSWrapper
from petastorm import make_batch_reader
from petastorm.arrow_reader_worker import ArrowReaderWorker
from petastorm.reader import Reader
from petastorm.workers_pool.thread_pool import ThreadPool
from pyarrow.filesystem import DaskFileSystem
from torch.utils.data import DataLoader, IterableDataset

from jobs.common import storage
from schemas import interactions

FIELDS = (interactions.USER_IDX, interactions.ITEM_IDX, interactions.LABEL)


class _LegacyFileSystem(DaskFileSystem):
    """A pyarrow filesystem (here S3) as the legacy ``pyarrow.filesystem`` API petastorm's ParquetDataset
    takes, through fsspec's Arrow wrapper (whose walk yields ``os.walk``'s shape)."""

    def __init__(self, filesystem: Any) -> None:
        with warnings.catch_warnings():  # the legacy API is deprecated; petastorm 0.12 still needs it
            warnings.filterwarnings("ignore", "The pyarrow.filesystem.DaskFileSystem", FutureWarning)
            super().__init__(ArrowFSWrapper(filesystem))

    def isdir(self, path: str) -> bool:
        return self.fs.isdir(path)

    def isfile(self, path: str) -> bool:
        return self.fs.isfile(path)

    def walk(self, path: str) -> Iterator[tuple[str, list[str], list[str]]]:
        return self.fs.walk(path)


def petastorm_url(uri: str) -> str:
    """The URL petastorm wants: ``file://`` for local paths, ``s3://`` unchanged; a folder published on
    S3 through its current version (``storage.read_path``)."""
    return storage.read_path(uri)


class NcfParquetDataset(IterableDataset):
    """(user, item, label) mini-batches from a train or test Parquet folder, one epoch per iteration.

    Args:
        uri: the folder (``.../train/dt=D``), a local path or a ``file://``/``s3://`` URL.
        batch_size: rows per batch (the last batch may be smaller).
        shuffle: shuffle row groups and the rows of each re-batching buffer.
        seed: makes shuffling repeatable; each epoch draws a new order from it.
        workers_count: petastorm reader threads.
    """

    def __init__(
        self,
        uri: str,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int | None = None,
        workers_count: int = 2,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.url = petastorm_url(uri)
        self.remote = storage.filesystem(self.url) if storage.is_remote(uri) else None  # the version
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.workers_count = workers_count
        self._rng = np.random.default_rng(seed)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        epoch_seed = int(self._rng.integers(2**31 - 1))
        rng = np.random.default_rng(epoch_seed)
        buffers: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        buffered = 0
        with self._reader(epoch_seed if self.shuffle else None) as reader:
            for batch in reader:
                part = (
                    np.asarray(getattr(batch, interactions.USER_IDX), dtype=np.int64),
                    np.asarray(getattr(batch, interactions.ITEM_IDX), dtype=np.int64),
                    np.asarray(getattr(batch, interactions.LABEL), dtype=np.float32),
                )
                buffers.append(part)
                buffered += len(part[0])
                if buffered >= self.batch_size:
                    yield from self._drain(buffers, rng, keep_tail=True)
                    buffered = sum(len(b[0]) for b in buffers)
        yield from self._drain(buffers, rng, keep_tail=False)

    def _reader(self, seed: int | None) -> Reader:
        """One epoch's petastorm reader (what ``make_batch_reader`` builds, with pyarrow's S3)."""
        if self.remote is None:
            return make_batch_reader(
                self.url,
                schema_fields=list(FIELDS),
                num_epochs=1,
                shuffle_row_groups=self.shuffle,
                seed=seed,
                workers_count=self.workers_count,
                reader_pool_type="thread",
            )
        filesystem, path = self.remote
        return Reader(
            _LegacyFileSystem(filesystem),
            path,
            schema_fields=list(FIELDS),
            num_epochs=1,
            shuffle_row_groups=self.shuffle,
            seed=seed,
            reader_pool=ThreadPool(self.workers_count),
            worker_class=ArrowReaderWorker,
            is_batched_reader=True,
        )

    def _drain(
        self,
        buffers: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
        rng: np.random.Generator,
        *,
        keep_tail: bool,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        if not buffers:
            return
        users, items, labels = (np.concatenate(cols) for cols in zip(*buffers, strict=True))
        buffers.clear()
        if self.shuffle:
            order = rng.permutation(len(users))
            users, items, labels = users[order], items[order], labels[order]
        full = (len(users) // self.batch_size) * self.batch_size if keep_tail else len(users)
        for start in range(0, full, self.batch_size):
            stop = min(start + self.batch_size, full)
            yield (
                torch.from_numpy(users[start:stop]),
                torch.from_numpy(items[start:stop]),
                torch.from_numpy(labels[start:stop]),
            )
        if full < len(users):
            buffers.append((users[full:], items[full:], labels[full:]))


def ncf_dataloader(
    uri: str,
    batch_size: int = 1024,
    *,
    shuffle: bool = False,
    seed: int | None = None,
    workers_count: int = 2,
) -> DataLoader:
    """A torch ``DataLoader`` of ``(user_idx, item_idx, label)`` tensor batches over a Parquet folder.

    Batching is done by :class:`NcfParquetDataset` (``batch_size=None`` here), so each item the loader
    yields is already a batch; iterate it once per epoch.
    """
    dataset = NcfParquetDataset(uri, batch_size, shuffle=shuffle, seed=seed, workers_count=workers_count)
    return DataLoader(dataset, batch_size=None)
