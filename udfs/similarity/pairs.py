"""Top-k over symmetric block pairs.

Every metric here is symmetric (key(i, j) == key(j, i)), so the tile of blocks (A, B) serves the rows
of A (against B's columns) and the rows of B (against A's): each pair of blocks is multiplied once,
half the products of a row-block-by-row-block pass (FAISS, numpy brute force). A task takes one block
pair and keeps, for each row of both blocks, its float32 top-``width`` among the other block's
columns; a second step merges the candidates of a block's pairs and settles them exactly
(``topk_rows`` with ``first``).

Selection without a per-tile top-k: each row keeps a floor, a lower bound of its final w-th best
key in the pair, and a tile contributes only its elements >= the floor (one vectorised compare and
``flatnonzero``: about 0.3 ns an element in a one-off microbenchmark here, against 1.3 ns for
``torch.topk`` along rows and 6 ns along columns). The first floor of a row comes from the tile
itself: the w-th largest of the maxima of GROUP-strided groups of its elements is <= its w-th
largest element. Each tile's hits are merged into the running top-w at once, which raises the
floor to the row's w-th best.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa

from udfs.similarity.device import DeviceArray, arange
from udfs.similarity.matrix import Prepared
from udfs.similarity.tiles import candidate_width, mask_self, tile_keys, topk_batch

GROUP = 16
PAD_LIMIT = 8  # candidates merged per row at once, in multiples of the width


def block_pairs(blocks: int) -> list[tuple[int, int]]:
    """The block pairs ``(a, b)``, ``a <= b``, of ``blocks`` blocks, in task order: off-diagonal pairs
    in row-major order with the diagonal ones (half the work each) spread evenly among them, so that
    contiguous runs of pairs (Spark's ``range`` partitions) carry about the same work, and a run's
    pairs share blocks (and so floors)."""
    off = [(a, b) for a in range(blocks) for b in range(a + 1, blocks)]
    total = len(off) + blocks
    out: list[tuple[int, int]] = []
    taken = 0  # diagonal pairs placed so far
    for position in range(total):
        due = round((position + 1) * blocks / total)  # diagonal pairs due by this position
        if taken < blocks and (len(out) - taken >= len(off) or taken < due):
            out.append((taken, taken))
            taken += 1
        else:
            out.append(off[len(out) - taken])
    return out


class RunningTopk:
    """The float32 top-``width`` of rows ``[start, start + count)`` among the columns offered so far.

    Kept unsorted between merges; ``floor`` is a lower bound of each row's final ``width``-th best
    (raised by the tile bounds and by every merge), so that tiles need only offer keys >= it.
    """

    def __init__(self, start: int, count: int, width: int) -> None:
        self.start = start
        self.width = width
        self.values = np.full((count, width), -np.inf, dtype=np.float32)
        self.index = np.full((count, width), -1, dtype=np.int64)
        self.floor = np.full(count, -np.inf, dtype=np.float32)

    def add(self, rows: np.ndarray, columns: np.ndarray, values: np.ndarray) -> None:
        """Merge candidate (local row, column, key) triples into the top-``width`` of their rows.

        The touched rows' current top-``width`` and their new candidates are laid out side by side in
        a padded matrix (rows as they come, no sort of the keys) and reduced with one partial
        selection per row; a row offered more than PAD_LIMIT x width candidates at once (ties, a
        floor not yet raised) goes through in slices of that many.
        """
        if not rows.size:
            return
        if rows.size > 1 and (rows[1:] < rows[:-1]).any():
            # a radix sort when the rows fit 16 bits (numpy's stable sort of small integers)
            small = rows.astype(np.uint16) if self.floor.size <= 1 << 16 else rows
            order = np.argsort(small, kind="stable")
            rows, columns, values = rows[order], columns[order], values[order]
        counts = np.bincount(rows, minlength=self.floor.size)
        starts = np.cumsum(counts) - counts
        rank = np.arange(rows.size) - starts[rows]
        limit = PAD_LIMIT * self.width
        most = int(counts.max())
        for lo in range(0, most, limit):
            part = (rank >= lo) & (rank < lo + limit)
            self._merge(rows[part], columns[part], values[part], rank[part] - lo, min(limit, most - lo))

    def _merge(
        self, rows: np.ndarray, columns: np.ndarray, values: np.ndarray, slot: np.ndarray, pad: int
    ) -> None:
        width = self.width
        touched, position = np.unique(rows, return_inverse=True)
        padded_values = np.full((touched.size, width + pad), -np.inf, dtype=np.float32)
        padded_index = np.full((touched.size, width + pad), -1, dtype=np.int64)
        padded_values[:, :width] = self.values[touched]
        padded_index[:, :width] = self.index[touched]
        padded_values[position, width + slot] = values
        padded_index[position, width + slot] = columns
        keep = np.argpartition(padded_values, pad, axis=1)[:, pad:]  # the largest ``width``
        self.values[touched] = np.take_along_axis(padded_values, keep, axis=1)
        self.index[touched] = np.take_along_axis(padded_index, keep, axis=1)
        self.floor[touched] = np.maximum(self.floor[touched], self.values[touched].min(axis=1))

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys, column indices), each row best first (ties by column); -inf / -1 pad short rows."""
        order = np.lexsort((self.index, -self.values), axis=1)
        return np.take_along_axis(self.values, order, axis=1), np.take_along_axis(self.index, order, axis=1)


def _kth_of_group_maxima(keys: DeviceArray, width: int, axis: int) -> np.ndarray | None:
    """Per row (axis=1) or column (axis=0): a lower bound of its ``width``-th largest key, or None
    when the tile has fewer than ``width`` groups along ``axis``. ``keys``: numpy, or a torch tensor
    (a GPU tile stays on its GPU)."""
    groups = keys.shape[axis] // GROUP
    if groups < width:
        return None
    if not isinstance(keys, np.ndarray):  # a GPU tile
        import torch

        if axis == 1:
            maxima_t = keys[:, : groups * GROUP].reshape(keys.shape[0], GROUP, groups).amax(dim=1)
        else:
            maxima_t = keys[: groups * GROUP].reshape(GROUP, groups, keys.shape[1]).amax(dim=0).T
        return torch.topk(maxima_t, width, dim=1).values[:, -1].cpu().numpy()
    if axis == 1:  # GROUP passes over contiguous column slices: a strided reduce is 4x slower
        maxima = keys[:, :groups].copy()
        for g in range(1, GROUP):
            np.maximum(maxima, keys[:, g * groups : (g + 1) * groups], out=maxima)
    else:
        maxima = keys[: groups * GROUP].reshape(GROUP, groups, keys.shape[1]).max(axis=0).T
    return np.partition(maxima, groups - width, axis=1)[:, groups - width]


def _hits(
    keys: DeviceArray, floor: np.ndarray, axis: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, column, key) of the tile's finite keys >= the floor of their row (axis 1) or column (0)."""
    if isinstance(keys, np.ndarray):
        flat = np.flatnonzero(keys >= (floor[:, None] if axis == 1 else floor[None, :]))
        r, c = np.divmod(flat, keys.shape[1])
        values = keys[r, c]
    else:  # a GPU tile
        import torch

        floor_t = torch.from_numpy(floor).to(keys.device)
        mask = keys >= (floor_t[:, None] if axis == 1 else floor_t[None, :])
        r_t, c_t = torch.nonzero(mask, as_tuple=True)
        values_t = keys[r_t, c_t]
        r, c, values = r_t.cpu().numpy(), c_t.cpu().numpy(), values_t.cpu().numpy()
    finite = values > -np.inf  # self-pairs are -inf
    return r[finite], c[finite], values[finite]


def _update(
    best: RunningTopk, keys: DeviceArray, axis: int, first: int, other_first: int
) -> None:
    """Offer the tile's keys to ``best``: rows of ``keys`` are ``best``'s rows when ``axis`` is 1
    (candidates are columns), its columns when ``axis`` is 0 (candidates are rows).

    ``first``: ``best``-local index of the tile's first row (axis 1) or column (axis 0);
    ``other_first``: global index of the first candidate.
    """
    span = keys.shape[0] if axis == 1 else keys.shape[1]
    floor = best.floor[first : first + span]
    if np.isneginf(floor).any():
        bound = _kth_of_group_maxima(keys, best.width, axis)
        if bound is not None:
            np.maximum(floor, bound, out=floor)
    r, c, values = _hits(keys, floor, axis)
    if axis == 1:
        best.add(r + first, c + other_first, values)
    else:
        best.add(c + first, r + other_first, values)


def pair_candidates(
    prep: Prepared,
    a: int,
    b: int,
    pair_block: int,
    tile: int,
    width: int,
    floors: np.ndarray | None = None,
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """float32 top-``width`` candidates of the rows of blocks ``a`` and ``b`` (``a <= b``) among the
    other block's rows (self excluded): ``[(block, keys best first, column indices), ...]``, one entry
    per block (one when ``a == b``). Blocks are ``pair_block`` rows, tiles ``tile`` x ``tile``.

    ``floors`` (N,), optional, updated in place: lower bounds of each row's ``width``-th best key
    over ALL columns, e.g. learnt from the pairs this worker did before. A key below its row's floor
    cannot be in the row's global top-``width``, so it is not kept, and a row may then get fewer than
    ``width`` candidates from this pair (padded with -inf / -1); the merge over all pairs still has
    every key >= the global ``width``-th.

    Off the diagonal every tile updates its rows and its columns. In a diagonal block only the tiles
    on and above the diagonal are computed; a tile on it holds both directions of its pairs already,
    so it updates its rows only (its self-pairs masked).
    """
    a0, a1 = a * pair_block, min(prep.n, (a + 1) * pair_block)
    b0, b1 = b * pair_block, min(prep.n, (b + 1) * pair_block)
    best_a = RunningTopk(a0, a1 - a0, width)
    best_b = best_a if a == b else RunningTopk(b0, b1 - b0, width)
    if floors is not None:
        best_a.floor[:] = floors[a0:a1]
        best_b.floor[:] = floors[b0:b1]
    buffer = np.empty(tile * tile, dtype=np.float32) if isinstance(prep.work, np.ndarray) else None
    for r0 in range(a0, a1, tile):
        r1 = min(a1, r0 + tile)
        rows = arange(r0, r1, prep.work)
        for c0 in range(r0 if a == b else b0, b1, tile):
            c1 = min(b1, c0 + tile)
            keys = tile_keys(prep, slice(r0, r1), c0, c1, buffer)
            if c0 == r0:
                mask_self(keys, rows, c0, c1)
            _update(best_a, keys, 1, r0 - a0, c0)
            if c0 != r0:
                _update(best_b, keys, 0, c0 - b0, r0)
    out = [(a, *best_a.result())]
    if a != b:
        out.append((b, *best_b.result()))
    if floors is not None:  # the w-th best over some columns is <= the w-th best over all of them
        np.maximum(floors[a0:a1], best_a.floor, out=floors[a0:a1])
        np.maximum(floors[b0:b1], best_b.floor, out=floors[b0:b1])
    return out


def merge_block(
    prep: Prepared,
    block: int,
    found: Sequence[tuple[np.ndarray, np.ndarray]],
    k: int,
    pair_block: int,
    tile: int,
) -> Iterator[pa.RecordBatch]:
    """The exact top-k edges of a block's rows from its pairs' candidates (``pair_candidates``'
    keys and columns, flat or ``rows x width``; one entry per pair the block is in), in batches of
    ``tile`` rows."""
    blocks = math.ceil(prep.n / pair_block)
    if len(found) != blocks:
        raise RuntimeError(f"block {block}: candidates of {len(found)} pairs, expected {blocks}")
    width = candidate_width(prep.n, k)
    r0, r1 = block * pair_block, min(prep.n, (block + 1) * pair_block)
    keys = np.concatenate([np.reshape(keys, (r1 - r0, width)) for keys, _ in found], axis=1)
    cols = np.concatenate([np.reshape(cols, (r1 - r0, width)) for _, cols in found], axis=1)
    order = np.lexsort((cols, -keys), axis=1)[:, :width]
    keys = np.take_along_axis(keys, order, axis=1)
    cols = np.take_along_axis(cols, order, axis=1).astype(np.int64)
    for s0 in range(r0, r1, tile):
        s1 = min(r1, s0 + tile)
        yield topk_batch(prep, s0, s1, k, tile, (keys[s0 - r0 : s1 - r0], cols[s0 - r0 : s1 - r0]))
