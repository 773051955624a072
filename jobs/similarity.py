"""Exact visual similarity between products: top-k neighbours per product, or all pairs.

    python -m jobs.similarity --input W/style/embeddings/dt=D --output W/style --run-date D \
        (--top-k 10 | --all-pairs [--min-score S | --max-distance D]) [--metric cosine|dot|l2|exp_l1] \
        [--directed] [--block-size 2048] [--device auto|cpu|cuda]

Reads the embed job's Parquet (``schemas.embeddings.EMBEDDING_SCHEMA``), or any Parquet with ``sku`` and
``embedding`` (a list of float or double; without ``status`` every row counts as "ok"). Writes
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
   Top-k: a ``spark.range`` of block pairs (equal blocks of at most ``4 x --block-size`` rows, all
   ``(a, b)``, ``a <= b``) drives ``mapInArrow``: each task multiplies one pair in ``--block-size``
   square tiles and keeps, for the rows of both blocks, their float32 candidates among the other block (each
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
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyspark.sql import SparkSession
from pyspark.sql.pandas.types import to_arrow_schema

from jobs.common import quality_pass, storage
from jobs.common.cli import JobError, job_parser, positive_int
from jobs.common.cli import run as run_job
from jobs.common.quality import (
    ROWS_IN,
    ROWS_REJECTED,
    SIMILARITY_EDGES,
    TOP_K,
    WrittenCounts,
    add_quality_args,
)
from jobs.common.report import Funnel
from jobs.common.run import RunSpec, StagedRun
from jobs.common.spark import start_spark, task_slots
from jobs.transforms.similarity import all_pairs_edge_files, topk_edge_files
from schemas import embeddings as embeddings_schema
from schemas import similarity as similarity_schema
from schemas.quality_terms import ExpectationSpec
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
CHECKED = "checked"  # scratch folder of the check's verdicts in the run's staging
FACT_INPUT = "input"  # scratch folder of an input copied with the embed job's columns
REJECTS = f"rejects/{STAGE}"
REQUIRED_COLUMNS = (embeddings_schema.SKU, embeddings_schema.EMBEDDING)
MIN_VALID_PRODUCTS = 2
FACT_THREADS = 4
# A tile is block_size rows x (block_size * COLUMN_BLOCKS_PER_TILE) columns: wide tiles keep the
# per-tile selection and merge overhead small against the product itself.
COLUMN_BLOCKS_PER_TILE = 4
TOPK_TASKS_PER_SLOT = 2
PART_FILE = "part-00000.parquet"  # the check's small outputs: one file each, written on the driver
# Declared once, in schemas/similarity.py.
REJECT_ARROW_SCHEMA = to_arrow_schema(similarity_schema.REJECT_SCHEMA)


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
    parser.add_argument("--metric", choices=similarity_schema.METRICS, default=similarity_schema.COSINE)
    parser.add_argument(
        "--directed", action="store_true",
        help="all-pairs: write each pair in both directions (default: once, src < dst)",
    )
    parser.add_argument("--block-size", type=positive_int, default=DEFAULT_BLOCK_SIZE,
                        help="tile side: top-k tiles are N x N over pairs of equal blocks of up to 4N "
                        "rows, all-pairs tiles N x 4N")
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
    higher = similarity_schema.HIGHER_IS_CLOSER[args.metric]
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


def stage_checks(facts: pa.Table, reasons: pa.Array, checked_uri: str, rejects_uri: str) -> str:
    """Stage the check's verdicts: the valid skus (what the tile tasks read) under ``checked_uri`` and
    the rejected rows (``REJECT_SCHEMA``, the rejects dataset; empty when none) at ``rejects_uri``.
    Returns the valid skus' folder."""
    sku, reason = embeddings_schema.SKU, similarity_schema.REASON
    valid_uri = storage.join(checked_uri, similarity_schema.CHECKED_VALID)
    valid = pa.table({sku: pc.filter(facts.column(sku), pc.is_null(reasons))})
    storage.write_parquet(valid, storage.join(valid_uri, PART_FILE))
    is_dropped = pc.is_in(reasons, pa.array(similarity_schema.DROPPED_REASONS))
    rejected = pc.and_(pc.is_valid(reasons), pc.invert(is_dropped))
    with_reason = facts.append_column(reason, reasons).filter(rejected)
    rejects = with_reason.select(REJECT_ARROW_SCHEMA.names).cast(REJECT_ARROW_SCHEMA)
    storage.write_parquet(rejects, storage.join(rejects_uri, PART_FILE))
    return valid_uri


