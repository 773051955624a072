"""The peer a user would otherwise run for exact top-k: one process, FAISS ``IndexFlatIP``.

    python -m bench.peers.faiss_topk --input EMBEDDINGS_PARQUET_FOLDER --output EDGES_FOLDER --top-k 10

Reads every Parquet file of the folder (``sku``, ``embedding``) with pyarrow, L2-normalises the vectors
(cosine), searches the k + 1 nearest of every vector (itself included) on all cores, drops the self
match and writes the edges as one Parquet file ``src, dst, score, rank`` like the similarity job's.
No checks: what it costs is the floor for a whole process that reads and writes the same files.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.peers.faiss_topk", description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    import faiss

    faiss.omp_set_num_threads(args.threads)
    table = pq.read_table(args.input, columns=["sku", "embedding"])
    skus = table.column("sku").combine_chunks()
    embedding = table.column("embedding").combine_chunks()
    dim = len(embedding[0])
    vectors = np.ascontiguousarray(
        embedding.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
    )
    read_s = time.perf_counter() - started
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(dim)
    index.add(vectors)
    scores, found = index.search(vectors, args.top_k + 1)
    search_s = time.perf_counter() - started - read_s
    n = len(vectors)
    is_self = found == np.arange(n)[:, None]
    # Drop the self match of each row (or its last candidate when FAISS ranked a tie before it).
    keep = ~is_self
    keep[~is_self.any(axis=1), -1] = False
    dst = found[keep].reshape(n, args.top_k)
    score = scores[keep].reshape(n, args.top_k).astype(np.float64)
    src_index = np.repeat(np.arange(n), args.top_k)
    edges = pa.table({
        "src": skus.take(pa.array(src_index)),
        "dst": skus.take(pa.array(dst.ravel())),
        "score": pa.array(score.ravel()),
        "rank": pa.array(np.tile(np.arange(1, args.top_k + 1, dtype=np.int32), n)),
    })
    os.makedirs(args.output, exist_ok=True)
    pq.write_table(edges, os.path.join(args.output, "part-00000.parquet"))
    total = time.perf_counter() - started
    sys.stdout.write(
        f"faiss_topk: {n} vectors x {dim}, {edges.num_rows} edges; read {read_s:.2f} s, "
        f"search {search_s:.2f} s, write {total - read_s - search_s:.2f} s (after imports)\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
