"""Exact visual similarity between products: top-k neighbours per product, or all pairs.

    python -m jobs.similarity --input W/style/embeddings/dt=D --output W/style --run-date D \
        (--top-k 10 | --all-pairs [--min-score S | --max-distance D]) [--metric cosine|dot|l2|exp_l1] \
        [--directed] [--block-size 2048] [--device auto|cpu|cuda]

Reads the embed job's Parquet (``schemas.embeddings.EMBEDDING_SCHEMA``). Writes
``<output>/similarity/dt=<D>/`` (Parquet, ``schemas.similarity``), the rejected rows to
``<output>/rejects/similarity/dt=<D>/`` and the report ``<reports>/similarity/dt=<D>.json``.

How (see ``udfs/similarity/`` for the kernels):
1. The driver reads each input Parquet file with pyarrow (the embeddings never travel through Spark's
   row format) into per-row facts: length, non-finite, zero norm (a few percent of the matrix every
   tile task holds). Every row is checked (status, sku, duplicates, null, length, NaN/inf, zero norm
   for cosine) against the expected embedding length, the most frequent length among "ok" rows with
   an embedding (ties: the smaller). The valid skus and the rejected rows are staged as Parquet from
   there. No Spark job before the tiles.
2. Broadcast by Parquet: every tile task reads the input embeddings itself (pyarrow, once per Python
   worker, cached across its tasks; 50,000 x 2048 float32 is 400 MB), keeps the rows the check found
   valid and sorts them by sku, so row index order is sku order. Chosen because a catalog's matrix
   (about 50,000 products) fits a worker many times over, and the embeddings never go through Spark.
   Top-k: a ``spark.range`` of block pairs (blocks of ``4 x --block-size`` rows, all ``(a, b)``,
   ``a <= b``) drives ``mapInArrow``: each task multiplies one pair in ``--block-size`` square tiles
   and keeps, for the rows of both blocks, their float32 candidates among the other block (each
   product of two products is computed once); a shuffle by block brings a block's candidates
   together, where they are merged, re-scored in float64 and settled exactly.
   All-pairs: a ``spark.range`` of row blocks (``--block-size`` rows): each task computes its rows
   against every later column (the upper triangle), filtered inside each tile and streamed as Arrow
   batches. A task holds the matrix and one tile, never N x N.
3. The tile tasks write the edges themselves, Arrow straight to Parquet (``EdgeFiles``: files of at
   most ``--max-records-per-file`` rows, named by task and sequence so that a retried attempt writes
   the same files, each put in place whole) and report the files to the driver, which checks them
   against the folder and the footers; then the gate, the publish of edges and rejects, and the report.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyspark.sql import SparkSession
from pyspark.sql.pandas.types import to_arrow_schema

from jobs.common import outputs, storage
from jobs.common.cli import JobError, job_parser, positive_int, reports_root, run
from jobs.common.quality import (
    ROWS_IN,
    ROWS_REJECTED,
    SIMILARITY_EDGES,
    TOP_K,
    add_quality_args,
    run_gate,
    thresholds_from_args,
)
from jobs.common.report import Funnel, write_report
from jobs.common.spark import get_spark, task_slots
from jobs.transforms.similarity import all_pairs_edge_files, topk_edge_files
from schemas import embeddings as E
from schemas import similarity as S
from udfs.similarity import checks, pairs, tiles

LOG = logging.getLogger("stylegraph.similarity")

STAGE = "similarity"
APP_NAME = "stylegraph-similarity"
DEFAULT_TOP_K = 10
DEFAULT_BLOCK_SIZE = 2048
DEFAULT_MAX_RECORDS_PER_FILE = 5_000_000
DEVICES = ("auto", "cpu", "cuda")
SINK_PARQUET = "parquet"
SINK_COUNT = "count"  # compute every edge, write none (benchmarks, sizing runs)
SINKS = (SINK_PARQUET, SINK_COUNT)
CHECKED = "checked"
MIN_VALID_PRODUCTS = 2
FACT_THREADS = 4
# A tile is block_size rows x (block_size * COLUMN_BLOCKS_PER_TILE) columns: wide tiles keep the
# per-tile selection and merge overhead small against the product itself.
COLUMN_BLOCKS_PER_TILE = 4
TOPK_TASKS_PER_SLOT = 2
PART_FILE = "part-00000.parquet"  # the check's small outputs: one file each, written on the driver
REJECT_ARROW_SCHEMA = to_arrow_schema(S.REJECT_SCHEMA)  # declared once, in schemas/similarity.py


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse and cross-check the arguments (JobError on a bad combination)."""
    parser = job_parser("similarity", "Exact top-k or all-pairs similarity between product embeddings.")
    parser.add_argument("--input", required=True, help="embeddings Parquet (EMBEDDING_SCHEMA)")
    parser.add_argument("--output", required=True, help="root of similarity/ and rejects/similarity/")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--top-k", type=positive_int, help="keep the K closest products of each product")
    mode.add_argument("--all-pairs", action="store_true", help="every pair of products (filtered)")
    parser.add_argument(
        "--min-score", type=float, default=None,
        help="all-pairs, cosine/dot: keep pairs with score >= S (applied while tiles are computed)",
    )
    parser.add_argument(
        "--max-distance", type=float, default=None,
        help="all-pairs, l2/exp_l1: keep pairs with score (a distance) <= D",
    )
    parser.add_argument("--metric", choices=S.METRICS, default=S.COSINE)
    parser.add_argument(
        "--directed", action="store_true",
        help="all-pairs: write each pair in both directions (default: once, src < dst)",
    )
    parser.add_argument("--block-size", type=positive_int, default=DEFAULT_BLOCK_SIZE,
                        help="tile side: top-k tiles are N x N over pairs of 4N-row blocks, "
                        "all-pairs tiles N x 4N")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="auto: the task's GPU when it has one, else CPU")
    parser.add_argument("--threads-per-task", type=positive_int, default=None,
                        help="torch CPU threads per task (default: spark.task.cpus)")
    parser.add_argument("--parallelism", type=positive_int, default=None,
                        help="tile tasks (default: top-k 2 per task slot, all-pairs one per row block)")
    parser.add_argument("--max-records-per-file", type=positive_int, default=DEFAULT_MAX_RECORDS_PER_FILE)
    parser.add_argument("--sink", choices=SINKS, default=SINK_PARQUET,
                        help="count: compute and count the edges, publish nothing")
    add_quality_args(parser)
    args = parser.parse_args(argv)
    higher = S.HIGHER_IS_CLOSER[args.metric]
    if not args.all_pairs and (args.min_score is not None or args.max_distance is not None or args.directed):
        raise JobError("--min-score, --max-distance and --directed apply to --all-pairs only")
    if args.min_score is not None and not higher:
        raise JobError(f"--min-score is for cosine/dot; {args.metric} is a distance: use --max-distance")
    if args.max_distance is not None and higher:
        raise JobError(f"--max-distance is for l2/exp_l1; {args.metric} is a similarity: use --min-score")
    return args


