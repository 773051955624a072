"""Exact similarity in tiles: BLAS products of a row block against column blocks, partial top-k, merge.

Why Python here: Spark has no matrix product, and a ``crossJoin`` makes one Spark row per pair before
any selection (about 90 s for 4,000 products on 2 cores). These kernels run inside ``mapInArrow`` tasks
on square tiles (BLAS: numpy's OpenBLAS on CPU, cuBLAS through torch on the task's GPU), so a task
holds the embedding matrix plus one ``tile x tile`` float32 tile, never the ``N x N`` matrix.
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
(key = -L1 distance, score = 1 - exp(-sqrt(L1)), the reference implementation's; L1 has no BLAS form).

The CPU path is numpy only: torch is imported where a task computes on a GPU (``device``), never on a
CPU worker (a cold ``import torch`` costs seconds in every Python worker).

Modules, bottom up: ``device`` (the task's device and threads), ``checks`` (the input checks, over Arrow
columns), ``matrix`` (the prepared matrix, read once per worker), ``tiles`` (tile products, exact top-k
rows, all-pairs), ``pairs`` (top-k over symmetric block pairs), ``edge_files`` (the Parquet files the
tasks write) and ``tasks`` (the ``mapInArrow`` functions and their frozen specs).
"""