def reason_counts(reasons: pa.Array) -> dict[str | None, int]:
    """Rows per reason (None = valid)."""
    counted = pc.value_counts(reasons)
    return dict(zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist(), strict=True))


def check_edge_files(staged_edges: str, written: list[tuple[str | None, int]], schema: pa.Schema) -> None:
    """The staged edge folder holds exactly the files the tasks reported, each with its rows (footers);
    no edge at all: one empty file of ``schema``, so that the dataset exists with its columns.

    Raises:
        RuntimeError: a reported file is missing, an unreported one is there, or a file's rows differ.
    """
    found = sorted(uri.rsplit("/", 1)[-1] for uri in storage.list_files(staged_edges))
    reported = sorted(name for name, _ in written if name is not None)
    if found != reported:
        raise RuntimeError(f"{staged_edges}: files {found} on storage, the tasks reported {reported}")
    footers = {uri.rsplit("/", 1)[-1]: n for uri, n in storage.parquet_file_rows(staged_edges).items()}
    differing = sorted(name for name, n in written if name is not None and footers[name] != n)
    if differing:
        raise RuntimeError(f"{staged_edges}: the footers of {differing} count other rows than reported")
    if not reported:
        storage.write_parquet(schema.empty_table(), storage.join(staged_edges, PART_FILE))


def embedding_type(uri: str) -> pa.DataType:
    """The Arrow type of a Parquet file's ``embedding`` column, from its footer."""
    fs, path = storage.filesystem(uri)
    with fs.open_input_file(path) as handle:
        return pq.ParquetFile(handle).schema_arrow.field(embeddings_schema.EMBEDDING).type


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
            raise JobError(
                f"{uri}: column {embeddings_schema.EMBEDDING} is {found}, expected a list of float"
            )
        if first is not None and found != first:
            raise JobError(
                f"{uri}: column {embeddings_schema.EMBEDDING} is {found} but {files[0]} stores {first}: "
                "every input file must use the same float type"
            )
        first = found


@dataclass(frozen=True)
class SimilaritySpec:
    """What a similarity run computes and how it spreads the work (the parsed flags, checked)."""

    input: str
    metric: str
    top_k: int | None
    min_score: float | None
    max_distance: float | None
    is_directed: bool
    block_size: int
    device: str
    threads_per_task: int | None
    parallelism: int | None
    max_records_per_file: int
    sink: str

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SimilaritySpec:
        return cls(
            input=args.input,
            metric=args.metric,
            top_k=None if args.all_pairs else args.top_k,
            min_score=args.min_score,
            max_distance=args.max_distance,
            is_directed=args.directed,
            block_size=args.block_size,
            device=args.device,
            threads_per_task=args.threads_per_task,
            parallelism=args.parallelism,
            max_records_per_file=args.max_records_per_file,
            sink=args.sink,
        )

    @property
    def is_all_pairs(self) -> bool:
        return self.top_k is None

    @property
    def is_publishing(self) -> bool:
        return self.sink == SINK_PARQUET


@dataclass(frozen=True)
class CheckedInput:
    """The checked input: the Parquet the tile tasks read, the valid skus, and rows per reason."""

    input_uri: str
    valid_uri: str
    expected_dim: int
    left_out: dict[str, int]  # rows per reason, rejected and dropped
    products: int

    @property
    def rows_in(self) -> int:
        return self.products + sum(self.left_out.values())

    def funnel(self) -> Funnel:
        dropped_reasons = similarity_schema.DROPPED_REASONS
        dropped = {reason: n for reason, n in self.left_out.items() if reason in dropped_reasons}
        rejected = {reason: n for reason, n in self.left_out.items() if reason not in dropped_reasons}
        return Funnel(self.rows_in, self.products, rejected_by_reason=rejected, dropped_by_reason=dropped)


