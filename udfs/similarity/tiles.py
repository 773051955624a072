"""Tiles of the similarity matrix: float32 keys of a row block against a column block (BLAS), the
exact top-k of rows (float32 candidates settled in float64) and the all-pairs edges of a row block.

Each tile is numpy on the CPU and a torch tensor on a GPU (``Prepared.device``); torch is imported only
on the GPU path.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql.pandas.types import to_arrow_schema

from schemas import similarity as similarity_schema
from udfs.similarity.device import DeviceArray, arange, array_module, like, nonzero, to_host
from udfs.similarity.matrix import REFINE_ELEMENTS, Prepared

EXTRA_CANDIDATES = 4
CANDIDATE_GROWTH = 4
MAX_EDGES_PER_BATCH = 1 << 20
# l2 all-pairs: a squared distance below this share of |a|^2 + |b|^2 lost too many digits to
# cancellation in float32 (|a|^2 + |b|^2 - 2ab); such pairs are re-scored in float64.
L2_REFINE_SHARE = 1e-2
# exp_l1 on the CPU: rows of a tile whose L1 distances are summed at a time (the working set of one
# dimension's step, ``L1_ROWS x columns`` float32, stays in cache).
L1_ROWS = 16

# Arrow schemas of the Spark schemas declared once, in schemas/similarity.py.
TOPK_ARROW_SCHEMA = to_arrow_schema(similarity_schema.TOPK_EDGE_SCHEMA)
ALL_PAIRS_ARROW_SCHEMA = to_arrow_schema(similarity_schema.ALL_PAIRS_EDGE_SCHEMA)


def _product(query: DeviceArray, cols: DeviceArray, out: np.ndarray | None = None) -> DeviceArray:
    """``query @ cols.T`` in float32: numpy's OpenBLAS on CPU (about 1.5x torch's MKL sgemm on the
    AMD EPYC cores measured here, and the BLAS FAISS uses), torch (cuBLAS) on a GPU.

    ``out``: a flat float32 buffer of at least ``len(query) x len(cols)`` reused for the result (CPU):
    a fresh 16 MB result per tile is allocated and faulted in every time; one buffer per task is not."""
    if isinstance(query, np.ndarray) and isinstance(cols, np.ndarray) and out is not None:
        result = out[: query.shape[0] * cols.shape[0]].reshape(query.shape[0], cols.shape[0])
        np.matmul(query, cols.T, out=result)
        return result
    return query @ cols.T


def l1_distances(query: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """float32 L1 distances of each row of ``query`` to each row of ``cols`` (numpy: L1 has no BLAS
    form), summed one dimension at a time over ``L1_ROWS`` rows, in place in two buffers."""
    out = np.zeros((query.shape[0], cols.shape[0]), dtype=np.float32)
    cols_t = np.ascontiguousarray(cols.T)  # (d, columns): one dimension's values are contiguous
    step = np.empty((min(L1_ROWS, query.shape[0]), cols.shape[0]), dtype=np.float32)
    for r0 in range(0, query.shape[0], L1_ROWS):
        acc = out[r0 : r0 + L1_ROWS]
        diff = step[: acc.shape[0]]
        for dim in range(query.shape[1]):
            np.subtract(query[r0 : r0 + L1_ROWS, dim, None], cols_t[dim][None, :], out=diff)
            np.abs(diff, out=diff)
            acc += diff
    return out


def tile_keys(
    prep: Prepared, rows: DeviceArray | slice, c0: int, c1: int, out: np.ndarray | None = None
) -> DeviceArray:
    """float32 keys (higher = closer) of ``rows`` (an index array on the device, or a slice of
    consecutive rows: no copy) against columns ``[c0, c1)``; ``out``: see ``_product``."""
    query = prep.work[rows]
    row_sq = prep.sq_norms[rows] if prep.sq_norms is not None else None
    cols = prep.work[c0:c1]
    if prep.metric in (similarity_schema.COSINE, similarity_schema.DOT):
        return _product(query, cols, out)
    if prep.metric == similarity_schema.L2:
        assert prep.sq_norms is not None and row_sq is not None
        # key = 2ab - |a|^2 - |b|^2 = -|a - b|^2
        keys = _product(query, cols, out)
        keys *= 2.0
        keys -= row_sq[:, None]
        keys -= prep.sq_norms[c0:c1][None, :]
        return keys
    if isinstance(query, np.ndarray) and isinstance(cols, np.ndarray):
        keys = l1_distances(query, cols)
        np.negative(keys, out=keys)
        return keys
    import torch

    return -torch.cdist(query, cols, p=1.0)


def mask_self(keys: DeviceArray, rows: DeviceArray, c0: int, c1: int) -> None:
    """Set the key of each row against itself to -inf (self-pairs are never neighbours)."""
    local = rows - c0
    is_inside = (local >= 0) & (local < c1 - c0)
    if isinstance(keys, np.ndarray):
        inside = np.flatnonzero(is_inside)
        if inside.size:
            keys[inside, local[inside]] = -math.inf
        return
    import torch

    inside_t = torch.nonzero(is_inside).squeeze(1)
    if inside_t.numel():
        keys[inside_t, local[inside_t]] = -math.inf


def _partial_topk(values: DeviceArray, k: int) -> tuple[DeviceArray, DeviceArray]:
    """The ``k`` largest values of each row and their positions, in no particular order."""
    if isinstance(values, np.ndarray):
        index = np.argpartition(values, values.shape[1] - k, axis=1)[:, values.shape[1] - k :]
        return np.take_along_axis(values, index, axis=1), index
    import torch

    top = torch.topk(values, k, dim=1, sorted=False)
    return top.values, top.indices


def _take(values: DeviceArray, index: DeviceArray) -> DeviceArray:
    """``values[i, index[i, j]]`` for every row ``i`` (numpy's ``take_along_axis``, torch's ``gather``)."""
    if isinstance(values, np.ndarray):
        return np.take_along_axis(values, index, axis=1)
    import torch

    return torch.gather(values, 1, index)


def merge_topk(
    values_a: DeviceArray, index_a: DeviceArray, values_b: DeviceArray, index_b: DeviceArray, k: int
) -> tuple[DeviceArray, DeviceArray]:
    """Merge two partial top-k lists per row (values with their column indices); keeps ``k`` per row."""
    values: DeviceArray
    index: DeviceArray
    if isinstance(values_a, np.ndarray):
        values = np.concatenate([values_a, values_b], axis=1)
        index = np.concatenate([index_a, index_b], axis=1)
    else:
        import torch

        values, index = torch.cat([values_a, values_b], dim=1), torch.cat([index_a, index_b], dim=1)
    if values.shape[1] <= k:
        return values, index
    values, picked = _partial_topk(values, k)
    return values, _take(index, picked)


def topk_candidates(
    prep: Prepared, rows: DeviceArray, k: int, block_size: int
) -> tuple[DeviceArray, DeviceArray]:
    """float32 top-``k`` keys and column indices of ``rows`` over all columns, best first.

    One ``len(rows) x block_size`` tile at a time, each reduced to its top ``k`` and merged.
    """
    best_values: DeviceArray | None = None
    best_index: DeviceArray | None = None
    for c0 in range(0, prep.n, block_size):
        c1 = min(prep.n, c0 + block_size)
        keys = tile_keys(prep, rows, c0, c1)
        mask_self(keys, rows, c0, c1)
        values, index = _partial_topk(keys, min(k, c1 - c0))
        index = index + c0
        if best_values is None or best_index is None:
            best_values, best_index = values, index
        else:
            best_values, best_index = merge_topk(best_values, best_index, values, index, k)
    assert best_values is not None and best_index is not None
    order: DeviceArray
    if isinstance(best_values, np.ndarray):
        order = np.argsort(-best_values, axis=1, kind="stable")
        best_values = np.take_along_axis(best_values, order, axis=1)
    else:
        import torch

        best_values, order = torch.sort(best_values, dim=1, descending=True)
    return best_values, _take(best_index, order)


def exact_keys(prep: Prepared, rows: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """float64 keys of each row against its candidate columns, one pair at a time."""
    out = np.empty(cand.shape, dtype=np.float64)
    dim = prep.dim
    cand_step = max(1, min(cand.shape[1], REFINE_ELEMENTS // dim))
    row_step = max(1, REFINE_ELEMENTS // (dim * cand_step))
    for r0 in range(0, rows.size, row_step):
        query = prep.raw[rows[r0 : r0 + row_step]].astype(np.float64)[:, None, :]
        for c0 in range(0, cand.shape[1], cand_step):
            sel = cand[r0 : r0 + row_step, c0 : c0 + cand_step]
            cols = prep.raw[sel].astype(np.float64)
            if prep.metric in (similarity_schema.COSINE, similarity_schema.DOT):
                # a batch of matrix-vector products (BLAS): no rows x candidates x d product in memory
                key = np.matmul(cols, query.transpose(0, 2, 1))[..., 0]
                if prep.metric == similarity_schema.COSINE:
                    key /= prep.norms[rows[r0 : r0 + row_step]][:, None] * prep.norms[sel]
            elif prep.metric == similarity_schema.L2:
                diff = query - cols
                key = -(diff * diff).sum(axis=-1)
            else:
                key = -np.abs(query - cols).sum(axis=-1)
            out[r0 : r0 + row_step, c0 : c0 + cand_step] = key
    return out


def scores_from_keys(metric: str, keys: np.ndarray) -> np.ndarray:
    """The score each metric reports for its float64 keys."""
    if metric in (similarity_schema.COSINE, similarity_schema.DOT):
        return keys
    distance = np.sqrt(np.maximum(-keys, 0.0))
    return distance if metric == similarity_schema.L2 else 1.0 - np.exp(-distance)


def topk_rows(
    prep: Prepared,
    r0: int,
    r1: int,
    k: int,
    block_size: int,
    first: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` neighbours of rows ``[r0, r1)``: (column indices, float64 scores), best first.

    ``first``: the rows' float32 top-``candidate_width`` (keys best first, column indices), when the
    caller has them already (the symmetric pair kernel); otherwise they are computed here.
    ``k`` larger than the number of other products gives every other product.
    """
    k_eff = min(k, prep.n - 1)
    rows_all = np.arange(r0, r1)
    out_index = np.empty((rows_all.size, k_eff), dtype=np.int64)
    out_keys = np.empty((rows_all.size, k_eff), dtype=np.float64)
    pending = np.arange(rows_all.size)  # positions in rows_all still to settle
    width = candidate_width(prep.n, k)
    if first is None:
        values32, cand = _candidates_np(prep, rows_all, width, block_size)
    else:
        values32, cand = first
        if values32.shape != (rows_all.size, width) or (cand < 0).any():
            raise RuntimeError(f"rows {r0}..{r1}: candidates {values32.shape}, expected {width} per row")
    while pending.size:
        rows = rows_all[pending]
        keys = exact_keys(prep, rows, cand)
        order = np.lexsort((cand, -keys), axis=1)[:, :k_eff]
        if width >= prep.n - 1:
            settled = np.ones(rows.size, dtype=bool)
        else:  # a row whose last candidate is within the float32 error of its k-th may have lost one
            settled = values32[:, width - 1] < values32[:, k_eff - 1] - prep.tol[rows]
        done = pending[settled]
        out_index[done] = np.take_along_axis(cand, order, axis=1)[settled]
        out_keys[done] = np.take_along_axis(keys, order, axis=1)[settled]
        pending = pending[~settled]
        width = min(prep.n - 1, width * CANDIDATE_GROWTH)
        if pending.size:
            values32, cand = _candidates_np(prep, rows_all[pending], width, block_size)
    return out_index, scores_from_keys(prep.metric, out_keys)


