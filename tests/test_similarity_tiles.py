"""The tile kernels against an independent float64 brute force (numpy, whole matrix), every metric."""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from schemas import similarity as S
from udfs import similarity_tiles as st

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


def kernel_rows(prep: st.Prepared, k: int, block: int) -> list[tuple[str, str, float, int]]:
    rows = []
    for r0 in range(0, prep.n, block):
        batch = st.topk_batch(prep, r0, min(prep.n, r0 + block), k, block)
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
    prep = st.prepare(*sorted_input(skus, x), metric)
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
    prep = st.prepare(*sorted_input(skus, x), metric)
    assert_topk_equal(kernel_rows(prep, 3, 4), brute_topk(skus, x, metric, 3))


@pytest.mark.parametrize("metric", S.METRICS)
@pytest.mark.parametrize("directed", [False, True])
def test_all_pairs_tiles_match_brute_force(metric: str, directed: bool) -> None:
    n, d, block = 37, 16, 8
    skus = sample_skus(n)
    x = sample_vectors(n, d, seed=2)
    prep = st.prepare(*sorted_input(skus, x), metric)
    actual = {}
    for r0 in range(0, n, block):
        for batch in st.all_pairs_batches(prep, r0, min(n, r0 + block), block, directed=directed):
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
    prep = st.prepare(*sorted_input(skus, x), metric)
    higher = S.HIGHER_IS_CLOSER[metric]
    limits = {"min_score": threshold} if higher else {"max_distance": threshold}
    actual = {}
    for r0 in range(0, n, block):
        for batch in st.all_pairs_batches(prep, r0, min(n, r0 + block), block, **limits):
            actual.update({(r["src"], r["dst"]): r["score"] for r in batch.to_pylist()})
    expected = brute_all_pairs(skus, x, metric, **limits)
    assert 0 < len(expected) < n * (n - 1) // 2  # the threshold really filters
    assert_pairs_equal(actual, expected)


def test_merge_topk_keeps_the_best_of_both() -> None:
    values_a = torch.tensor([[9.0, 1.0], [5.0, 4.0]])
    index_a = torch.tensor([[0, 1], [0, 1]])
    values_b = torch.tensor([[3.0, 8.0], [6.0, 0.5]])
    index_b = torch.tensor([[7, 8], [7, 8]])
    values, index = st.merge_topk(values_a, index_a, values_b, index_b, 2)
    got = [
        sorted(zip(v.tolist(), i.tolist(), strict=True), reverse=True)
        for v, i in zip(values, index, strict=True)
    ]
    assert got == [[(9.0, 0), (8.0, 8)], [(6.0, 7), (5.0, 0)]]


def test_mask_self_only_hits_the_diagonal_inside_the_tile() -> None:
    keys = torch.zeros((3, 4))
    st.mask_self(keys, torch.tensor([4, 5, 9]), 3, 7)
    expected = torch.zeros((3, 4))
    expected[0, 1] = -math.inf
    expected[1, 2] = -math.inf
    assert torch.equal(keys, expected)


def test_resolve_device_prefers_the_tasks_gpu() -> None:
    cpu = torch.device("cpu")
    assert st.resolve_device("auto", {}, cuda_available=False) == cpu
    assert st.resolve_device("cpu", {"gpu": ["0"]}, cuda_available=True) == cpu
    assert st.resolve_device("auto", {"gpu": ["1"]}, cuda_available=True) == torch.device("cuda:1")
    assert st.resolve_device("cuda", {}, cuda_available=True) == torch.device("cuda")
    with pytest.raises(RuntimeError, match="no GPU"):
        st.resolve_device("cuda", {"gpu": ["0"]}, cuda_available=False)


def test_embedding_reasons_in_order() -> None:
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
        ],
        type=pa.list_(pa.float32()),
    )
    expected_cosine = [
        None,
        S.REASON_NULL_EMBEDDING,
        S.REASON_WRONG_LENGTH,
        S.REASON_WRONG_LENGTH,
        S.REASON_NON_FINITE,
        S.REASON_NON_FINITE,
        S.REASON_ZERO_NORM,
        S.REASON_NON_FINITE,
        None,
    ]
    assert st.embedding_reasons(embeddings, 3, reject_zero_norm=True).to_pylist() == expected_cosine
    expected_l2 = [None if r == S.REASON_ZERO_NORM else r for r in expected_cosine]
    assert st.embedding_reasons(embeddings, 3, reject_zero_norm=False).to_pylist() == expected_l2
    # a sliced (offset) list array is read at the right place
    assert st.embedding_reasons(embeddings.slice(4, 3), 3, reject_zero_norm=True).to_pylist() == (
        expected_cosine[4:7]
    )
