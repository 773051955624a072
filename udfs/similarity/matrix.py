"""The prepared matrix: the valid embeddings in sku order, on the task's device, read once per worker."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs.common import storage
from schemas import embeddings as embeddings_schema
from schemas import similarity as similarity_schema
from udfs.similarity.checks import as_numpy
from udfs.similarity.device import CPU, DeviceArray, is_cpu, to_device

EPS32 = 2.0**-24  # unit roundoff of float32
# Float32 selection tolerance: TOL_ULPS * sqrt(d) * EPS32 * (the row's scale), doubled (both sides).
TOL_ULPS = 16.0
REFINE_ELEMENTS = 1 << 22  # float64 elements per re-scoring chunk (32 MB)


@dataclass
class Prepared:
    """The valid embeddings in sku order, ready for tiles on one device."""

    metric: str
    skus: pa.Array  # (N,) string, ascending
    raw: np.ndarray  # (N, d) float32, as read
    norms: np.ndarray  # (N,) float64 L2 norms
    tol: np.ndarray  # (N,) float64 float32-selection tolerance per row, in key units
    work: DeviceArray  # (N, d) float32 on device (L2-normalised for cosine)
    sq_norms: DeviceArray | None  # (N,) float32 on device (l2 only)
    device: str  # cpu, cuda or cuda:<index>: numpy arrays on cpu, torch tensors on a GPU

    @property
    def n(self) -> int:
        return int(self.raw.shape[0])

    @property
    def dim(self) -> int:
        return int(self.raw.shape[1])


def _row_norms(raw: np.ndarray, order: int) -> np.ndarray:
    out = np.empty(raw.shape[0], dtype=np.float64)
    step = max(1, REFINE_ELEMENTS // max(1, raw.shape[1]))
    for start in range(0, raw.shape[0], step):
        chunk = raw[start : start + step].astype(np.float64)
        out[start : start + step] = (
            np.sqrt(np.einsum("ij,ij->i", chunk, chunk)) if order == 2 else np.abs(chunk).sum(axis=1)
        )
    return out


def prepare(skus: pa.Array, raw: np.ndarray, metric: str, device: str = CPU) -> Prepared:
    """Prepare the matrix for ``metric``; ``skus`` must be ascending and unique, ``raw`` (N, d) float32."""
    if metric not in similarity_schema.METRICS:
        raise ValueError(f"unknown metric {metric!r}")
    # numpy reads the matrix where Arrow left it (a copy of N x d floats costs about a second at
    # 50,000 x 2048); torch wants writable memory.
    raw = np.require(raw, dtype=np.float32, requirements=["C"] if is_cpu(device) else ["C", "W"])
    norms = _row_norms(raw, 2)
    base = math.sqrt(max(1, raw.shape[1])) * EPS32 * TOL_ULPS * 2.0
    sq_norms = None
    if metric == similarity_schema.COSINE:
        tol = np.full(raw.shape[0], base)
        work = raw / norms[:, None].astype(np.float32)
    elif metric == similarity_schema.DOT:
        tol = base * norms * norms.max()
        work = raw
    elif metric == similarity_schema.L2:
        tol = base * (norms + norms.max()) ** 2
        work = raw
        sq_norms = to_device((norms**2).astype(np.float32), device)
    else:
        l1 = _row_norms(raw, 1)
        tol = base * (l1 + l1.max())
        work = raw
    return Prepared(metric, skus, raw, norms, tol, to_device(work, device), sq_norms, device)


_CACHE: dict[tuple[str, ...], Prepared] = {}


def read_matrix(input_uri: str, valid_uri: str) -> tuple[pa.Array, np.ndarray]:
    """The valid embeddings, sorted by sku: (skus, float32 matrix).

    ``input_uri`` is the embed job's Parquet; ``valid_uri`` the check step's valid rows (a ``sku``
    column). Valid skus are unique among the "ok" rows, so "ok" and a valid sku picks one row each.
    """
    valid = storage.read_parquet(valid_uri, [embeddings_schema.SKU]).column(embeddings_schema.SKU)
    table = storage.read_parquet(
        input_uri, [embeddings_schema.SKU, embeddings_schema.STATUS, embeddings_schema.EMBEDDING]
    )
    keep = pc.and_(
        pc.fill_null(pc.equal(table.column(embeddings_schema.STATUS), embeddings_schema.STATUS_OK), False),
        pc.is_in(table.column(embeddings_schema.SKU), value_set=valid.combine_chunks()),
    )
    rows = as_numpy(pc.indices_nonzero(keep))
    if rows.size != len(valid):
        raise RuntimeError(f"{input_uri} changed under the job: {rows.size} rows for {len(valid)} skus")
    if rows.size == 0:
        raise RuntimeError(f"embedding matrix of {input_uri} is empty")
    skus = table.column(embeddings_schema.SKU).take(pa.array(rows)).combine_chunks().cast(pa.string())
    order = as_numpy(pc.sort_indices(skus))
    embeddings = table.column(embeddings_schema.EMBEDDING)
    lengths = as_numpy(pc.list_value_length(embeddings))[rows]  # a null list: NaN
    dim = int(lengths[0]) if lengths[0] == lengths[0] else 0
    if (lengths != dim).any():
        raise RuntimeError(f"embedding matrix of {input_uri} is ragged")
    return skus.take(pa.array(order)), gather_rows(embeddings, rows[order], dim)


def gather_rows(embeddings: pa.ChunkedArray, rows: np.ndarray, dim: int) -> np.ndarray:
    """The vectors of table rows ``rows`` (each of length ``dim``), in that order, as one float32 matrix.

    A column chunk whose lists all have length ``dim`` is its values read as a ``rows x dim`` matrix in
    place (no copy), and the rows are copied from it once; any other chunk (null lists, other lengths)
    gathers its rows through Arrow's ``take``. Copying the whole list column first (``take``), then
    flattening it, cost about a second more per worker at 50,000 x 2048.
    """
    out = np.empty((rows.size, dim), dtype=np.float32)
    bounds = np.cumsum([0] + [len(chunk) for chunk in embeddings.chunks])
    chunk_of = np.searchsorted(bounds, rows, side="right") - 1
    for number, chunk in enumerate(embeddings.chunks):
        at = np.flatnonzero(chunk_of == number)
        if not at.size:
            continue
        local = rows[at] - bounds[number]
        offsets = as_numpy(chunk.offsets)
        if chunk.null_count == 0 and (np.diff(offsets) == dim).all():
            values = as_numpy(chunk.values.slice(int(offsets[0]), len(chunk) * dim))
            out[at] = values.reshape(len(chunk), dim)[local]
        else:
            out[at] = as_numpy(pc.list_flatten(chunk.take(pa.array(local)))).reshape(at.size, dim)
    return out


def load_prepared(input_uri: str, valid_uri: str, metric: str, device: str) -> Prepared:
    """The prepared matrix, read once per Python worker (workers are reused across tasks)."""
    key = (input_uri, valid_uri, metric, device)
    if key not in _CACHE:
        _CACHE.clear()  # one matrix per worker at a time: memory stays bounded
        _FLOORS.clear()
        skus, raw = read_matrix(input_uri, valid_uri)
        _CACHE[key] = prepare(skus, raw, metric, device)
    return _CACHE[key]


_FLOORS: dict[int, np.ndarray] = {}


def worker_floors(prep: Prepared, width: int) -> np.ndarray:
    """This worker's per-row floors for ``width`` candidates over the cached matrix (see
    ``pair_candidates``): shared by the pairs the worker computes, forgotten with the matrix."""
    if width not in _FLOORS:
        _FLOORS[width] = np.full(prep.n, -np.inf, dtype=np.float32)
    return _FLOORS[width]