@dataclass(frozen=True)
class TilePlan:
    """How the tiles are cut: row blocks, units of work, Spark tasks, and merge tasks (top-k)."""

    blocks: int
    units: int
    tasks: int
    merge_tasks: int | None
    pair_block: int | None = None  # top-k: rows per block of a block pair


def input_files(input_uri: str) -> list[str]:
    """The input's Parquet files, each with the columns the job needs (footers only).

    Raises:
        JobError: no Parquet file, one that is not readable Parquet, or one without ``sku`` or
            ``embedding`` (naming the file).
    """
    files = storage.list_files(input_uri, suffixes=(".parquet",))
    if not files:
        raise JobError(f"--input {input_uri} holds no Parquet files")
    for uri in files:
        missing = [column for column in REQUIRED_COLUMNS if column not in parquet_columns(uri)]
        if missing:
            raise JobError(f"{uri} has no column(s) {missing}: similarity needs {list(REQUIRED_COLUMNS)}")
    check_embedding_types(files)
    return files


def parquet_columns(uri: str) -> list[str]:
    """The column names of a Parquet file, from its footer (JobError when it is not readable Parquet)."""
    fs, path = storage.filesystem(uri)
    try:
        with fs.open_input_file(path) as handle:
            return list(pq.ParquetFile(handle).schema_arrow.names)
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise JobError(f"{uri} is not a readable Parquet file: {error}") from error


def with_fact_columns(files: Sequence[str], input_uri: str, staged_uri: str) -> str:
    """The Parquet the checks and the tile tasks read: the input itself when every file has the embed
    job's columns; else a staged copy where a missing ``status`` is "ok" and a missing ``image_path``
    null (files from elsewhere: only ``sku`` and ``embedding`` are required)."""
    if all(not checks.missing_fact_columns(uri) for uri in files):
        return input_uri
    for number, uri in enumerate(files):
        fs, path = storage.filesystem(uri)
        table = pq.read_table(path, filesystem=fs)
        rows = table.num_rows
        if embeddings_schema.STATUS not in table.column_names:
            table = table.append_column(
                embeddings_schema.STATUS, pa.array([embeddings_schema.STATUS_OK] * rows, pa.string())
            )
        if embeddings_schema.IMAGE_PATH not in table.column_names:
            table = table.append_column(embeddings_schema.IMAGE_PATH, pa.nulls(rows, pa.string()))
        storage.write_parquet(table, storage.join(staged_uri, f"part-{number:05d}.parquet"))
    LOG.info("input without status or image_path: %d file(s) copied with them to %s", len(files), staged_uri)
    return staged_uri


def check_input(spec: SimilaritySpec, run: StagedRun) -> CheckedInput:
    """Check every input row on the driver and stage the verdicts (valid skus, rejects dataset).

    Raises:
        JobError: a bad input file, or fewer than :data:`MIN_VALID_PRODUCTS` valid embeddings.
    """
    files = input_files(spec.input)
    input_uri = with_fact_columns(files, spec.input, run.staged(FACT_INPUT))
    facts = read_facts(storage.list_files(input_uri, suffixes=(".parquet",)))
    expected_dim = checks.expected_dimension(facts)
    reasons = checks.rejection_reasons(facts, expected_dim=expected_dim, metric=spec.metric)
    valid_uri = stage_checks(facts, reasons, run.staged(CHECKED), run.staged(REJECTS))
    counts = reason_counts(reasons)
    LOG.info("checked, expected length %d: %s", expected_dim, counts)
    products = counts.pop(None, 0)
    left_out = {str(reason): n for reason, n in counts.items()}
    if products < MIN_VALID_PRODUCTS:
        raise JobError(
            f"{spec.input}: {products} valid embedding(s) of {products + sum(left_out.values())} rows; "
            f"similarity needs at least {MIN_VALID_PRODUCTS} (left out: {counts})"
        )
    return CheckedInput(input_uri, valid_uri, expected_dim, left_out, products)


