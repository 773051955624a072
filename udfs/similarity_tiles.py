"""Exact similarity in tiles: BLAS products of a row block against column blocks, partial top-k, merge.

Why Python here: Spark has no matrix product, and a ``crossJoin`` makes one Spark row per pair before
any selection (about 90 s for 4,000 products on 2 cores). These kernels run inside ``mapInArrow`` tasks
on square tiles (BLAS: numpy's OpenBLAS on CPU, cuBLAS on the task's GPU), so a task holds the
embedding matrix plus one ``tile x tile`` float32 tile, never the ``N x N`` matrix.
- Top-k: every metric is symmetric, so each pair of row blocks is multiplied once and serves the rows
  of both blocks (half the products of a row-by-row pass); candidates are found with a per-row floor
  (a compare, no per-tile top-k) and merged across the pairs of a block in a second step.
- All-pairs: each row block against the later columns only (``i < j``), filtered and streamed.

Exactness. The products are float32 (the BLAS limit); float32 rounding can swap two neighbours whose
scores differ by a few units in the last place, and duplicate vectors get scores that differ in the
last bit depending on where they sit in a tile. So the selection keeps ``k + EXTRA_CANDIDATES``
candidates per row, re-scores them in float64 one pair at a time (identical vectors get identical
scores), orders them by (exact score, sku) and keeps ``k``. A row whose last candidate is within the
float32 error bound of its k-th is redone with four times as many candidates (up to all of them), so
no candidate that could belong to the exact top-k is ever lost. Scores written are the float64 ones.

Rows are indexed in ascending sku order (the matrix is sorted by sku when loaded), so "ties broken by
sku" is "ties broken by index", and ``src < dst`` is ``i < j``.

Metrics, as a "key" where higher is closer (the selection works on keys; the score is derived):
cosine (dot of L2-normalised vectors), dot, l2 (key = -squared distance, score = distance) and exp_l1
(key = -L1 distance, score = 1 - exp(-sqrt(L1)), the reference implementation's; L1 has no BLAS form:
``torch.cdist(p=1)``, about 2.6 G element-ops/s per core here, far slower than the products).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from pyspark.sql.pandas.types import to_arrow_schema
from threadpoolctl import threadpool_limits

from jobs.common import storage
from schemas import embeddings as E
from schemas import similarity as S

LOG = logging.getLogger(__name__)

EPS32 = 2.0**-24  # unit roundoff of float32
F32_MAX = float(np.finfo(np.float32).max)
# Float32 selection tolerance: TOL_ULPS * sqrt(d) * EPS32 * (the row's scale), doubled (both sides).
TOL_ULPS = 16.0
EXTRA_CANDIDATES = 4
CANDIDATE_GROWTH = 4
REFINE_ELEMENTS = 1 << 22  # float64 elements per re-scoring chunk (32 MB)
MAX_EDGES_PER_BATCH = 1 << 20
# l2 all-pairs: a squared distance below this share of |a|^2 + |b|^2 lost too many digits to
# cancellation in float32 (|a|^2 + |b|^2 - 2ab); such pairs are re-scored in float64.
L2_REFINE_SHARE = 1e-2

TOPK_ARROW_SCHEMA = to_arrow_schema(S.TOPK_EDGE_SCHEMA)  # declared once, in schemas/similarity.py
ALL_PAIRS_ARROW_SCHEMA = to_arrow_schema(S.ALL_PAIRS_EDGE_SCHEMA)  # declared once, in schemas/similarity.py


# --------------------------------------------------------------------------------------------------
# Devices and threads
# --------------------------------------------------------------------------------------------------
def resolve_device(
    requested: str,
    task_resources: Mapping[str, Sequence[str]] | None = None,
    *,
    cuda_available: bool | None = None,
) -> torch.device:
    """The torch device a task computes on.

    Args:
        requested: ``cpu``, ``cuda`` or ``auto`` (cuda when the task sees a GPU, else cpu).
        task_resources: resource name -> addresses, as ``TaskContext.get().resources()`` gives them
            (``{"gpu": ["1"]}`` on a GPU executor): the task's own GPU is used.
        cuda_available: override of ``torch.cuda.is_available()`` (tests).

    Raises:
        RuntimeError: ``cuda`` was asked for and the task has no GPU.
    """
    has_cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    if requested == "cpu" or (requested == "auto" and not has_cuda):
        return torch.device("cpu")
    if not has_cuda:
        raise RuntimeError("--device cuda, but torch sees no GPU on this executor")
    addresses = list((task_resources or {}).get("gpu", []))
    return torch.device(f"cuda:{int(addresses[0])}") if addresses else torch.device("cuda")


def task_setup(requested_device: str, threads: int | None) -> torch.device:
    """Pick the task's device and set torch's CPU threads (default: the task's ``spark.task.cpus``)."""
    from pyspark import TaskContext

    context = TaskContext.get()
    resources: dict[str, Sequence[str]] = {}
    cpus = 1
    if context is not None:
        resources = {name: info.addresses for name, info in context.resources().items()}
        cpus = max(1, int(context.cpus()))
    torch.set_num_threads(threads or cpus)
    # numpy's OpenBLAS would start one thread per core in every task: as many as Spark's task slots.
    threadpool_limits(limits=threads or cpus, user_api="blas")
    return resolve_device(requested_device, resources)


# --------------------------------------------------------------------------------------------------
# Input checks (vectorised over an Arrow list column)
# --------------------------------------------------------------------------------------------------
def embedding_facts(embeddings: pa.Array) -> tuple[pa.Array, pa.Array, pa.Array]:
    """What the checks need to know of each embedding, without the expected length:
    (length: int32, null for a null embedding; non_finite: a NaN, infinite or null value, or a squared
    norm beyond float32's range, which would overflow the products; zero_norm: all zeros), the two
    flags null for a null embedding. Values are read as float32, as the tiles will read them.
    """
    if isinstance(embeddings, pa.ChunkedArray):
        embeddings = embeddings.combine_chunks()
    count = len(embeddings)
    is_null = embeddings.is_null().to_numpy(zero_copy_only=False)
    lengths = pc.fill_null(pc.list_value_length(embeddings), 0).to_numpy(zero_copy_only=False)
    non_finite = np.zeros(count, dtype=bool)
    zero_norm = np.zeros(count, dtype=bool)
    for length in np.unique(lengths[~is_null]):  # rows of one length at a time: a matrix each
        rows = np.flatnonzero(~is_null & (lengths == length))
        values = (
            pc.list_flatten(embeddings.take(pa.array(rows)))
            .to_numpy(zero_copy_only=False)  # a null value becomes NaN
            .astype(np.float32, copy=False)
            .reshape(rows.size, int(length))
        )
        with np.errstate(over="ignore", invalid="ignore"):
            sq_norm = np.einsum("ij,ij->i", values, values, dtype=np.float64)
        non_finite[rows] = ~np.isfinite(values).all(axis=1) | ~(sq_norm <= F32_MAX)
        zero_norm[rows] = sq_norm == 0.0
    mask = np.asarray(is_null, dtype=bool)
    return (
        pa.array(lengths.astype(np.int32), mask=mask),
        pa.array(non_finite, mask=mask),
        pa.array(zero_norm, mask=mask),
    )


FACT_COLUMNS = (E.SKU, E.IMAGE_PATH, E.STATUS, E.EMBEDDING)
FACTS_ARROW_SCHEMA = to_arrow_schema(S.FACTS_SCHEMA)  # declared once, in schemas/similarity.py
FACTS_BATCH_ROWS = 8192


def missing_fact_columns(uri: str) -> list[str]:
    """The columns the checks read (``FACT_COLUMNS``) that a Parquet file lacks (its footer only)."""
    fs, path = storage.filesystem(uri)
    with fs.open_input_file(path) as handle:
        names = pq.ParquetFile(handle).schema_arrow.names
    return [column for column in FACT_COLUMNS if column not in names]


def file_facts(uri: str) -> pa.Table:
    """Every row of one embeddings Parquet file as ``FACTS_ARROW_SCHEMA`` (sku, image_path, status and
    the ``embedding_facts``), read with pyarrow a row batch at a time (memory: one batch of embeddings).

    Raises:
        ValueError: the file lacks a column the checks read (the job checks the footers first).
    """
    fs, path = storage.filesystem(uri)
    batches = []
    with fs.open_input_file(path) as handle:
        reader = pq.ParquetFile(handle)
        missing = [c for c in FACT_COLUMNS if c not in reader.schema_arrow.names]
        if missing:
            raise ValueError(f"{uri}: no column(s) {missing} (not the embed job's output?)")
        for rows in reader.iter_batches(batch_size=FACTS_BATCH_ROWS, columns=list(FACT_COLUMNS)):
            lengths, non_finite, zero_norm = embedding_facts(rows.column(E.EMBEDDING))
            batches.append(
                pa.RecordBatch.from_arrays(
                    [
                        rows.column(E.SKU).cast(pa.string()),
                        rows.column(E.IMAGE_PATH).cast(pa.string()),
                        rows.column(E.STATUS).cast(pa.string()),
                        lengths,
                        non_finite,
                        zero_norm,
                    ],
                    schema=FACTS_ARROW_SCHEMA,
                )
            )
    return pa.Table.from_batches(batches, schema=FACTS_ARROW_SCHEMA)


def _numpy(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    return values.to_numpy(zero_copy_only=False)


def expected_dimension(facts: pa.Table) -> int:
    """The most frequent embedding length among "ok" rows with an embedding (ties: the smaller);
    0 when there is none. ``facts``: ``FACTS_ARROW_SCHEMA`` rows (``file_facts``')."""
    ok = pc.fill_null(pc.equal(facts.column(E.STATUS), E.STATUS_OK), False)
    lengths = _numpy(pc.drop_null(pc.filter(facts.column(S.EMBEDDING_LENGTH), ok)))
    if lengths.size == 0:
        return 0
    values, counts = np.unique(lengths, return_counts=True)  # ascending: argmax takes the smaller tie
    return int(values[int(np.argmax(counts))])


def rejection_reasons(facts: pa.Table, *, expected_dim: int, metric: str) -> pa.Array:
    """Why each row of ``facts`` (``FACTS_ARROW_SCHEMA``) is left out; null = usable.

    First match wins: status not "ok" (dropped on purpose: the embed job reported it), missing sku (null,
    or only spaces), duplicate sku (every copy of a sku found in more than one "ok" row), null embedding,
    wrong length (``!= expected_dim``), non-finite, zero norm (cosine only).
    """
    count = facts.num_rows
    ok = _numpy(pc.fill_null(pc.equal(facts.column(E.STATUS), E.STATUS_OK), False))
    sku = facts.column(E.SKU)
    missing = _numpy(pc.fill_null(pc.equal(pc.utf8_trim(sku, " "), ""), True))
    ok_skus = pc.filter(sku, pa.array(ok, type=pa.bool_()))
    counted = pc.value_counts(pc.drop_null(ok_skus))
    repeated = pc.filter(counted.field("values"), pc.greater(counted.field("counts"), 1))
    duplicate = _numpy(pc.fill_null(pc.is_in(sku, value_set=repeated), False))
    length = facts.column(S.EMBEDDING_LENGTH)
    null_embedding = _numpy(length.is_null())
    wrong_length = ~null_embedding & (_numpy(pc.fill_null(length, 0)) != expected_dim)
    non_finite = _numpy(pc.fill_null(facts.column(S.NON_FINITE), False))
    zero_norm = _numpy(pc.fill_null(facts.column(S.ZERO_NORM), False))
    checks = [
        (~ok, S.REASON_STATUS_ERROR),
        (missing, S.REASON_MISSING_SKU),
        (duplicate, S.REASON_DUPLICATE_SKU),
        (null_embedding, S.REASON_NULL_EMBEDDING),
        (wrong_length, S.REASON_WRONG_LENGTH),
        (non_finite, S.REASON_NON_FINITE),
    ]
    if metric == S.COSINE:
        checks.append((zero_norm, S.REASON_ZERO_NORM))
    reasons = np.full(count, None, dtype=object)
    undecided = np.ones(count, dtype=bool)
    for failed, reason in checks:
        hit = undecided & np.asarray(failed, dtype=bool)
        reasons[hit] = reason
        undecided &= ~hit
    return pa.array(reasons, type=pa.string())


# --------------------------------------------------------------------------------------------------
# The prepared matrix
# --------------------------------------------------------------------------------------------------
@dataclass
class Prepared:
    """The valid embeddings in sku order, ready for tiles on one device."""

    metric: str
    skus: pa.Array  # (N,) string, ascending
    raw: np.ndarray  # (N, d) float32, as read
    norms: np.ndarray  # (N,) float64 L2 norms
    tol: np.ndarray  # (N,) float64 float32-selection tolerance per row, in key units
    work: torch.Tensor  # (N, d) float32 on device (L2-normalised for cosine)
    sq_norms: torch.Tensor | None  # (N,) float32 on device (l2 only)
    device: torch.device

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


def prepare(skus: pa.Array, raw: np.ndarray, metric: str, device: torch.device | str = "cpu") -> Prepared:
    """Prepare the matrix for ``metric``; ``skus`` must be ascending and unique, ``raw`` (N, d) float32."""
    if metric not in S.METRICS:
        raise ValueError(f"unknown metric {metric!r}")
    device = torch.device(device)
    raw = np.require(raw, dtype=np.float32, requirements=["C", "W"])  # torch wants writable memory
    norms = _row_norms(raw, 2)
    base = math.sqrt(max(1, raw.shape[1])) * EPS32 * TOL_ULPS * 2.0
    sq_norms = None
    if metric == S.COSINE:
        tol = np.full(raw.shape[0], base)
        work = torch.from_numpy(raw / norms[:, None].astype(np.float32))
    elif metric == S.DOT:
        tol = base * norms * norms.max()
        work = torch.from_numpy(raw)
    elif metric == S.L2:
        tol = base * (norms + norms.max()) ** 2
        work = torch.from_numpy(raw)
        sq_norms = torch.from_numpy((norms**2).astype(np.float32)).to(device)
    else:
        l1 = _row_norms(raw, 1)
        tol = base * (l1 + l1.max())
        work = torch.from_numpy(raw)
    return Prepared(metric, skus, raw, norms, tol, work.to(device), sq_norms, device)


_CACHE: dict[tuple[str, ...], Prepared] = {}


def read_matrix(input_uri: str, valid_uri: str) -> tuple[pa.Array, np.ndarray]:
    """The valid embeddings, sorted by sku: (skus, float32 matrix).

    ``input_uri`` is the embed job's Parquet; ``valid_uri`` the check step's valid rows (a ``sku``
    column). Valid skus are unique among the "ok" rows, so "ok" and a valid sku picks one row each.
    """
    valid = storage.read_parquet(valid_uri, [E.SKU]).column(E.SKU)
    table = storage.read_parquet(input_uri, [E.SKU, E.STATUS, E.EMBEDDING])
    keep = pc.and_(
        pc.fill_null(pc.equal(table.column(E.STATUS), E.STATUS_OK), False),
        pc.is_in(table.column(E.SKU), value_set=valid.combine_chunks()),
    )
    rows = _numpy(pc.indices_nonzero(keep))
    if rows.size != len(valid):
        raise RuntimeError(f"{input_uri} changed under the job: {rows.size} rows for {len(valid)} skus")
    if rows.size == 0:
        raise RuntimeError(f"embedding matrix of {input_uri} is empty")
    skus = table.column(E.SKU).take(pa.array(rows)).combine_chunks().cast(pa.string())
    order = _numpy(pc.sort_indices(skus))
    # Sort the row numbers by sku, then gather the vectors once (sorting the whole table would copy
    # the list column and flattening it would copy it again).
    embeddings = table.column(E.EMBEDDING).take(pa.array(rows[order]))
    values = _numpy(pc.list_flatten(embeddings)).astype(np.float32, copy=False)
    dim = values.size // rows.size
    if values.size % rows.size or (_numpy(pc.list_value_length(embeddings)) != dim).any():
        raise RuntimeError(f"embedding matrix of {input_uri} is ragged")
    return skus.take(pa.array(order)), values.reshape(rows.size, dim)


def load_prepared(input_uri: str, valid_uri: str, metric: str, device: torch.device) -> Prepared:
    """The prepared matrix, read once per Python worker (workers are reused across tasks)."""
    key = (input_uri, valid_uri, metric, str(device))
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


# --------------------------------------------------------------------------------------------------
# Tiles
# --------------------------------------------------------------------------------------------------
def _product(query: torch.Tensor, cols: torch.Tensor, out: np.ndarray | None = None) -> torch.Tensor:
    """``query @ cols.T`` in float32: numpy's OpenBLAS on CPU (about 1.5x torch's MKL sgemm on the
    AMD EPYC cores measured here, and the BLAS FAISS uses), torch (cuBLAS) on a GPU.

    ``out``: a flat float32 buffer of at least ``len(query) x len(cols)`` reused for the result (CPU):
    a fresh 16 MB result per tile is allocated and faulted in every time; one buffer per task is not."""
    if query.device.type == "cpu":
        if out is None:
            return torch.from_numpy(query.numpy() @ cols.numpy().T)
        result = out[: query.shape[0] * cols.shape[0]].reshape(query.shape[0], cols.shape[0])
        np.matmul(query.numpy(), cols.numpy().T, out=result)
        return torch.from_numpy(result)
    return query @ cols.T


def tile_keys(
    prep: Prepared, rows: torch.Tensor | slice, c0: int, c1: int, out: np.ndarray | None = None
) -> torch.Tensor:
    """float32 keys (higher = closer) of ``rows`` (an index tensor, or a slice of consecutive rows:
    no copy) against columns ``[c0, c1)``; ``out``: see ``_product``."""
    if isinstance(rows, slice):
        query = prep.work[rows]
        row_sq = prep.sq_norms[rows] if prep.sq_norms is not None else None
    else:
        query = prep.work.index_select(0, rows)
        row_sq = prep.sq_norms.index_select(0, rows) if prep.sq_norms is not None else None
    cols = prep.work[c0:c1]
    if prep.metric in (S.COSINE, S.DOT):
        return _product(query, cols, out)
    if prep.metric == S.L2:
        assert prep.sq_norms is not None and row_sq is not None
        # key = 2ab - |a|^2 - |b|^2 = -|a - b|^2
        keys = _product(query, cols, out).mul_(2.0)
        keys.sub_(row_sq[:, None]).sub_(prep.sq_norms[c0:c1][None, :])
        return keys
    return -torch.cdist(query, cols, p=1.0)


def mask_self(keys: torch.Tensor, rows: torch.Tensor, c0: int, c1: int) -> None:
    """Set the key of each row against itself to -inf (self-pairs are never neighbours)."""
    local = rows - c0
    inside = torch.nonzero((local >= 0) & (local < c1 - c0)).squeeze(1)
    if inside.numel():
        keys[inside, local[inside]] = -math.inf


def merge_topk(
    values_a: torch.Tensor, index_a: torch.Tensor, values_b: torch.Tensor, index_b: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two partial top-k lists per row (values with their column indices); keeps ``k`` per row."""
    values = torch.cat([values_a, values_b], dim=1)
    index = torch.cat([index_a, index_b], dim=1)
    if values.shape[1] <= k:
        return values, index
    values, picked = torch.topk(values, k, dim=1, sorted=False)
    return values, torch.gather(index, 1, picked)


def topk_candidates(
    prep: Prepared, rows: torch.Tensor, k: int, block_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 top-``k`` keys and column indices of ``rows`` over all columns, best first.

    One ``len(rows) x block_size`` tile at a time, each reduced with ``torch.topk`` and merged.
    """
    best_values: torch.Tensor | None = None
    best_index: torch.Tensor | None = None
    for c0 in range(0, prep.n, block_size):
        c1 = min(prep.n, c0 + block_size)
        keys = tile_keys(prep, rows, c0, c1)
        mask_self(keys, rows, c0, c1)
        values, index = torch.topk(keys, min(k, c1 - c0), dim=1, sorted=False)
        index = index + c0
        if best_values is None or best_index is None:
            best_values, best_index = values, index
        else:
            best_values, best_index = merge_topk(best_values, best_index, values, index, k)
    assert best_values is not None and best_index is not None
    best_values, order = torch.sort(best_values, dim=1, descending=True)
    return best_values, torch.gather(best_index, 1, order)


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
            if prep.metric in (S.COSINE, S.DOT):
                key = (query * cols).sum(axis=-1)
                if prep.metric == S.COSINE:
                    key /= prep.norms[rows[r0 : r0 + row_step]][:, None] * prep.norms[sel]
            elif prep.metric == S.L2:
                diff = query - cols
                key = -(diff * diff).sum(axis=-1)
            else:
                key = -np.abs(query - cols).sum(axis=-1)
            out[r0 : r0 + row_step, c0 : c0 + cand_step] = key
    return out


def scores_from_keys(metric: str, keys: np.ndarray) -> np.ndarray:
    """The score each metric reports for its float64 keys."""
    if metric in (S.COSINE, S.DOT):
        return keys
    distance = np.sqrt(np.maximum(-keys, 0.0))
    return distance if metric == S.L2 else 1.0 - np.exp(-distance)


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
    values32, cand = topk_candidates(prep, torch.from_numpy(rows).to(prep.device), width, block_size)
    return values32.cpu().numpy(), cand.cpu().numpy()


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


# --------------------------------------------------------------------------------------------------
# Top-k over symmetric block pairs
# --------------------------------------------------------------------------------------------------
# Every metric here is symmetric (key(i, j) == key(j, i)), so the tile of blocks (A, B) serves the rows
# of A (against B's columns) and the rows of B (against A's): each pair of blocks is multiplied once,
# half the products of a row-block-by-row-block pass (FAISS, numpy brute force). A task takes one block
# pair and keeps, for each row of both blocks, its float32 top-``width`` among the other block's
# columns; a second step merges the candidates of a block's pairs and settles them exactly
# (``topk_rows`` with ``first``).
#
# Selection without a per-tile top-k: each row keeps a floor, a lower bound of its final w-th best
# key in the pair, and a tile contributes only its elements >= the floor (one vectorised compare and
# ``flatnonzero``: about 0.3 ns an element in a one-off microbenchmark here, against 1.3 ns for
# ``torch.topk`` along rows and 6 ns along columns). The first floor of a row comes from the tile
# itself: the w-th largest of the maxima of GROUP-strided groups of its elements is <= its w-th
# largest element. Each tile's hits are merged into the running top-w at once, which raises the
# floor to the row's w-th best.
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


def _kth_of_group_maxima(keys: np.ndarray | torch.Tensor, width: int, axis: int) -> np.ndarray | None:
    """Per row (axis=1) or column (axis=0): a lower bound of its ``width``-th largest key, or None
    when the tile has fewer than ``width`` groups along ``axis``. ``keys``: numpy, or a torch tensor
    (a GPU tile stays on its GPU)."""
    groups = keys.shape[axis] // GROUP
    if groups < width:
        return None
    if isinstance(keys, torch.Tensor):
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
    keys: np.ndarray | torch.Tensor, floor: np.ndarray, axis: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, column, key) of the tile's finite keys >= the floor of their row (axis 1) or column (0)."""
    if isinstance(keys, torch.Tensor):
        floor_t = torch.from_numpy(floor).to(keys.device)
        mask = keys >= (floor_t[:, None] if axis == 1 else floor_t[None, :])
        r_t, c_t = torch.nonzero(mask, as_tuple=True)
        values_t = keys[r_t, c_t]
        r, c, values = r_t.cpu().numpy(), c_t.cpu().numpy(), values_t.cpu().numpy()
    else:
        flat = np.flatnonzero(keys >= (floor[:, None] if axis == 1 else floor[None, :]))
        r, c = np.divmod(flat, keys.shape[1])
        values = keys[r, c]
    finite = values > -np.inf  # self-pairs are -inf
    return r[finite], c[finite], values[finite]


def _update(
    best: RunningTopk, keys: np.ndarray | torch.Tensor, axis: int, first: int, other_first: int
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
    buffer = np.empty(tile * tile, dtype=np.float32) if prep.device.type == "cpu" else None
    for r0 in range(a0, a1, tile):
        r1 = min(a1, r0 + tile)
        rows = torch.arange(r0, r1, device=prep.device)
        for c0 in range(r0 if a == b else b0, b1, tile):
            c1 = min(b1, c0 + tile)
            keys_t = tile_keys(prep, slice(r0, r1), c0, c1, buffer)
            if c0 == r0:
                mask_self(keys_t, rows, c0, c1)
            keys = keys_t.numpy() if keys_t.device.type == "cpu" else keys_t
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


def _pair_scores(prep: Prepared, keys: torch.Tensor, rows: torch.Tensor, c0: int, c1: int) -> torch.Tensor:
    """float32 scores of a tile from its keys (l2: near pairs re-scored in float64)."""
    if prep.metric in (S.COSINE, S.DOT):
        return keys
    squared = torch.clamp(-keys, min=0.0)
    if prep.metric == S.L2:
        assert prep.sq_norms is not None
        scale = prep.sq_norms.index_select(0, rows)[:, None] + prep.sq_norms[c0:c1][None, :]
        near_r, near_c = torch.nonzero(squared < L2_REFINE_SHARE * scale, as_tuple=True)
        if near_r.numel():
            exact = exact_keys(
                prep,
                rows.index_select(0, near_r).cpu().numpy(),
                (near_c + c0).cpu().numpy()[:, None],
            )[:, 0]
            squared[near_r, near_c] = torch.from_numpy(-exact).to(squared.dtype).to(squared.device)
        return torch.sqrt(squared)
    return 1.0 - torch.exp(-torch.sqrt(squared))


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
    rows = torch.arange(r0, r1, device=prep.device)
    for c0 in range(r0, prep.n, block_size):
        c1 = min(prep.n, c0 + block_size)
        keys = tile_keys(prep, rows, c0, c1)
        scores = _pair_scores(prep, keys, rows, c0, c1)
        keep = torch.arange(c0, c1, device=prep.device)[None, :] > rows[:, None]
        if min_score is not None:
            keep &= scores >= min_score
        if max_distance is not None:
            keep &= scores <= max_distance
        pair_r, pair_c = torch.nonzero(keep, as_tuple=True)
        if not pair_r.numel():
            continue
        kept = scores[pair_r, pair_c].double().cpu().numpy()
        src = (pair_r + r0).cpu().numpy()
        dst = (pair_c + c0).cpu().numpy()
        directions = [(src, dst), (dst, src)] if directed else [(src, dst)]
        for start in range(0, kept.size, MAX_EDGES_PER_BATCH):
            part = slice(start, start + MAX_EDGES_PER_BATCH)
            score_array = pa.array(kept[part], type=pa.float64())
            for a, b in directions:
                yield pa.RecordBatch.from_arrays(
                    [
                        pc.take(prep.skus, pa.array(a[part])),
                        pc.take(prep.skus, pa.array(b[part])),
                        score_array,
                    ],
                    schema=ALL_PAIRS_ARROW_SCHEMA,
                )


# --------------------------------------------------------------------------------------------------
# Edge files, written by the tile tasks
# --------------------------------------------------------------------------------------------------
WRITTEN_ARROW_SCHEMA = to_arrow_schema(S.WRITTEN_SCHEMA)  # declared once, in schemas/similarity.py
ROW_GROUP_ROWS = 1 << 20  # edges buffered per Parquet row group


def task_index() -> int:
    """The running Spark task's partition number (0 outside Spark)."""
    from pyspark import TaskContext

    context = TaskContext.get()
    return context.partitionId() if context is not None else 0


class EdgeFiles:
    """One task's edges as Parquet files ``part-<task>-c<seq>.parquet`` of at most ``max_rows`` rows
    under ``folder``, each put in place whole (``storage.AtomicFile``); ``folder`` None: counted only.

    Written here, not by Spark's writer: the edges leave the task as Parquet straight from Arrow,
    with no conversion to Spark rows and back. Names depend on the task and its rows only, so a retried
    or speculative attempt writes the same files with the same rows; the job publishes the folder only
    after the counts check.
    """

    def __init__(self, folder: str | None, task: int, schema: pa.Schema, max_rows: int) -> None:
        self.folder, self.task, self.schema, self.max_rows = folder, task, schema, max_rows
        self.written: list[tuple[str | None, int]] = []
        self.counted = 0
        self.pending: list[pa.RecordBatch] = []
        self.pending_rows = 0
        self.file: storage.AtomicFile | None = None
        self.writer: pq.ParquetWriter | None = None
        self.file_rows = 0

    def write(self, batch: pa.RecordBatch) -> None:
        """Add a batch of edges (``schema``)."""
        if self.folder is None:
            self.counted += batch.num_rows
            return
        offset = 0
        while offset < batch.num_rows:
            take = min(batch.num_rows - offset, self.max_rows - self.file_rows - self.pending_rows)
            self.pending.append(batch.slice(offset, take))
            self.pending_rows += take
            offset += take
            if self.file_rows + self.pending_rows >= self.max_rows:
                self._finish_file()
            elif self.pending_rows >= ROW_GROUP_ROWS:
                self._flush()

    def _flush(self) -> None:
        if not self.pending_rows:
            return
        if self.writer is None:
            name = f"part-{self.task:05d}-c{len(self.written):03d}.parquet"
            self.file = storage.AtomicFile(storage.join(self.folder or "", name))
            self.writer = pq.ParquetWriter(self.file.stream, self.schema)
        self.writer.write_table(pa.Table.from_batches(self.pending, schema=self.schema))
        self.file_rows += self.pending_rows
        self.pending, self.pending_rows = [], 0

    def _finish_file(self) -> None:
        self._flush()
        if self.writer is not None and self.file is not None:
            self.writer.close()
            self.file.commit()
            self.written.append((self.file.name, self.file_rows))
        self.file, self.writer, self.file_rows = None, None, 0

    def close(self) -> pa.RecordBatch:
        """Finish the last file; the files written (or the count) as ``WRITTEN_ARROW_SCHEMA`` rows."""
        if self.folder is None:
            rows: list[tuple[str | None, int]] = [(None, self.counted)]
        else:
            self._finish_file()
            rows = self.written
        return pa.RecordBatch.from_arrays(
            [pa.array([name for name, _ in rows], pa.string()), pa.array([n for _, n in rows], pa.int64())],
            schema=WRITTEN_ARROW_SCHEMA,
        )

    def abort(self) -> None:
        """Drop the file being written (the task failed; its retry writes it again)."""
        if self.file is not None:
            self.file.abort()
        self.file, self.writer = None, None


def write_edges(
    batches: Iterator[pa.RecordBatch], folder: str | None, schema: pa.Schema, max_rows: int
) -> Iterator[pa.RecordBatch]:
    """Write (or count) the edge batches of this task; yields what was written (``EdgeFiles.close``)."""
    files = EdgeFiles(folder, task_index(), schema, max_rows)
    try:
        for batch in batches:
            files.write(batch)
    except BaseException:
        files.abort()
        raise
    yield files.close()


# --------------------------------------------------------------------------------------------------
# mapInArrow entry points: one input row per row block (the block number)
# --------------------------------------------------------------------------------------------------
def _blocks(batches: Iterator[pa.RecordBatch]) -> Iterator[int]:
    for batch in batches:
        yield from (int(block) for block in batch.column(0).to_numpy())


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


CANDIDATES_ARROW_SCHEMA = to_arrow_schema(S.CANDIDATES_SCHEMA)  # declared once, in schemas/similarity.py


def topk_candidates_fn(
    input_uri: str,
    valid_uri: str,
    metric: str,
    k: int,
    pair_block: int,
    tile: int,
    device: str,
    threads: int | None,
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """A ``mapInArrow`` function: block-pair numbers in (``block_pairs``' order), each pair's
    candidates out, one row per block: (block, float32 keys, int32 columns), ``rows x width`` each,
    as raw little-endian bytes."""

    def candidates(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        prep = load_prepared(input_uri, valid_uri, metric, task_setup(device, threads))
        pairs = block_pairs(math.ceil(prep.n / pair_block))
        width = candidate_width(prep.n, k)
        for pair in _blocks(batches):
            a, b = pairs[pair]
            found = pair_candidates(prep, a, b, pair_block, tile, width, worker_floors(prep, width))
            yield pa.RecordBatch.from_arrays(
                [
                    pa.array([block for block, _, _ in found], type=pa.int32()),
                    pa.array([keys.astype("<f4").tobytes() for _, keys, _ in found], type=pa.binary()),
                    pa.array([cols.astype("<i4").tobytes() for _, _, cols in found], type=pa.binary()),
                ],
                schema=CANDIDATES_ARROW_SCHEMA,
            )

    return candidates


def topk_merge_fn(
    input_uri: str,
    valid_uri: str,
    metric: str,
    k: int,
    pair_block: int,
    tile: int,
    device: str,
    threads: int | None,
    *,
    output: str | None,
    max_rows_per_file: int,
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """A ``mapInArrow`` function: candidate rows in (the caller's shuffle brings all rows of a block
    to one task), each block's exact top-k edges written under ``output`` (``EdgeFiles``; None:
    counted): the union of its pairs' candidates, its float32 top-``width``, settled by ``topk_rows``
    (float64 re-scoring, rows near the margin redone). Yields the files written."""

    def edges(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        prep = load_prepared(input_uri, valid_uri, metric, task_setup(device, threads))
        parts: dict[int, list[tuple[bytes, bytes]]] = {}
        for batch in batches:
            for block, keys, cols in zip(*(batch.column(i).to_pylist() for i in range(3)), strict=True):
                parts.setdefault(block, []).append((keys, cols))

        def merged() -> Iterator[pa.RecordBatch]:
            for block in sorted(parts):
                found = [
                    (np.frombuffer(keys, dtype="<f4"), np.frombuffer(cols, dtype="<i4"))
                    for keys, cols in parts.pop(block)
                ]
                yield from merge_block(prep, block, found, k, pair_block, tile)

        yield from write_edges(merged(), output, TOPK_ARROW_SCHEMA, max_rows_per_file)

    return edges


def all_pairs_edges_fn(
    input_uri: str,
    valid_uri: str,
    metric: str,
    block_size: int,
    column_block: int,
    device: str,
    threads: int | None,
    *,
    min_score: float | None,
    max_distance: float | None,
    directed: bool,
    output: str | None,
    max_rows_per_file: int,
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """A ``mapInArrow`` function: block numbers in, that block's (filtered) pairs streamed into Parquet
    files under ``output`` (``EdgeFiles``; None: counted). Yields the files written."""

    def edges(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        prep = load_prepared(input_uri, valid_uri, metric, task_setup(device, threads))

        def pairs() -> Iterator[pa.RecordBatch]:
            for block in _blocks(batches):
                r0 = block * block_size
                yield from all_pairs_batches(
                    prep,
                    r0,
                    min(prep.n, r0 + block_size),
                    column_block,
                    min_score=min_score,
                    max_distance=max_distance,
                    directed=directed,
                )

        yield from write_edges(pairs(), output, ALL_PAIRS_ARROW_SCHEMA, max_rows_per_file)

    return edges