def read_facts(files: Sequence[str]) -> pa.Table:
    """The facts of every input row (``udfs.similarity.checks.file_facts``), read on the driver, a few
    files at a time in threads (pyarrow and numpy release the GIL).

    On the driver by design: a fact row is the sku, the image path and four small values, and the
    whole matrix they describe must fit every tile task anyway (50,000 products: about 5 MB of facts); a
    Spark job for it cost more in task starts than the reading itself (checks 0.2 s in the job's log of
    the bench run, 1.4-1.9 s as Spark stages before).
    """

    def facts_of(uri: str) -> pa.Table:
        try:
            return checks.file_facts(uri)
        except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
            raise JobError(f"{uri} is not a readable Parquet file: {error}") from error

    with concurrent.futures.ThreadPoolExecutor(max_workers=min(len(files), FACT_THREADS)) as pool:
        return pa.concat_tables(list(pool.map(facts_of, files)))


def stage_checks(facts: pa.Table, reasons: pa.Array, checked_uri: str) -> tuple[str, str]:
    """Stage the check's verdicts: the valid skus (what the tile tasks read) and the rejected rows
    (``REJECT_SCHEMA``, the rejects dataset; empty when none). Returns (valid uri, rejects uri)."""
    valid_uri = storage.join(checked_uri, S.CHECKED_VALID)
    rejects_uri = storage.join(checked_uri, S.CHECKED_REJECTED)
    valid = pa.table({E.SKU: pc.filter(facts.column(E.SKU), pc.is_null(reasons))})
    storage.write_parquet(valid, storage.join(valid_uri, PART_FILE))
    rejected = pc.and_(pc.is_valid(reasons), pc.invert(pc.is_in(reasons, pa.array(S.DROPPED_REASONS))))
    with_reason = facts.append_column(S.REASON, reasons).filter(rejected)
    rejects = with_reason.select(REJECT_ARROW_SCHEMA.names).cast(REJECT_ARROW_SCHEMA)
    storage.write_parquet(rejects, storage.join(rejects_uri, PART_FILE))
    return valid_uri, rejects_uri


def reason_counts(reasons: pa.Array) -> dict[str | None, int]:
    """Rows per reason (None = valid)."""
    counted = pc.value_counts(reasons)
    return dict(zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist(), strict=True))