def plan_tiles(spark: SparkSession, spec: SimilaritySpec, products: int) -> TilePlan:
    """Blocks and tasks for ``products`` valid rows.

    Top-k: a few runs of block pairs per slot (a Python task took ~0.2 s to start in a logged run;
    block_pairs orders the pairs so that contiguous runs carry equal work); all-pairs: one task per row
    block (their work shrinks block by block; many tasks balance it).
    """
    if spec.is_all_pairs:
        blocks = math.ceil(products / spec.block_size)
        units = blocks
        default_tasks = units
        pair_block = None
    else:  # block pairs of up to COLUMN_BLOCKS_PER_TILE x block_size rows, tiles of block_size
        # Blocks of equal rows (not full blocks and a short last one): block_pairs balances the runs of
        # pairs the tasks take by their number of pairs, which is their work only when blocks are equal.
        pair_block = math.ceil(products / math.ceil(products / (spec.block_size * COLUMN_BLOCKS_PER_TILE)))
        blocks = math.ceil(products / pair_block)
        units = len(pairs.block_pairs(blocks))
        default_tasks = TOPK_TASKS_PER_SLOT * task_slots(spark)
    merge_tasks = None if spec.is_all_pairs else min(blocks, task_slots(spark))
    return TilePlan(blocks, units, min(units, spec.parallelism or default_tasks), merge_tasks, pair_block)


def write_edges(
    spark: SparkSession,
    spec: SimilaritySpec,
    checked: CheckedInput,
    plan: TilePlan,
    staged_edges: str,
    expectations: tuple[ExpectationSpec, ...] | None,
) -> tuple[list[tuple[str | None, int]], tuple[dict[str, Any], ...]]:
    """Run the tile tasks (they write the edge files under ``staged_edges`` unless the sink is count,
    each file's edges counted for the gate's ``expectations`` unless None); returns
    ``(file name or None, rows)`` per file the tasks report, and the files' counts for the gate."""
    blocks_df = spark.range(0, plan.units, 1, numPartitions=plan.tasks)
    tile_options = {
        "input_uri": checked.input_uri,
        "valid_uri": checked.valid_uri,
        "metric": spec.metric,
        "block_size": spec.block_size,
        "device": spec.device,
        "threads": spec.threads_per_task,
        "output": staged_edges if spec.is_publishing else None,
        "max_rows_per_file": spec.max_records_per_file,
        "expectations": expectations,
    }
    column_block = spec.block_size * COLUMN_BLOCKS_PER_TILE
    if spec.is_all_pairs:
        written_df = blocks_df.transform(
            all_pairs_edge_files,
            min_score=spec.min_score,
            max_distance=spec.max_distance,
            directed=spec.is_directed,
            column_block=column_block,
            **tile_options,
        )
    else:
        written_df = blocks_df.transform(
            topk_edge_files,
            k=spec.top_k,
            pair_block=plan.pair_block or column_block,
            blocks=plan.blocks,
            merge_tasks=plan.merge_tasks,
            **tile_options,
        )
    LOG.info("tiles: %d products, %d blocks, %d units in %d tasks", checked.products, plan.blocks,
             plan.units, plan.tasks)
    edge_file, edge_rows = similarity_schema.EDGE_FILE, similarity_schema.EDGE_ROWS
    rows = written_df.collect()  # a row per file
    counts = []
    for row in rows:
        if row[similarity_schema.EDGE_METRICS] is not None:
            counted = json.loads(row[similarity_schema.EDGE_METRICS])
            if counted[quality_pass.ROWS] != row[edge_rows]:  # each file's counts are of its own rows
                raise RuntimeError(f"{row[edge_file]}: counted {counted[quality_pass.ROWS]} rows for the "
                                   f"gate, wrote {row[edge_rows]}")
            counts.append(counted)
    return [(row[edge_file], row[edge_rows]) for row in rows], tuple(counts)


