"""Repeated strings among billions, found on disk in bounded memory: hash, spill by partition, count each.

Every string gets a 128-bit hash (two independent multiplicative hashes over its UTF-8 bytes read as
little-endian 8-byte words, zero-padded, each finished by splitmix64's mixer, computed with numpy over an
Arrow string array's buffers: no Python object per string). The first hash's top :data:`PARTITION_BITS` bits
choose a partition, the second hash (64 bits) is what is stored: 8 bytes per string, 72 bits that tell
strings apart. A :class:`RunWriter` buffers ``(partition, key)`` pairs up to a fixed count and writes each
full buffer as one *run*: its keys grouped by partition (``<name>.u64``) and the partition offsets
(``<name>.idx``). :func:`repeated_keys` then reads one partition of every run at a time and finds its
repeated keys in one compiled pass through a hash table (numba); a partition larger than the memory budget is
split again by the next bits of its keys (on disk, in chunks of the budget), so memory is bounded by the
budget whatever the count. Equal strings always have equal keys, so a key seen once
is a string seen once; a key seen more than once is a *suspect*: the caller rereads the strings to confirm
(two different strings can share 72 bits: about n^2 / 2^73 such pairs among n strings, 1.6e-4 at 1.25
billion).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numba
import numpy as np
import pyarrow as pa

PARTITION_BITS = 8
PARTITIONS = 1 << PARTITION_BITS
SUB_BITS = 4  # an oversized partition is split 16 ways by the next bits of its keys
DEFAULT_BUDGET_BYTES = 256 * 2**20
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
SEEDS = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F)
_multipliers: list[np.ndarray] = [np.zeros(0, np.uint64), np.zeros(0, np.uint64)]


def position_multipliers(which: int, length: int) -> np.ndarray:
    """Fixed odd 64-bit multipliers for word positions 0..length-1 (grown on demand, deterministic)."""
    table = _multipliers[which]
    if table.size < length:
        size = max(length, 2 * table.size, 256)
        rng = np.random.default_rng(SEEDS[which])
        table = rng.integers(0, 2**63, size=size, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        _multipliers[which] = table
    return table[:length]


def _mix(z):
    """splitmix64's finaliser (every input bit moves every output bit), of a uint64 array with numpy or
    of one uint64 in compiled code (:data:`mix_one`)."""
    z = z ^ (z >> np.uint64(30))
    z = z * np.uint64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> np.uint64(27))
    z = z * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


mix_one = numba.njit(cache=True, nogil=True, inline="always")(_mix)


def string_hashes(strings: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Two independent uint64 hashes of each non-null, non-empty string of ``strings``.

    Equal strings get equal hashes in every process and on every machine (no salt, no Python ``hash``).
    """
    array = strings.cast(pa.large_string()) if strings.type != pa.large_string() else strings
    count = len(array)
    if count == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
    _, offsets_buffer, data_buffer = array.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64)[array.offset : array.offset + count + 1]
    lengths = np.diff(offsets)
    if (lengths == 0).any():
        raise ValueError("string_hashes: empty strings have no hash (filter them out first)")
    start = int(offsets[0])
    data = np.frombuffer(data_buffer, dtype=np.uint8)[start : int(offsets[-1])]
    starts = offsets[:-1] - start
    first, second = np.empty(count, np.uint64), np.empty(count, np.uint64)
    # Strings of one length at a time: their bytes gathered into rows of 8-byte words (all of one length,
    # as ids built from fixed-width keys are, the bytes already are those rows: no gather).
    low, high = int(lengths.min()), int(lengths.max())
    for length in [low] if low == high else np.unique(lengths).tolist():
        rows = np.arange(count) if low == high else np.flatnonzero(lengths == length)
        words = -(-length // 8)
        padded = np.zeros((rows.size, words * 8), dtype=np.uint8)
        if low == high:
            padded[:, :length] = data.reshape(count, length)
        else:
            padded[:, :length] = data[starts[rows, None] + np.arange(length)]
        values = padded.view(np.uint64)
        with np.errstate(over="ignore"):
            for which, out in ((0, first), (1, second)):
                sums = (values * position_multipliers(which, words)).sum(axis=1, dtype=np.uint64)
                out[rows] = _mix(sums + np.uint64(length) * np.uint64(SEEDS[which]))
    return first, second


@numba.njit(cache=True, nogil=True)
def _repeats(keys):
    """Each key seen more than once, once for every time after the first (in no order): one pass through
    an open-addressing table of at least 1.5 slots a key (the keys are hashes: their low bits pick the
    slot; 0 marks an empty slot, so zeros are counted apart)."""
    slots = 1
    while slots < keys.size + keys.size // 2:
        slots *= 2
    table = np.zeros(slots, np.uint64)
    mask = np.uint64(slots - 1)
    extra = np.empty(keys.size, np.uint64)  # untouched pages cost nothing: most keys are seen once
    found = 0
    zeros = 0
    for key in keys:
        if key == 0:
            zeros += 1
            if zeros > 1:
                extra[found] = key
                found += 1
            continue
        slot = key & mask
        while True:
            held = table[slot]
            if held == 0:
                table[slot] = key
                break
            if held == key:
                extra[found] = key
                found += 1
                break
            slot = (slot + np.uint64(1)) & mask
    return extra[:found]


def partition_of(first: np.ndarray) -> np.ndarray:
    return (first >> np.uint64(64 - PARTITION_BITS)).astype(np.int64)


@dataclass(frozen=True)
class Run:
    """One spilled buffer: keys grouped by partition and where each partition starts."""

    keys_path: str
    offsets_path: str

    def offsets(self) -> np.ndarray:
        return np.fromfile(self.offsets_path, dtype=np.int64)

    def read(self, begin: int, end: int) -> np.ndarray:
        return np.fromfile(self.keys_path, dtype=np.uint64, count=end - begin, offset=begin * 8)


class RunWriter:
    """Buffers ``(partition, key)`` pairs and spills each full buffer as a :class:`Run` under ``folder``.

    Buffers ``budget_bytes / 40`` pairs: with the copies a spill makes (concatenation, order, sorted
    keys) that is about ``budget_bytes`` at the peak.
    """

    def __init__(self, folder: str, name: str, budget_bytes: int, partitions: int = PARTITIONS) -> None:
        self.folder = folder
        self.name = name
        self.partitions = partitions
        self.capacity = max(1, budget_bytes // 40)
        self.runs: list[Run] = []
        self.count = 0
        self._parts: list[np.ndarray] = []
        self._keys: list[np.ndarray] = []
        self._buffered = 0

    def add(self, partitions: np.ndarray, keys: np.ndarray) -> None:
        """Add pairs; spills whenever the buffer is full."""
        begin = 0
        while begin < keys.size:
            take = min(keys.size - begin, self.capacity - self._buffered)
            self._parts.append(partitions[begin : begin + take])
            self._keys.append(keys[begin : begin + take])
            self._buffered += take
            self.count += take
            begin += take
            if self._buffered >= self.capacity:
                self.flush()

    def flush(self) -> None:
        if not self._buffered:
            return
        parts = np.concatenate(self._parts)
        keys = np.concatenate(self._keys)
        # partitions fit a byte: numpy's stable sort of uint8 is a radix sort, linear in the pairs
        order = np.argsort(parts.astype(np.uint8) if self.partitions <= 256 else parts, kind="stable")
        offsets = np.zeros(self.partitions + 1, dtype=np.int64)
        np.cumsum(np.bincount(parts, minlength=self.partitions), out=offsets[1:])
        base = os.path.join(self.folder, f"{self.name}-r{len(self.runs):05d}")
        run = Run(f"{base}.u64", f"{base}.idx")
        keys[order].tofile(run.keys_path)
        offsets.tofile(run.offsets_path)
        self.runs.append(run)
        self._parts, self._keys, self._buffered = [], [], 0


def _partition_slices(runs: Sequence[Run], partition: int) -> list[tuple[Run, int, int]]:
    slices = []
    for run in runs:
        offsets = run.offsets()
        begin, end = int(offsets[partition]), int(offsets[partition + 1])
        if end > begin:
            slices.append((run, begin, end))
    return slices


def repeated_keys(
    runs: Sequence[Run],
    partition: int,
    scratch: str,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
    *,
    level: int = 0,
) -> Iterator[tuple[int, int]]:
    """``(key, times seen)`` for every key seen more than once in ``partition`` of ``runs``, in key order.

    Reads at most ``budget_bytes`` of keys at once: a bigger partition is split by the next
    :data:`SUB_BITS` bits of its keys into runs under ``scratch`` (removed when done) and each part is
    checked in turn; once every bit is used, the keys of a part are all equal.
    """
    slices = _partition_slices(runs, partition)
    total = sum(end - begin for _, begin, end in slices)
    if total == 0:
        return
    used_bits = level * SUB_BITS
    if total * 8 <= budget_bytes or used_bits >= 64:
        if used_bits >= 64:  # every bit is equal: one key, seen ``total`` times
            key = int(slices[0][0].read(slices[0][1], slices[0][1] + 1)[0])
            if total > 1:
                yield key, total
            return
        keys = np.concatenate([run.read(begin, end) for run, begin, end in slices])
        values, counts = np.unique(_repeats(keys), return_counts=True)  # few: sorted here
        yield from zip(values.tolist(), (counts + 1).tolist(), strict=True)
        return
    shift = np.uint64(64 - used_bits - SUB_BITS)
    folder = os.path.join(scratch, f"split-{partition}-{level}-{os.getpid()}")
    os.makedirs(folder, exist_ok=True)
    writer = RunWriter(folder, "sub", budget_bytes, partitions=1 << SUB_BITS)
    chunk = max(1, budget_bytes // 16)
    for run, begin, end in slices:
        for low in range(begin, end, chunk):
            keys = run.read(low, min(end, low + chunk))
            writer.add(((keys >> shift) & np.uint64((1 << SUB_BITS) - 1)).astype(np.int64), keys)
    writer.flush()
    try:
        for sub in range(1 << SUB_BITS):
            yield from repeated_keys(writer.runs, sub, folder, budget_bytes, level=level + 1)
    finally:
        for run in writer.runs:
            os.remove(run.keys_path)
            os.remove(run.offsets_path)
        os.rmdir(folder)