def check_edge_files(staged_edges: str, written: list[tuple[str | None, int]], schema: pa.Schema) -> None:
    """The staged edge folder holds exactly the files the tasks reported, with their rows (footers);
    no edge at all: one empty file of ``schema``, so that the dataset exists with its columns.

    Raises:
        RuntimeError: a reported file is missing, an unreported one is there, or the rows differ.
    """
    found = sorted(uri.rsplit("/", 1)[-1] for uri in storage.list_files(staged_edges))
    reported = sorted(name for name, _ in written if name is not None)
    if found != reported:
        raise RuntimeError(f"{staged_edges}: files {found} on storage, the tasks reported {reported}")
    rows = sum(n for name, n in written if name is not None)
    if storage.parquet_rows(staged_edges) != rows:
        raise RuntimeError(f"{staged_edges}: the footers count other than the {rows} rows the tasks wrote")
    if not reported:
        storage.write_parquet(schema.empty_table(), storage.join(staged_edges, PART_FILE))


def final_folders(args: argparse.Namespace) -> tuple[str, str]:
    """The partitions a run publishes: (edges, rejects) of the run date."""
    return (
        storage.partition_uri(args.output, STAGE, args.run_date),
        storage.partition_uri(args.output, f"rejects/{STAGE}", args.run_date),
    )


def embedding_type(uri: str) -> pa.DataType:
    """The Arrow type of a Parquet file's ``embedding`` column, from its footer."""
    fs, path = storage.filesystem(uri)
    with fs.open_input_file(path) as handle:
        return pq.ParquetFile(handle).schema_arrow.field(E.EMBEDDING).type