def check_edges(
    spec: SimilaritySpec,
    products: int,
    written: list[tuple[str | None, int]],
    staged_edges: str,
    counts: Sequence[dict[str, Any]] = (),
) -> int:
    """The staged edges are what the tasks reported, the gate's counts (when made) cover every one of
    them, and for top-k there are K per product; returns the edges."""
    edges = sum(rows for _, rows in written)
    files = [name for name, _ in written if name is not None]
    if counts and len(counts) != len(files):
        raise RuntimeError(f"{len(counts)} files counted for the gate, {len(files)} written")
    if spec.is_publishing:
        schema = tiles.ALL_PAIRS_ARROW_SCHEMA if spec.is_all_pairs else tiles.TOPK_ARROW_SCHEMA
        check_edge_files(staged_edges, written, schema)
    LOG.info("edges %s: %d", spec.sink, edges)
    if spec.top_k is not None:
        expected_edges = products * min(spec.top_k, products - 1)
        if edges != expected_edges:
            raise RuntimeError(f"top-k wrote {edges} edges, expected {expected_edges}")
    return edges


def report_details(
    spec: SimilaritySpec, checked: CheckedInput, plan: TilePlan, edges: int, finals: dict[str, str]
) -> dict[str, Any]:
    """The report's details beside the funnel."""
    return {
        "metric": spec.metric,
        "higher_is_closer": similarity_schema.HIGHER_IS_CLOSER[spec.metric],
        "mode": similarity_schema.MODE_ALL_PAIRS if spec.is_all_pairs else similarity_schema.MODE_TOPK,
        "k": spec.top_k,
        "min_score": spec.min_score,
        "max_distance": spec.max_distance,
        "directed": spec.is_directed or not spec.is_all_pairs,
        "embedding_dim": checked.expected_dim,
        "products": checked.products,
        "edges": int(edges),
        "block_size": spec.block_size,
        "row_blocks": plan.blocks,
        "pair_block_rows": plan.pair_block,
        "tile_units": plan.units,
        "tile_tasks": plan.tasks,
        "merge_tasks": plan.merge_tasks,
        "device": spec.device,
        "sink": spec.sink,
        "input": spec.input,
        "output": finals.get(STAGE),
        "rejects": finals.get(REJECTS),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the similarity job; returns the run report."""
    args = parse_args(argv)
    spec = SimilaritySpec.from_args(args)
    run = StagedRun(RunSpec.from_args(STAGE, args), [STAGE, REJECTS] if spec.is_publishing else [], log=LOG)
    if not storage.exists(spec.input):
        raise JobError(f"--input {spec.input} does not exist")
    run.check_output(inputs={"--input": spec.input})
    # The JVM starts while the driver checks every input row. It reads none of them: the tile tasks read
    # the vectors in Python, so its compiler is sized for no input (C1 only, jobs.common.spark).
    starting = start_spark(APP_NAME, inputs=[])
    with run:
        checked = check_input(spec, run)
        spark = starting.result()
        run.lap("check")
        plan = plan_tiles(spark, spec, checked.products)
        funnel = checked.funnel()
        context = {TOP_K: spec.top_k, ROWS_IN: funnel.rows_in, ROWS_REJECTED: funnel.rows_rejected}
        expectations = run.suite(SIMILARITY_EDGES, context) if spec.is_publishing else None
        written, counts = write_edges(spark, spec, checked, plan, run.staged(STAGE), expectations)
        edges = check_edges(spec, checked.products, written, run.staged(STAGE), counts)
        run.lap("edges")
        if spec.is_publishing:
            staged_edges = storage.spark_path(run.staged(STAGE))
            run.gate(
                {
                    SIMILARITY_EDGES: WrittenCounts(
                        expectations or (), counts, staged=lambda: spark.read.parquet(staged_edges)
                    )
                },
                context=context,
            )
            run.lap("quality")
            run.publish()
    return run.report(checked.funnel(), report_details(spec, checked, plan, edges, run.finals))


if __name__ == "__main__":
    raise SystemExit(run_job(main))
