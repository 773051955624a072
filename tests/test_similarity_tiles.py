"""The tile kernels against an independent float64 brute force (numpy, whole matrix), every metric."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from jobs.common import quality_pass
from schemas import expectations
from schemas import similarity as S
from schemas.quality_terms import QualityThresholds
from udfs.similarity import checks, device, edge_files, matrix, pairs, tiles

TIE_DECIMALS = 9  # brute-force keys equal to 9 decimals are ties (broken by sku)
SCORE_TOL = 1e-5


# ----------------------------------------------------------------------------------------------
# Independent brute force (also used by test_similarity_job.py)
# ----------------------------------------------------------------------------------------------
def brute_matrices(vectors: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(keys, scores), n x n float64: keys higher = closer, scores as the metric reports them."""
    x = np.asarray(vectors, dtype=np.float64)
    if metric == S.COSINE:
        unit = x / np.linalg.norm(x, axis=1)[:, None]
        keys = unit @ unit.T
        return keys, keys
    if metric == S.DOT:
        keys = x @ x.T
        return keys, keys
    if metric == S.L2:
        squared = ((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=-1)
        return -squared, np.sqrt(squared)
    l1 = np.abs(x[:, None, :] - x[None, :, :]).sum(axis=-1)
    return -l1, 1.0 - np.exp(-np.sqrt(l1))


def brute_topk(
    skus: list[str], vectors: np.ndarray, metric: str, k: int
) -> list[tuple[str, str, float, int]]:
    """Top-k rows (src, dst, score, rank): best key first, ties by sku, self excluded."""
    keys, scores = brute_matrices(vectors, metric)
    out = []
    for i, src in enumerate(skus):
        others = sorted(
            (j for j in range(len(skus)) if j != i),
            key=lambda j: (-round(float(keys[i, j]), TIE_DECIMALS), skus[j]),
        )
        out += [(src, skus[j], float(scores[i, j]), rank) for rank, j in enumerate(others[:k], start=1)]
    return out


def brute_all_pairs(
    skus: list[str],
    vectors: np.ndarray,
    metric: str,
    *,
    min_score: float | None = None,
    max_distance: float | None = None,
    directed: bool = False,
) -> dict[tuple[str, str], float]:
    """{(src, dst): score} for every pair (src < dst unless directed), filtered."""
    _, scores = brute_matrices(vectors, metric)
    out = {}
    for i, a in enumerate(skus):
        for j, b in enumerate(skus):
            if i == j or (not directed and not a < b):
                continue
            score = float(scores[i, j])
            if min_score is not None and score < min_score:
                continue
            if max_distance is not None and score > max_distance:
                continue
            out[(a, b)] = score
    return out


def assert_topk_equal(actual: list[tuple], expected: list[tuple]) -> None:
    """Same (src, rank, dst) rows; scores within SCORE_TOL."""
    actual_sorted = sorted(actual, key=lambda r: (r[0], r[3]))
    expected_sorted = sorted(expected, key=lambda r: (r[0], r[3]))
    assert [(r[0], r[3], r[1]) for r in actual_sorted] == [(r[0], r[3], r[1]) for r in expected_sorted]
    for got, want in zip(actual_sorted, expected_sorted, strict=True):
        assert got[2] == pytest.approx(want[2], abs=SCORE_TOL), (got, want)


def assert_pairs_equal(actual: dict[tuple[str, str], float], expected: dict[tuple[str, str], float]) -> None:
    assert sorted(actual) == sorted(expected)
    for key, score in expected.items():
        assert actual[key] == pytest.approx(score, abs=SCORE_TOL), key


def sample_vectors(n: int, d: int, seed: int) -> np.ndarray:
    """Random float32 vectors with exact ties: rows 5 and 20 duplicate row 3, row 30 is 2 x row 3."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[5] = x[3]
    x[20] = x[3]
    x[30] = 2 * x[3]
    return x


# Hostile but valid skus; listed out of order so the kernel's sorting is exercised by the job tests.
def sample_skus(n: int) -> list[str]:
    base = [f"sku-{i:03d}" for i in range(n)]
    base[1] = 'q"uote,comma'
    base[2] = "ünïcode-✓"
    base[4] = " leading space"
    return base


def kernel_rows(prep: matrix.Prepared, k: int, block: int) -> list[tuple[str, str, float, int]]:
    rows = []
    for r0 in range(0, prep.n, block):
        batch = tiles.topk_batch(prep, r0, min(prep.n, r0 + block), k, block)
        rows += [(r["src"], r["dst"], r["score"], r["rank"]) for r in batch.to_pylist()]
    return rows


def sorted_input(skus: list[str], x: np.ndarray) -> tuple[pa.Array, np.ndarray]:
    order = sorted(range(len(skus)), key=lambda i: skus[i].encode())
    return pa.array([skus[i] for i in order]), x[order]


# ----------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("metric", S.METRICS)
@pytest.mark.parametrize(("k", "block"), [(5, 8), (3, 37), (40, 8)])
def test_topk_tiles_match_brute_force(metric: str, k: int, block: int) -> None:
    n, d = 37, 16
    skus = sample_skus(n)
    x = sample_vectors(n, d, seed=1)
    prep = matrix.prepare(*sorted_input(skus, x), metric)
    assert_topk_equal(kernel_rows(prep, k, block), brute_topk(skus, x, metric, k))


@pytest.mark.parametrize("metric", S.METRICS)
def test_topk_many_ties_beyond_the_candidate_margin(metric: str) -> None:
    # 12 identical vectors: for each of them, 11 neighbours tie at the top, more than k + EXTRA_CANDIDATES,
    # so the float64 tie-break needs the widening path; the winners must be the smallest skus.
    n, d = 30, 6
    rng = np.random.default_rng(3)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[10:22] = x[10]
    skus = [f"p{i:02d}" for i in range(n)][::-1]
    prep = matrix.prepare(*sorted_input(skus, x), metric)
    assert_topk_equal(kernel_rows(prep, 3, 4), brute_topk(skus, x, metric, 3))


def pair_kernel_rows(
    prep: matrix.Prepared, k: int, pair_block: int, tile: int, workers: int = 0
) -> list[tuple[str, str, float, int]]:
    """The top-k job's two steps in-process: every block pair's candidates, then each block's merge.

    ``workers`` > 0: the pairs go round-robin, last pair first, to that many workers, each with its
    own floors (as Spark's reused Python workers do); 0: no floors."""
    width = tiles.candidate_width(prep.n, k)
    blocks = math.ceil(prep.n / pair_block)
    floors = [np.full(prep.n, -np.inf, dtype=np.float32) for _ in range(workers)]
    found: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    order = pairs.block_pairs(blocks)[::-1] if workers else pairs.block_pairs(blocks)
    for number, (a, b) in enumerate(order):
        shared = floors[number % workers] if workers else None
        for block, keys, cols in pairs.pair_candidates(prep, a, b, pair_block, tile, width, shared):
            found.setdefault(block, []).append((keys, cols))
    rows = []
    for block in range(blocks):
        for batch in pairs.merge_block(prep, block, found[block], k, pair_block, tile):
            rows += [(r["src"], r["dst"], r["score"], r["rank"]) for r in batch.to_pylist()]
    return rows


@pytest.mark.parametrize("metric", S.METRICS)
@pytest.mark.parametrize(("n", "k", "pair_block", "tile"), [(37, 5, 16, 8), (37, 40, 16, 4), (37, 3, 64, 64)])
def test_pair_kernel_matches_brute_force(metric: str, n: int, k: int, pair_block: int, tile: int) -> None:
    skus = sample_skus(n)
    x = sample_vectors(n, 16, seed=5)
    prep = matrix.prepare(*sorted_input(skus, x), metric)
    assert_topk_equal(pair_kernel_rows(prep, k, pair_block, tile), brute_topk(skus, x, metric, k))


@pytest.mark.parametrize("metric", S.METRICS)
def test_pair_kernel_with_tile_bounds_matches_brute_force(metric: str) -> None:
    # Tiles of 256 >= GROUP x width rows: the first floor of every row and column comes from the
    # group-maxima bound; 3 blocks of 256 give off-diagonal pairs and a short last block.
    n = 600
    skus = [f"s{i:04d}" for i in range(n)][::-1]
    x = sample_vectors(n, 8, seed=6)
    x[100:120] = x[7]  # 21 identical vectors: ties beyond the candidate margin
    prep = matrix.prepare(*sorted_input(skus, x), metric)
    assert tiles.candidate_width(n, 10) <= 256 // pairs.GROUP
    expected = brute_topk(skus, x, metric, 10)
    assert_topk_equal(pair_kernel_rows(prep, 10, 256, 256), expected)
    # Floors shared by the pairs of a worker: fewer candidates per pair, the same result.
    assert_topk_equal(pair_kernel_rows(prep, 10, 256, 256, workers=2), expected)
    assert_topk_equal(pair_kernel_rows(prep, 10, 128, 256, workers=1), expected)


def test_group_maxima_bound_is_below_the_kth_largest() -> None:
    rng = np.random.default_rng(8)
    keys = rng.standard_normal((300, 500)).astype(np.float32)
    keys[3, :] = 1.0  # a row of ties
    width = 14
    for axis in (1, 0):
        bound = pairs._kth_of_group_maxima(keys, width, axis)
        kth = -np.sort(-keys, axis=axis).take(width - 1, axis=axis)
        assert bound is not None and bound.shape == kth.shape
        assert (bound <= kth).all()
        assert (bound >= np.sort(keys, axis=axis).take(keys.shape[axis] - 4 * width, axis=axis)).all()
        # torch's version (the GPU path) gives the same bound
        assert np.array_equal(pairs._kth_of_group_maxima(torch.from_numpy(keys), width, axis), bound)
    assert pairs._kth_of_group_maxima(keys[:, : pairs.GROUP * width - 1], width, 1) is None


@pytest.mark.parametrize("axis", [1, 0])
def test_hits_torch_and_numpy_agree(axis: int) -> None:
    rng = np.random.default_rng(9)
    keys = rng.standard_normal((40, 50)).astype(np.float32)
    keys[2, 3] = -np.inf
    floor = rng.standard_normal(keys.shape[0] if axis == 1 else keys.shape[1]).astype(np.float32)
    floor[0] = -np.inf
    r, c, v = pairs._hits(keys, floor, axis)
    expect = [
        (i, j) for i in range(40) for j in range(50)
        if keys[i, j] > -np.inf and keys[i, j] >= (floor[i] if axis == 1 else floor[j])
    ]
    assert list(zip(r.tolist(), c.tolist(), strict=True)) == expect
    assert np.array_equal(v, keys[r, c])
    rt, ct, vt = pairs._hits(torch.from_numpy(keys), floor, axis)
    assert (rt.tolist(), ct.tolist(), vt.tolist()) == (r.tolist(), c.tolist(), v.tolist())


def test_running_topk_keeps_the_best_and_raises_floors() -> None:
    rng = np.random.default_rng(10)
    count, width = 6, 3
    best = pairs.RunningTopk(100, count, width)
    offered: list[list[tuple[float, int]]] = [[] for _ in range(count)]
    column = 0
    for size in (4, 50, 200):  # the last one offers one row more than PAD_LIMIT x width at once
        rows = rng.integers(0, count, size)
        rows[: pairs.PAD_LIMIT * width + 1] = 2 if size == 200 else rows[: pairs.PAD_LIMIT * width + 1]
        values = rng.standard_normal(size).astype(np.float32)
        cols = np.arange(column, column + size)
        column += size
        best.add(rows, cols, values)
        for r, c, v in zip(rows.tolist(), cols.tolist(), values.tolist(), strict=True):
            offered[r].append((v, c))
    keys, index = best.result()
    for r in range(count):
        want = sorted(offered[r], key=lambda vc: (-vc[0], vc[1]))[:width]
        want += [(-np.inf, -1)] * (width - len(want))
        assert list(zip(keys[r].tolist(), index[r].tolist(), strict=True)) == want
        assert best.floor[r] == want[-1][0]


@pytest.mark.parametrize("blocks", [1, 2, 4, 7, 13])
def test_block_pairs_cover_each_unordered_pair_once_in_balanced_runs(blocks: int) -> None:
    order = pairs.block_pairs(blocks)
    assert sorted(order) == [(a, b) for a in range(blocks) for b in range(a, blocks)]
    cost = [0.5 if a == b else 1.0 for a, b in order]
    for parts in (2, 4):
        if len(order) < 2 * parts:
            continue
        bounds = [len(order) * i // parts for i in range(parts + 1)]  # spark.range's split
        runs = [sum(cost[bounds[i] : bounds[i + 1]]) for i in range(parts)]
        assert max(runs) - min(runs) <= 1.0, runs


@pytest.mark.parametrize("metric", S.METRICS)
@pytest.mark.parametrize("directed", [False, True])
def test_all_pairs_tiles_match_brute_force(metric: str, directed: bool) -> None:
    n, d, block = 37, 16, 8
    skus = sample_skus(n)
    x = sample_vectors(n, d, seed=2)
    prep = matrix.prepare(*sorted_input(skus, x), metric)
    actual = {}
    for r0 in range(0, n, block):
        for batch in tiles.all_pairs_batches(prep, r0, min(n, r0 + block), block, directed=directed):
            for row in batch.to_pylist():
                assert (row["src"], row["dst"]) not in actual
                actual[(row["src"], row["dst"])] = row["score"]
    assert_pairs_equal(actual, brute_all_pairs(skus, x, metric, directed=directed))


@pytest.mark.parametrize(
    ("metric", "threshold"), [(S.COSINE, 0.2), (S.DOT, 1.5), (S.L2, 5.0), (S.EXP_L1, 0.98)]
)
def test_all_pairs_filter_inside_tiles(metric: str, threshold: float) -> None:
    n, d, block = 37, 16, 8
    skus = sample_skus(n)
    x = sample_vectors(n, d, seed=4)
    prep = matrix.prepare(*sorted_input(skus, x), metric)
    higher = S.HIGHER_IS_CLOSER[metric]
    limits = {"min_score": threshold} if higher else {"max_distance": threshold}
    actual = {}
    for r0 in range(0, n, block):
        for batch in tiles.all_pairs_batches(prep, r0, min(n, r0 + block), block, **limits):
            actual.update({(r["src"], r["dst"]): r["score"] for r in batch.to_pylist()})
    expected = brute_all_pairs(skus, x, metric, **limits)
    assert 0 < len(expected) < n * (n - 1) // 2  # the threshold really filters
    assert_pairs_equal(actual, expected)


def as_torch(prep: matrix.Prepared) -> matrix.Prepared:
    """The same prepared matrix as torch tensors (on the CPU): the kernels take their GPU path."""
    return dataclasses.replace(
        prep,
        work=torch.from_numpy(np.array(prep.work)),
        sq_norms=None if prep.sq_norms is None else torch.from_numpy(np.array(prep.sq_norms)),
    )


@pytest.mark.parametrize("metric", S.METRICS)
def test_the_gpu_path_gives_the_cpu_paths_edges(metric: str) -> None:
    # The torch code of every kernel (run here on CPU tensors) against the numpy code, and both against
    # the brute force: top-k rows, block pairs and all-pairs tiles.
    n, d = 37, 16
    skus = sample_skus(n)
    x = sample_vectors(n, d, seed=11)
    prep = matrix.prepare(*sorted_input(skus, x), metric)
    torch_prep = as_torch(prep)
    assert isinstance(prep.work, np.ndarray) and isinstance(torch_prep.work, torch.Tensor)
    expected = brute_topk(skus, x, metric, 5)
    for each in (prep, torch_prep):
        assert_topk_equal(kernel_rows(each, 5, 8), expected)
        assert_topk_equal(pair_kernel_rows(each, 5, 16, 8), expected)
    for r0 in (0, 8):
        numpy_keys = tiles.tile_keys(prep, np.arange(r0, r0 + 8), 0, n)
        torch_keys = tiles.tile_keys(torch_prep, torch.arange(r0, r0 + 8), 0, n)
        np.testing.assert_allclose(torch_keys.numpy(), numpy_keys, rtol=1e-5, atol=1e-4)
        numpy_pairs = list(tiles.all_pairs_batches(prep, r0, r0 + 8, 8))
        torch_pairs = list(tiles.all_pairs_batches(torch_prep, r0, r0 + 8, 8))
        got = pa.Table.from_batches(torch_pairs, schema=tiles.ALL_PAIRS_ARROW_SCHEMA).to_pylist()
        want = pa.Table.from_batches(numpy_pairs, schema=tiles.ALL_PAIRS_ARROW_SCHEMA).to_pylist()
        assert [(r["src"], r["dst"]) for r in got] == [(r["src"], r["dst"]) for r in want]
        assert [r["score"] for r in got] == pytest.approx([r["score"] for r in want], abs=SCORE_TOL)


def test_l1_distances_match_float64() -> None:
    rng = np.random.default_rng(12)
    query = rng.standard_normal((tiles.L1_ROWS + 3, 9)).astype(np.float32)
    cols = rng.standard_normal((11, 9)).astype(np.float32)
    got = tiles.l1_distances(query, cols)
    want = np.abs(query[:, None, :].astype(np.float64) - cols[None, :, :]).sum(axis=-1)
    assert got.dtype == np.float32 and got.shape == (tiles.L1_ROWS + 3, 11)
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("array", [np.array, torch.tensor])
def test_merge_topk_keeps_the_best_of_both(array: Any) -> None:
    values_a = array([[9.0, 1.0], [5.0, 4.0]])
    index_a = array([[0, 1], [0, 1]])
    values_b = array([[3.0, 8.0], [6.0, 0.5]])
    index_b = array([[7, 8], [7, 8]])
    values, index = tiles.merge_topk(values_a, index_a, values_b, index_b, 2)
    assert type(values) is type(values_a) and type(index) is type(index_a)
    got = [
        sorted(zip(v.tolist(), i.tolist(), strict=True), reverse=True)
        for v, i in zip(values, index, strict=True)
    ]
    assert got == [[(9.0, 0), (8.0, 8)], [(6.0, 7), (5.0, 0)]]


@pytest.mark.parametrize("array", [np.array, torch.tensor])
def test_mask_self_only_hits_the_diagonal_inside_the_tile(array: Any) -> None:
    keys = array(np.zeros((3, 4), dtype=np.float32))
    tiles.mask_self(keys, array([4, 5, 9]), 3, 7)
    expected = np.zeros((3, 4), dtype=np.float32)
    expected[0, 1] = -math.inf
    expected[1, 2] = -math.inf
    np.testing.assert_array_equal(np.asarray(keys), expected)


def test_resolve_device_prefers_the_tasks_gpu() -> None:
    assert device.resolve_device("auto", {}, cuda_available=False) == "cpu"
    assert device.resolve_device("cpu", {"gpu": ["0"]}, cuda_available=True) == "cpu"
    assert device.resolve_device("auto", {"gpu": ["1"]}, cuda_available=True) == "cuda:1"
    assert device.resolve_device("cuda", {}, cuda_available=True) == "cuda"
    assert torch.device(device.resolve_device("auto", {"gpu": ["1"]}, cuda_available=True)).index == 1
    with pytest.raises(RuntimeError, match="no GPU"):
        device.resolve_device("cuda", {"gpu": ["0"]}, cuda_available=False)


def test_auto_without_a_gpu_driver_is_the_cpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(device, "GPU_DRIVER_PATHS", (str(tmp_path / "nvidia"),))
    assert not device.has_gpu_driver() and not device.torch_sees_gpu()
    assert device.resolve_device("auto", {"gpu": ["0"]}) == "cpu"
    (tmp_path / "nvidia").mkdir()
    assert device.has_gpu_driver()


# The CPU path end to end in a fresh interpreter (pytest's own has torch loaded by the tests above): the
# tasks' modules, the device set-up of a task asking for ``auto`` on a machine without a GPU driver, and
# every kernel of every metric must leave torch unimported.
NO_TORCH_SCRIPT = """
import sys
import numpy as np
import pyarrow as pa
from udfs.similarity import device, matrix, pairs, tasks, tiles

device.GPU_DRIVER_PATHS = ()
assert device.task_setup("auto", 1) == "cpu"
x = np.random.default_rng(1).standard_normal((40, 8)).astype(np.float32)
skus = pa.array([f"s{i:02d}" for i in range(40)])
for metric in ("cosine", "dot", "l2", "exp_l1"):
    prep = matrix.prepare(skus, x, metric, device.CPU)
    assert tiles.topk_batch(prep, 0, 40, 5, 16).num_rows == 200
    found = pairs.pair_candidates(prep, 0, 1, 20, 8, tiles.candidate_width(40, 5))
    assert [block for block, _, _ in found] == [0, 1]
    assert sum(b.num_rows for b in tiles.all_pairs_batches(prep, 0, 40, 16)) == 40 * 39 // 2
print("torch" in sys.modules)
"""


def test_the_cpu_path_never_imports_torch(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-c", NO_TORCH_SCRIPT],
        capture_output=True, text=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_embedding_facts() -> None:
    embeddings = pa.array(
        [
            [1.0, 2.0, 3.0],
            None,
            [1.0, 2.0],
            [],
            [float("nan"), 1.0, 2.0],
            [float("inf"), 1.0, 2.0],
            [0.0, 0.0, 0.0],
            [3e19, 0.0, 0.0],  # squared norm 9e38 > float32 max: the products would overflow
            [-0.0, 1e-30, 0.0],
            [0.0, None, 0.0],  # a null value
            [0.0, -0.0],
        ],
        type=pa.list_(pa.float32()),
    )
    lengths, non_finite, zero_norm = checks.embedding_facts(embeddings)
    assert lengths.to_pylist() == [3, None, 2, 0, 3, 3, 3, 3, 3, 3, 2]
    assert non_finite.to_pylist() == [False, None, False, False, True, True, False, True, False, True, False]
    assert zero_norm.to_pylist() == [False, None, False, True, False, False, True, False, False, False, True]
    # a sliced (offset) list array is read at the right place; a chunked one too
    sliced = checks.embedding_facts(embeddings.slice(4, 3))
    assert [a.to_pylist() for a in sliced] == [[3, 3, 3], [True, True, False], [False, False, True]]
    chunked = checks.embedding_facts(pa.chunked_array([embeddings.slice(0, 5), embeddings.slice(5)]))
    assert [a.to_pylist() for a in chunked] == [a.to_pylist() for a in (lengths, non_finite, zero_norm)]


def facts_table(rows: list[tuple]) -> pa.Table:
    """FACTS_ARROW_SCHEMA rows: (sku, image_path, status, length, non_finite, zero_norm)."""
    schema = checks.FACTS_ARROW_SCHEMA
    return pa.Table.from_pylist([dict(zip(schema.names, row, strict=True)) for row in rows], schema=schema)


def test_expected_dimension_is_the_most_frequent_ok_length() -> None:
    assert checks.expected_dimension(facts_table([])) == 0
    rows = [
        ("a", "a.jpg", "ok", 4, False, False),
        ("b", "b.jpg", "ok", 3, False, False),
        ("c", "c.jpg", "error", 3, False, False),  # not ok: not counted
        ("d", "d.jpg", None, 3, False, False),  # no status: not counted
        ("e", "e.jpg", "ok", None, None, None),  # no embedding: not counted
        ("f", "f.jpg", "ok", 4, True, False),  # non-finite values still have a length
    ]
    assert checks.expected_dimension(facts_table(rows)) == 4
    # a tie takes the smaller length
    assert checks.expected_dimension(facts_table(rows + [("g", "g.jpg", "ok", 3, False, False)])) == 3
    assert checks.expected_dimension(facts_table([("c", "c.jpg", "error", 3, False, False)])) == 0


@pytest.mark.parametrize("metric", [S.COSINE, S.DOT])
def test_rejection_reasons_first_match_wins(metric: str) -> None:
    rows_and_reasons = [
        (("a", "a.jpg", "ok", 3, False, False), None),
        (("b", "b.jpg", "error", None, None, None), S.REASON_STATUS_ERROR),
        ((None, "n.jpg", None, 3, False, False), S.REASON_STATUS_ERROR),  # no status before no sku
        ((None, "n.jpg", "ok", 3, False, False), S.REASON_MISSING_SKU),
        (("   ", "s.jpg", "ok", 3, False, False), S.REASON_MISSING_SKU),
        (("", "e.jpg", "ok", 3, False, False), S.REASON_MISSING_SKU),
        (("\t", "t.jpg", "ok", 3, False, False), None),  # only spaces count as blank, as Spark's trim
        (("d", "d1.jpg", "ok", None, None, None), S.REASON_DUPLICATE_SKU),  # two ok copies: both out
        (("d", "d2.jpg", "ok", 3, False, False), S.REASON_DUPLICATE_SKU),
        (("d", "d3.jpg", "error", 3, False, False), S.REASON_STATUS_ERROR),
        (("o", "o1.jpg", "ok", 3, False, False), None),  # its other copy is not ok: one ok copy
        (("o", "o2.jpg", "error", 3, False, False), S.REASON_STATUS_ERROR),
        (("Ü,\"x\"", "u.jpg", "ok", None, None, None), S.REASON_NULL_EMBEDDING),
        (("w", "w.jpg", "ok", 2, True, True), S.REASON_WRONG_LENGTH),
        (("z0", "z.jpg", "ok", 0, False, True), S.REASON_WRONG_LENGTH),
        (("f", "f.jpg", "ok", 3, True, False), S.REASON_NON_FINITE),
        (("z", "z.jpg", "ok", 3, False, True), S.REASON_ZERO_NORM if metric == S.COSINE else None),
    ]
    facts = facts_table([row for row, _ in rows_and_reasons])
    reasons = checks.rejection_reasons(facts, expected_dim=3, metric=metric)
    assert reasons.type == pa.string()
    assert reasons.to_pylist() == [reason for _, reason in rows_and_reasons]
    assert checks.rejection_reasons(facts_table([]), expected_dim=3, metric=metric).to_pylist() == []


def test_file_facts_reads_a_file_in_batches(tmp_path: Path) -> None:
    rows = 3 * checks.FACTS_BATCH_ROWS // 2
    table = pa.table(
        {
            "sku": [f"s{i}" for i in range(rows)],
            "image_path": [f"p{i}.jpg" for i in range(rows)],
            "embedding": pa.array([[float(i), 1.0] if i % 7 else None for i in range(rows)],
                                  type=pa.list_(pa.float32())),
            "status": ["ok" if i % 5 else "error" for i in range(rows)],
            "extra": list(range(rows)),
        }
    )
    pq.write_table(table, tmp_path / "a.parquet")
    pq.write_table(table.drop(["status"]), tmp_path / "b.parquet")
    out = checks.file_facts(str(tmp_path / "a.parquet"))
    assert out.schema == checks.FACTS_ARROW_SCHEMA
    assert out.column("sku").to_pylist() == table.column("sku").to_pylist()
    assert out.column("status").to_pylist() == table.column("status").to_pylist()
    assert out.column(S.EMBEDDING_LENGTH).to_pylist() == [2 if i % 7 else None for i in range(rows)]
    assert out.column(S.ZERO_NORM).to_pylist() == [False if i % 7 else None for i in range(rows)]
    with pytest.raises(ValueError, match=r"b\.parquet: no column\(s\) \['status'\]"):
        checks.file_facts(str(tmp_path / "b.parquet"))


def test_read_matrix_keeps_the_valid_rows_in_sku_order(tmp_path: Path) -> None:
    def write(folder: Path, name: str, rows: list[tuple]) -> None:
        folder.mkdir(exist_ok=True)
        table = pa.table(
            {
                "sku": [r[0] for r in rows],
                "status": [r[1] for r in rows],
                "embedding": pa.array([r[2] for r in rows], type=pa.list_(pa.float32())),
            }
        )
        pq.write_table(table, folder / name, row_group_size=2)  # several chunks per column

    inp = tmp_path / "in"
    write(inp, "a.parquet", [("c", "ok", [3.0, 3.5]), ("x", "ok", None), ("a", "ok", [1.0, 1.5]),
                             ("b", "error", [9.0, 9.0])])
    write(inp, "b.parquet", [("b", "ok", [2.0, 2.5]), ("w", "ok", [7.0]), ("d", None, [4.0, 4.5]),
                             ("é,\"", "ok", [5.0, 5.5])])
    valid = tmp_path / "valid"
    write(valid, "v.parquet", [(sku, None, None) for sku in ["b", "é,\"", "a", "c"]])
    skus, values = matrix.read_matrix(str(inp), str(valid))
    assert skus.to_pylist() == ["a", "b", "c", "é,\""]
    np.testing.assert_array_equal(values, np.array([[1, 1.5], [2, 2.5], [3, 3.5], [5, 5.5]], np.float32))
    assert values.dtype == np.float32 and values.flags.c_contiguous
    # a valid sku the input no longer has, or a valid list naming a row of another length
    write(valid, "v.parquet", [(sku, None, None) for sku in ["a", "zz"]])
    with pytest.raises(RuntimeError, match="changed under the job: 1 rows for 2 skus"):
        matrix.read_matrix(str(inp), str(valid))
    write(valid, "v.parquet", [(sku, None, None) for sku in ["a", "w"]])
    with pytest.raises(RuntimeError, match="ragged"):
        matrix.read_matrix(str(inp), str(valid))


@pytest.mark.parametrize("value_type", [pa.float32(), pa.float64()])
def test_gather_rows_reads_sliced_uniform_and_ragged_chunks(value_type: pa.DataType) -> None:
    """Chunks that are slices of a bigger list array (their values start past 0), uniform ones read in
    place and ragged or null ones through take, each row where ``rows`` asks for it."""
    rng = np.random.default_rng(5)
    vectors = [list(rng.standard_normal(3)) for _ in range(12)]
    whole = pa.array(vectors, type=pa.list_(value_type))
    ragged = pa.array([vectors[0], None, [1.0], vectors[1]], type=pa.list_(value_type))
    chunks = pa.chunked_array([whole.slice(5, 4), ragged, whole.slice(1, 3)])
    expected = [vectors[5], vectors[6], vectors[7], vectors[8], vectors[0], None, [1.0], vectors[1],
                vectors[1], vectors[2], vectors[3]]
    rows = np.array([10, 4, 0, 7, 3, 8, 2])
    out = matrix.gather_rows(chunks, rows, 3)
    assert out.dtype == np.float32 and out.shape == (7, 3)
    np.testing.assert_array_equal(out, np.array([expected[r] for r in rows], dtype=np.float32))


def edge_batch(first: int, rows: int) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [pa.array([f"s{i}" for i in range(first, first + rows)]), pa.array([f"d{i}" for i in range(rows)]),
         pa.array(np.arange(rows, dtype=np.float64))],
        schema=tiles.ALL_PAIRS_ARROW_SCHEMA,
    )


def test_edge_files_bound_rows_per_file_and_report_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(edge_files, "ROW_GROUP_ROWS", 4)
    batches = [edge_batch(0, 7), edge_batch(7, 0), edge_batch(7, 6), edge_batch(13, 3)]
    folder = str(tmp_path / "e")
    written = list(edge_files.write_edges(iter(batches), folder, tiles.ALL_PAIRS_ARROW_SCHEMA, 10))
    assert len(written) == 1 and written[0].schema == edge_files.WRITTEN_ARROW_SCHEMA
    files = ["part-00000-c000.parquet", "part-00000-c001.parquet"]
    assert written[0].to_pylist() == [
        {"file": files[0], "rows": 10, "metrics": None}, {"file": files[1], "rows": 6, "metrics": None}
    ]
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == files  # no temporary file left
    table = pa.concat_tables([pq.read_table(tmp_path / "e" / f) for f in files])
    assert table.equals(pa.Table.from_batches(batches, schema=tiles.ALL_PAIRS_ARROW_SCHEMA))
    groups = [pq.ParquetFile(tmp_path / "e" / f).metadata.num_row_groups for f in files]
    assert groups == [2, 1]  # 7 rows flushed at 4 or more, then 3 to fill the file; then 3 + 3
    # Smaller files: the same rows cut every 5.
    small = list(edge_files.write_edges(iter(batches), str(tmp_path / "s"), tiles.ALL_PAIRS_ARROW_SCHEMA, 5))
    assert [row["rows"] for row in small[0].to_pylist()] == [5, 5, 5, 1]
    # A retried attempt writes the same names with the same rows.
    again = list(edge_files.write_edges(iter(batches), folder, tiles.ALL_PAIRS_ARROW_SCHEMA, 10))
    assert again[0].to_pylist() == written[0].to_pylist()
    assert pa.concat_tables([pq.read_table(tmp_path / "e" / f) for f in files]).equals(table)
    # Counted only: nothing written.
    counted = list(edge_files.write_edges(iter(batches), None, tiles.ALL_PAIRS_ARROW_SCHEMA, 10))
    assert counted[0].to_pylist() == [{"file": None, "rows": 16, "metrics": None}]
    # With the gate's suite: each file's edges counted as written, the counts of that file's rows.
    # One batch has a self-loop and a non-finite score, so some counts are not zero.
    suite = expectations.similarity_edges_suite(QualityThresholds(), {})
    odd = pa.RecordBatch.from_arrays(
        [pa.array(["s1", "s2"]), pa.array(["s1", "d9"]), pa.array([0.5, float("nan")])],
        schema=tiles.ALL_PAIRS_ARROW_SCHEMA,
    )
    schema = tiles.ALL_PAIRS_ARROW_SCHEMA
    gated = list(edge_files.write_edges(iter([*batches, odd]), str(tmp_path / "g"), schema, 10, suite))
    totals: dict[str, int] = {}
    for row in gated[0].to_pylist():
        on_file = quality_pass.table_partial(suite, pq.read_table(tmp_path / "g" / row["file"]))
        counts = json.loads(row["metrics"])
        assert counts["rows"] == row["rows"] and counts["nulls"] == on_file["nulls"]
        assert counts["counts"] == on_file["counts"]
        for index, n in counts["counts"].items():
            totals[index] = totals.get(index, 0) + n
    by_description = {spec.description: totals[str(i)] for i, spec in enumerate(suite)}
    assert by_description["no product is its own neighbour (src != dst)"] == 1
    assert by_description["scores are finite (no NaN, no Infinity)"] == 1


def test_edge_files_of_a_failed_task_leave_only_whole_files(tmp_path: Path) -> None:
    def failing() -> Iterator[pa.RecordBatch]:
        yield edge_batch(0, 7)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        list(edge_files.write_edges(failing(), str(tmp_path / "e"), tiles.ALL_PAIRS_ARROW_SCHEMA, 5))
    # the first file was complete; the second (2 rows so far) was not, and is gone with its temporary name
    assert [p.name for p in (tmp_path / "e").iterdir()] == ["part-00000-c000.parquet"]
    assert pq.read_table(tmp_path / "e" / "part-00000-c000.parquet").num_rows == 5