def candidate_width(n: int, k: int) -> int:
    """float32 candidates kept per row before the float64 re-scoring: ``k + EXTRA_CANDIDATES``."""
    return min(n - 1, min(k, n - 1) + EXTRA_CANDIDATES)


def _candidates_np(
    prep: Prepared, rows: np.ndarray, width: int, block_size: int
) -> tuple[np.ndarray, np.ndarray]:
    values32, cand = topk_candidates(prep, like(rows, prep.work), width, block_size)
    return to_host(values32), to_host(cand)


def topk_batch(
    prep: Prepared,
    r0: int,
    r1: int,
    k: int,
    block_size: int,
    first: tuple[np.ndarray, np.ndarray] | None = None,
) -> pa.RecordBatch:
    """Top-k edges of rows ``[r0, r1)`` as an Arrow batch (src, dst, score, rank)."""
    index, scores = topk_rows(prep, r0, r1, k, block_size, first)
    k_eff = index.shape[1]
    src = np.repeat(np.arange(r0, r1), k_eff)
    rank = np.tile(np.arange(1, k_eff + 1, dtype=np.int32), r1 - r0)
    return pa.RecordBatch.from_arrays(
        [
            pc.take(prep.skus, pa.array(src)),
            pc.take(prep.skus, pa.array(index.ravel())),
            pa.array(scores.ravel(), type=pa.float64()),
            pa.array(rank, type=pa.int32()),
        ],
        schema=TOPK_ARROW_SCHEMA,
    )