def check_embedding_types(files: Sequence[str]) -> None:
    """Every file stores ``embedding`` as a list of floats, the same float type in all of them.

    Raises:
        JobError: naming the first file that stores it otherwise (a string, a mix of float and double).
    """
    first: pa.DataType | None = None
    for uri in files:
        found = embedding_type(uri)
        is_floats = (pa.types.is_list(found) or pa.types.is_large_list(found)) and pa.types.is_floating(
            found.value_type
        )
        if not is_floats:
            raise JobError(f"{uri}: column {E.EMBEDDING} is {found}, expected a list of float")
        if first is not None and found != first:
            raise JobError(
                f"{uri}: column {E.EMBEDDING} is {found} but {files[0]} stores {first}: "
                "every input file must use the same float type"
            )
        first = found


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the similarity job; returns the run report."""
    started_at = time.time()
    args = parse_args(argv)
    if not storage.exists(args.input):
        raise JobError(f"--input {args.input} does not exist")
    outputs.check_output(
        STAGE,
        args.output,
        inputs={"--input": args.input},
        replaces=final_folders(args) if args.sink == SINK_PARQUET else (),
        report_dir=reports_root(args),
    )
    spark = get_spark(APP_NAME)
    _, staging = storage.start_staging(args.output, STAGE)
    try:
        return _run(spark, args, staging, started_at)
    finally:
        storage.finish_staging(staging)


def _run(spark: SparkSession, args: argparse.Namespace, staging: str, started_at: float) -> dict[str, Any]:
    metric = args.metric
    files = storage.list_files(args.input, suffixes=(".parquet",))
    if not files:
        raise JobError(f"--input {args.input} holds no Parquet files")
    for uri in files:
        try:
            missing = checks.missing_fact_columns(uri)
        except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
            raise JobError(f"{uri} is not a readable Parquet file: {error}") from error
        if missing:
            raise JobError(f"{uri} has no column(s) {missing}: not the embed job's output")
    check_embedding_types(files)
    facts = read_facts(files)
    expected_dim = checks.expected_dimension(facts)
    reasons = checks.rejection_reasons(facts, expected_dim=expected_dim, metric=metric)
    valid_uri, staged_rejects = stage_checks(facts, reasons, storage.join(staging, CHECKED))
    counts = reason_counts(reasons)
    LOG.info("checked, expected length %d: %s (%.1fs)", expected_dim, counts, time.time() - started_at)
    products = counts.pop(None, 0)
    rows_in = products + sum(counts.values())
    if products < MIN_VALID_PRODUCTS:
        raise JobError(
            f"{args.input}: {products} valid embedding(s) of {rows_in} rows; similarity needs at least "
            f"{MIN_VALID_PRODUCTS} (left out: {counts})"
        )
    block_size = args.block_size
    if args.all_pairs:
        blocks = math.ceil(products / block_size)
        tasks = blocks
    else:  # block pairs of COLUMN_BLOCKS_PER_TILE x block_size rows, tiles of block_size
        blocks = math.ceil(products / (block_size * COLUMN_BLOCKS_PER_TILE))
        tasks = len(pairs.block_pairs(blocks))
    # Top-k: a few runs of pairs per slot (a Python task took ~0.2 s to start in a logged run; block_pairs
    # orders the pairs so that contiguous runs carry equal work); all-pairs: one task per row block
    # (their work shrinks block by block; many tasks balance it).
    default_tasks = tasks if args.all_pairs else TOPK_TASKS_PER_SLOT * task_slots(spark)
    partitions = min(tasks, args.parallelism or default_tasks)
    blocks_df = spark.range(0, tasks, 1, numPartitions=partitions)
    merge_tasks = None if args.all_pairs else min(blocks, task_slots(spark))
    staged_edges = storage.join(staging, STAGE)
    tile_options = {
        "input_uri": args.input,
        "valid_uri": valid_uri,
        "metric": metric,
        "block_size": block_size,
        "column_block": block_size * COLUMN_BLOCKS_PER_TILE,
        "device": args.device,
        "threads": args.threads_per_task,
        "output": staged_edges if args.sink == SINK_PARQUET else None,
        "max_rows_per_file": args.max_records_per_file,
    }
    if args.all_pairs:
        written_df = blocks_df.transform(
            all_pairs_edge_files,
            min_score=args.min_score,
            max_distance=args.max_distance,
            directed=args.directed,
            **tile_options,
        )
    else:
        written_df = blocks_df.transform(
            topk_edge_files,
            k=args.top_k,
            pair_block=block_size * COLUMN_BLOCKS_PER_TILE,
            blocks=blocks,
            merge_tasks=merge_tasks,
            **{name: value for name, value in tile_options.items() if name != "column_block"},
        )

    LOG.info("tiles: %d products, %d blocks, %d units in %d tasks", products, blocks, tasks, partitions)
    written = [(row[S.EDGE_FILE], row[S.EDGE_ROWS]) for row in written_df.collect()]  # a row per file
    edges = sum(rows for _, rows in written)
    if args.sink == SINK_PARQUET:
        check_edge_files(
            staged_edges, written, tiles.ALL_PAIRS_ARROW_SCHEMA if args.all_pairs else tiles.TOPK_ARROW_SCHEMA
        )
    LOG.info("edges %s: %d (%.1fs)", args.sink, edges, time.time() - started_at)

    # Staged and checked -> publish.
    if not args.all_pairs:
        expected_edges = products * min(args.top_k, products - 1)
        if edges != expected_edges:
            raise RuntimeError(f"top-k wrote {edges} edges, expected {expected_edges}")
    if args.sink == SINK_PARQUET:
        run_gate(
            STAGE,
            {SIMILARITY_EDGES: spark.read.parquet(storage.spark_path(staged_edges))},
            reports_root=reports_root(args),
            run_date=args.run_date,
            thresholds=thresholds_from_args(args),
            context={
                TOP_K: None if args.all_pairs else args.top_k,
                ROWS_IN: rows_in,
                ROWS_REJECTED: sum(n for reason, n in counts.items() if reason not in S.DROPPED_REASONS),
            },
        )
    final_edges, final_rejects = final_folders(args)
    if args.sink == SINK_PARQUET:
        outputs.mark_root(STAGE, args.output)
        storage.publish(staged_edges, final_edges)
        storage.publish(staged_rejects, final_rejects)

    dropped = {reason: n for reason, n in counts.items() if reason in S.DROPPED_REASONS}
    rejected = {reason: n for reason, n in counts.items() if reason and reason not in S.DROPPED_REASONS}
    details = {
        "metric": metric,
        "higher_is_closer": S.HIGHER_IS_CLOSER[metric],
        "mode": S.MODE_ALL_PAIRS if args.all_pairs else S.MODE_TOPK,
        "k": None if args.all_pairs else args.top_k,
        "min_score": args.min_score,
        "max_distance": args.max_distance,
        "directed": args.directed or not args.all_pairs,
        "embedding_dim": expected_dim,
        "products": products,
        "edges": int(edges),
        "block_size": block_size,
        "row_blocks": blocks,
        "tile_units": tasks,
        "tile_tasks": partitions,
        "merge_tasks": merge_tasks,
        "device": args.device,
        "sink": args.sink,
        "input": args.input,
        "output": final_edges if args.sink == SINK_PARQUET else None,
        "rejects": final_rejects if args.sink == SINK_PARQUET else None,
    }
    funnel = Funnel(
        rows_in=rows_in, rows_out=products, rejected_by_reason=rejected, dropped_by_reason=dropped
    )
    return write_report(
        reports_root(args), STAGE, args.run_date, funnel, started_at=started_at, details=details
    )


if __name__ == "__main__":
    raise SystemExit(run(main))