def _pair_scores(
    prep: Prepared, keys: DeviceArray, rows: DeviceArray, c0: int, c1: int
) -> DeviceArray:
    """float32 scores of a tile from its keys (l2: near pairs re-scored in float64)."""
    if prep.metric in (similarity_schema.COSINE, similarity_schema.DOT):
        return keys
    xp = array_module(keys)
    squared = np.maximum(-keys, np.float32(0.0)) if xp is np else xp.clamp(-keys, min=0.0)
    if prep.metric == similarity_schema.L2:
        assert prep.sq_norms is not None
        scale = prep.sq_norms[rows][:, None] + prep.sq_norms[c0:c1][None, :]
        near_r, near_c = nonzero(squared < L2_REFINE_SHARE * scale)
        if near_r.shape[0]:
            exact = exact_keys(prep, to_host(rows[near_r]), to_host(near_c + c0)[:, None])[:, 0]
            squared[near_r, near_c] = like((-exact).astype(np.float32), squared)
        return xp.sqrt(squared)
    return 1.0 - xp.exp(-xp.sqrt(squared))


def all_pairs_batches(
    prep: Prepared,
    r0: int,
    r1: int,
    block_size: int,
    *,
    min_score: float | None = None,
    max_distance: float | None = None,
    directed: bool = False,
) -> Iterator[pa.RecordBatch]:
    """Edges of rows ``[r0, r1)`` with every later row (``i < j``), filtered while each tile is computed.

    Yields Arrow batches of at most MAX_EDGES_PER_BATCH edges (src, dst, score); ``directed`` yields
    each pair in both directions. Nothing larger than one tile and its edges is ever held.
    """
    rows = arange(r0, r1, prep.work)
    for c0 in range(r0, prep.n, block_size):
        c1 = min(prep.n, c0 + block_size)
        keys = tile_keys(prep, rows, c0, c1)
        scores = _pair_scores(prep, keys, rows, c0, c1)
        keep = arange(c0, c1, prep.work)[None, :] > rows[:, None]
        if min_score is not None:
            keep &= scores >= min_score
        if max_distance is not None:
            keep &= scores <= max_distance
        pair_r, pair_c = nonzero(keep)
        if not pair_r.shape[0]:
            continue
        # Each direction in (src, dst) order: the mirrored pairs come column by column (the transposed
        # mask), so every batch is sorted by its keys (what the gate's counting proves uniqueness on).
        directions = [(pair_r, pair_c)]
        if directed:
            mirror_c, mirror_r = nonzero(keep.T)
            directions.append((mirror_r, mirror_c))
        for rows_at, cols_at in directions:
            kept = to_host(scores[rows_at, cols_at]).astype(np.float64)
            src, dst = to_host(rows_at + r0), to_host(cols_at + c0)
            if rows_at is not pair_r:
                src, dst = dst, src
            for start in range(0, kept.size, MAX_EDGES_PER_BATCH):
                part = slice(start, start + MAX_EDGES_PER_BATCH)
                yield pa.RecordBatch.from_arrays(
                    [
                        pc.take(prep.skus, pa.array(src[part])),
                        pc.take(prep.skus, pa.array(dst[part])),
                        pa.array(kept[part], type=pa.float64()),
                    ],
                    schema=ALL_PAIRS_ARROW_SCHEMA,
                )
