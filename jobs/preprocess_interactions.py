"""Interaction logs -> NCF train and test sets.

``python -m jobs.preprocess_interactions --input S/interactions --output W/ncf --run-date D``

Reads the JSON Lines logs of the run date (and ``--lookback-days`` days before it) as text, quarantines
bad lines with a reason under ``<output>/rejects/dt=D/``, drops repeated ``event_id``s, collapses events
to one implicit positive per (user, item), keeps the (user, item) k-core, maps ids to contiguous integers
with maps under ``<output>/index/{users,items}/`` that later runs extend but never renumber, splits
leave-one-out (or chronologically), samples negatives and writes Parquet ``user_idx int, item_idx int,
label float`` to ``<output>/train/dt=D/`` and ``<output>/test/dt=D/``. Everything is staged first and
published only when the run has succeeded; the report goes to ``<report root>/preprocess/dt=D.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.common import cli, storage
from jobs.common.cli import JobError
from jobs.common.quality import (
    LEAVE_ONE_OUT,
    N_ITEMS,
    N_USERS,
    ROWS_IN,
    ROWS_REJECTED,
    TEST,
    TEST_NEGATIVES,
    TRAIN,
    add_quality_args,
    read_back,
)
from jobs.common.report import Funnel, check_funnel
from jobs.common.run import RunSpec, StagedRun
from jobs.common.spark import get_spark
from jobs.transforms import interactions as tx
from schemas import interactions as interactions_schema

LOG = logging.getLogger("stylegraph.preprocess")

STAGE = "preprocess"
APP_NAME = "stylegraph-preprocess-interactions"
DUPLICATE_REASON = "duplicate_event_id"
INPUT_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")
# Outputs under --output, each staged then published whole.
TRAIN_DIR = "train"
TEST_DIR = "test"
REJECTS_DIR = "rejects"
USERS_INDEX_DIR = "index/users"
ITEMS_INDEX_DIR = "index/items"
# Published in this order: the index maps first, so that if a later swap fails, a rerun reuses the ids
# already published.
INDEX_DATASETS = (USERS_INDEX_DIR, ITEMS_INDEX_DIR)
DATASETS = (*INDEX_DATASETS, REJECTS_DIR, TRAIN_DIR, TEST_DIR)
SPARK_CONF = {
    # Hostile timestamps must parse to null, not raise Spark 3's "upgrade" exception.
    "spark.sql.legacy.timeParserPolicy": "CORRECTED",
    # The cached frames (the parsed lines, positives, histories) are stored without compression: choosing
    # and applying an encoding per column batch made caching the parsed lines cost half as much again as
    # parsing them, to save 4% of their memory (2 M lines: 46 MB against 48).
    "spark.sql.inMemoryColumnarStorage.compressed": "false",
}
_IS_RUN_DAY = "_is_run_day"
PARSED_COLUMNS = (
    interactions_schema.INPUT_FILE,
    interactions_schema.EVENT_ID,
    interactions_schema.USER_ID,
    interactions_schema.ITEM_ID,
    interactions_schema.EVENT_TS,
    interactions_schema.REASON,
)
# The report names at most this many files the job did not read (it counts them all).
MAX_NAMED_FILES = 20


def build_parser() -> argparse.ArgumentParser:
    parser = cli.job_parser(
        "preprocess_interactions", "interaction logs -> NCF train/test Parquet", run_date_required=True
    )
    parser.add_argument("--input", required=True, help="logs root holding dt=YYYY-MM-DD/ folders")
    parser.add_argument("--output", required=True, help="output root (train/, test/, index/, rejects/)")
    parser.add_argument(
        "--lookback-days",
        type=cli.non_negative_int,
        default=0,
        help="also read this many days before the run date (default 0)",
    )
    parser.add_argument("--min-user-interactions", type=cli.positive_int, default=5)
    parser.add_argument("--min-item-interactions", type=cli.positive_int, default=5)
    parser.add_argument("--train-negatives", type=cli.non_negative_int, default=4)
    parser.add_argument("--test-negatives", type=cli.non_negative_int, default=99)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", choices=interactions_schema.SPLITS, default=interactions_schema.SPLIT_LOO)
    parser.add_argument(
        "--test-fraction",
        type=cli.fraction,
        default=None,
        help="chrono split: share of each user's latest positives in test (0 < f < 1)",
    )
    return add_quality_args(parser)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    is_fraction = args.test_fraction is not None and 0.0 < args.test_fraction < 1.0
    if args.split == interactions_schema.SPLIT_CHRONO and not is_fraction:
        raise JobError(
            "preprocess_interactions: --split chrono needs --test-fraction between 0 and 1 (exclusive)"
        )
    if args.split == interactions_schema.SPLIT_LOO and args.test_fraction is not None:
        raise JobError("preprocess_interactions: --test-fraction only applies to --split chrono")
    return args


class InputFiles(NamedTuple):
    """The log files of a run's window."""

    files: list[str]  # every log file of the window, sorted
    run_day: list[str]  # those of the run date itself
    unread: list[str]  # the window's other files (counted, not read), sorted


def input_files(input_uri: str, run_date: dt.date, lookback_days: int) -> InputFiles:
    """The log files of the window, those of the run date itself, and the window's other files (a
    suffix or case the job does not read: ``PART.JSONL.GZ``, ``.bz2``), which are counted, not read.

    Raises:
        JobError: the input root or the run date's folder is missing, or the run date has no files.
    """
    if not storage.exists(input_uri):
        raise JobError(f"input folder not found: {input_uri}")
    run_day_dir = storage.partition_uri(input_uri, "", run_date)
    if not storage.exists(run_day_dir):
        raise JobError(f"no logs for the run date: {run_day_dir} does not exist")
    days = [run_date - dt.timedelta(days=back) for back in range(lookback_days + 1)]
    files: list[str] = []
    unread: list[str] = []
    run_day_files: list[str] = []
    for day in days:
        day_dir = storage.partition_uri(input_uri, "", day)
        listed = storage.list_files(day_dir)
        day_files = [uri for uri in listed if uri.endswith(INPUT_SUFFIXES)]
        unread += [uri for uri in listed if not uri.endswith(INPUT_SUFFIXES)]
        if day == run_date:
            run_day_files = day_files
        elif not day_files:
            LOG.warning("look-back day missing or empty, skipped: %s", day_dir)
        files.extend(day_files)
    if not run_day_files:
        raise JobError(f"no log files for the run date in {run_day_dir}")
    for uri in unread:
        LOG.warning("not a log file this job reads (suffix must be one of %s), not read: %s",
                    ", ".join(INPUT_SUFFIXES), uri)
    return InputFiles(sorted(files), run_day_files, sorted(unread))


def read_lines(spark: SparkSession, files: Sequence[str]) -> DataFrame:
    """``line, input_file`` for every line of the files (gzip by extension)."""
    return spark.read.text([storage.spark_path(f) for f in files]).select(
        F.col("value").alias(interactions_schema.LINE),
        F.col("_metadata.file_path").alias(interactions_schema.INPUT_FILE),
    )


def raise_unreadable(files: Sequence[str]) -> None:
    """After a failed read: raise JobError naming the first compressed log file that cannot be
    decompressed (Spark's own error often names none); return when every file reads."""
    for uri in files:
        problem = storage.compression_problem(uri)
        if problem:
            raise JobError(f"{uri}: {problem}")


def read_index(spark: SparkSession, uri: str, schema: Any) -> DataFrame:
    """The published id map at ``uri``, or an empty one.

    Both come back with every column nullable (as a Parquet read does), so the first night's output
    schema, and so its bytes, are the same as a rerun's.
    """
    if storage.exists(uri) and storage.list_files(uri):
        return spark.read.schema(schema).parquet(storage.read_path(uri))
    nullable = T.StructType([T.StructField(f.name, f.dataType, True) for f in schema.fields])
    return spark.createDataFrame([], nullable)


@dataclass(frozen=True)
class PreprocessSpec:
    """What a preprocess run reads and how it builds the NCF sets (the parsed flags, checked)."""

    input: str
    lookback_days: int
    min_user_interactions: int
    min_item_interactions: int
    train_negatives: int
    test_negatives: int
    seed: int
    split: str
    test_fraction: float | None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> PreprocessSpec:
        return cls(**{name: getattr(args, name) for name in cls.__dataclass_fields__})

    def parameters(self) -> dict[str, Any]:
        """The run's parameters, as the report records them."""
        return {name: value for name, value in dataclasses.asdict(self).items() if name != "input"}


@dataclass(frozen=True)
class ParsedLines:
    """Every line read, parsed (persisted), with the counts of the read."""

    parsed_df: DataFrame
    lines_read: int
    run_day_lines: int
    rejected: dict[str, int]  # every reject reason, 0 included

    @property
    def valid_lines(self) -> int:
        return self.lines_read - sum(self.rejected.values())


@dataclass(frozen=True)
class Positives:
    """The run's implicit positives before and after the k-core, with their counts."""

    positives_df: DataFrame
    core_df: DataFrame
    n_positives: int
    unique_events: int
    n_core: int
    k_core_rounds: int
    kept_users_df: DataFrame  # ``user_id`` of the users in ``core_df`` (the k-core's last degree list)
    kept_items_df: DataFrame  # ``item_id`` of its items


def _write(df: DataFrame, uri: str) -> None:
    df.write.mode("overwrite").parquet(storage.spark_path(uri))


def parse_lines(spark: SparkSession, run: StagedRun, inputs: InputFiles, input_root: str) -> ParsedLines:
    """Read and parse every line of the window (persisted: only rejected lines keep their text) and
    count them by reason and day.

    Raises:
        JobError: a compressed file that cannot be read (named), or a run date whose logs are empty.
    """
    run_date = run.spec.run_date
    parsed_df = run.persist(
        read_lines(spark, inputs.files)
        .transform(tx.with_parsed_events, run_date=run_date)
        .select(
            F.when(F.col(interactions_schema.REASON).isNotNull(), F.col(interactions_schema.LINE))
            .alias(interactions_schema.LINE),
            *PARSED_COLUMNS,
            F.col(interactions_schema.INPUT_FILE)
            .contains(f"/{storage.partition_name(run_date)}/")
            .alias(_IS_RUN_DAY),
        )
    )
    try:
        by_reason = {
            (row[interactions_schema.REASON], row[_IS_RUN_DAY]): row["count"]
            for row in parsed_df.groupBy(interactions_schema.REASON, _IS_RUN_DAY).count().collect()
        }
    except Exception:
        raise_unreadable(inputs.files)
        raise
    run_day_lines = sum(n for (_, is_run_day), n in by_reason.items() if is_run_day)
    if run_day_lines == 0:
        raise JobError(f"the run date's logs are empty: {storage.partition_uri(input_root, '', run_date)}")
    rejected = {reason: 0 for reason in interactions_schema.REJECT_REASONS}
    for (reason, _), n in by_reason.items():
        if reason is not None:
            rejected[reason] += n
    return ParsedLines(parsed_df, sum(by_reason.values()), run_day_lines, rejected)


def to_positives(run: StagedRun, parsed: ParsedLines, spec: PreprocessSpec) -> Positives:
    """Valid, unique events collapsed to one positive per (user, item), and their k-core.

    Raises:
        JobError: nothing is left after the k-core.
    """
    events_df = parsed.parsed_df.transform(tx.filter_valid).transform(tx.drop_duplicate_events)
    positives_df = run.persist(events_df.transform(tx.to_positives))
    totals = positives_df.agg(
        F.count(F.lit(1)).alias("n"), F.sum(interactions_schema.EVENT_COUNT).alias("events")
    ).first()
    parsed.parsed_df.unpersist()
    run.lap("positives")
    core = tx.filter_k_core(
        positives_df, min_user=spec.min_user_interactions, min_item=spec.min_item_interactions
    )
    core_df = core.core_df
    run.on_exit(core_df.unpersist)
    n_core = core_df.count()
    if n_core == 0:
        raise JobError(
            f"no positives left after the k-core (min users {spec.min_user_interactions}, "
            f"min items {spec.min_item_interactions}) for {run.spec.run_date}"
        )
    run.lap("k_core")
    return Positives(
        positives_df, core_df, int(totals["n"]), int(totals["events"] or 0), n_core, core.rounds,
        core.users_df, core.items_df,
    )


def stage_indices(
    spark: SparkSession, run: StagedRun, positives: Positives
) -> tuple[DataFrame, DataFrame, DataFrame]:
    """Extend the published id maps with tonight's users and items and stage them; returns the maps
    (persisted, one sorted partition each: the joins after read them from memory) and tonight's items.
    Tonight's ids are the k-core's last degree lists: small tables, no pass over the positives."""
    kept_items_df = positives.kept_items_df
    maps = []
    for dataset, schema, id_col, idx_col, kept_df in (
        (USERS_INDEX_DIR, interactions_schema.USER_INDEX_SCHEMA, interactions_schema.USER_ID,
         interactions_schema.USER_IDX, positives.kept_users_df),
        (ITEMS_INDEX_DIR, interactions_schema.ITEM_INDEX_SCHEMA, interactions_schema.ITEM_ID,
         interactions_schema.ITEM_IDX, kept_items_df),
    ):
        index_df = tx.extend_index(
            read_index(spark, run.finals[dataset], schema),
            tx.first_seen(positives.positives_df, kept_df, id_col),
            id_col=id_col,
            idx_col=idx_col,
            run_date=run.spec.run_date,
        )
        # One sorted file per map: they are small next to the events, and a later run reads them whole.
        maps.append(run.persist(index_df.repartition(1).sortWithinPartitions(idx_col)))
    for dataset, index_df in zip((USERS_INDEX_DIR, ITEMS_INDEX_DIR), maps, strict=True):
        _write(index_df, run.staged(dataset))
    run.lap("index")
    return maps[0], maps[1], kept_items_df


def stage_train_and_test(
    spark: SparkSession, run: StagedRun, spec: PreprocessSpec, positives: Positives
) -> dict[str, int]:
    """Map ids, split each user's history and stage the train and test sets; returns the counts."""
    users_index_df, items_index_df, kept_items_df = stage_indices(spark, run, positives)
    # Tonight's items straight from their map (no pass over the positives), cached: small, used by
    # the split and both negative samplers.
    ranks_df = run.persist(
        tx.item_ranks(items_index_df.join(kept_items_df, on=interactions_schema.ITEM_ID, how="left_semi"))
    )
    split_df = run.persist(
        positives.core_df.transform(tx.with_indices, users_index_df, items_index_df)
        .transform(tx.to_user_histories, ranks_df)
        .transform(tx.with_split, split=spec.split, test_fraction=spec.test_fraction)
        # Same rows in the same order on every run: output files are byte-for-byte repeatable.
        # Filled by the train write, read again by the test write and the counts.
        .sortWithinPartitions(interactions_schema.USER_IDX)
    )
    train_df = tx.explode_train_rows(split_df, ranks_df, negatives=spec.train_negatives, seed=spec.seed)
    _write(train_df, run.staged(TRAIN_DIR))
    for frame in (positives.positives_df, positives.core_df, users_index_df, items_index_df):
        frame.unpersist()
    run.lap("split_and_train")
    test_df = tx.explode_test_rows(split_df, ranks_df, negatives=spec.test_negatives, seed=spec.seed)
    _write(test_df, run.staged(TEST_DIR))
    run.lap("test")
    return _output_counts(run, split_df, ranks_df, spec.test_negatives)


def check_staged(staged: dict[str, str], counts: dict[str, int]) -> None:
    """The "staged and checked -> publish" gate: every folder is there and the sets are not both empty."""
    for name, uri in staged.items():
        if not storage.exists(uri):
            raise RuntimeError(f"staged {name} missing at {uri}")
    if counts["train_rows"] + counts["test_rows"] == 0:
        raise RuntimeError("staged train and test sets are both empty")


def gate_context(counts: dict[str, int], spec: PreprocessSpec, funnel: Funnel) -> dict[str, Any]:
    """What the train and test suites need to know of the run."""
    return {
        N_USERS: counts["users_index_size"],
        N_ITEMS: counts["items_index_size"],
        LEAVE_ONE_OUT: spec.split == interactions_schema.SPLIT_LOO,
        TEST_NEGATIVES: spec.test_negatives,
        ROWS_IN: funnel.rows_in,
        ROWS_REJECTED: funnel.rows_rejected,
    }


def to_funnel(parsed: ParsedLines, positives: Positives) -> Funnel:
    duplicates = parsed.valid_lines - positives.unique_events
    return Funnel(
        rows_in=parsed.lines_read,
        rows_out=positives.unique_events,
        rejected_by_reason={k: v for k, v in parsed.rejected.items() if v},
        dropped_by_reason={DUPLICATE_REASON: duplicates} if duplicates else {},
    )


def report_details(
    spec: PreprocessSpec, inputs: InputFiles, parsed: ParsedLines, positives: Positives,
    counts: dict[str, int], finals: dict[str, str],
) -> dict[str, Any]:
    """The report's details beside the funnel."""
    return {
        "lines_read": parsed.lines_read,
        "lines_read_run_date": parsed.run_day_lines,
        "rejected": sum(parsed.rejected.values()),
        "rejected_by_reason": parsed.rejected,
        "duplicates_dropped": parsed.valid_lines - positives.unique_events,
        "valid_events": positives.unique_events,
        "positives": positives.n_positives,
        "events_collapsed_into_positives": positives.unique_events - positives.n_positives,
        "removed_by_k_core": positives.n_positives - positives.n_core,
        "k_core_rounds": positives.k_core_rounds,
        "positives_after_k_core": positives.n_core,
        **counts,
        "parameters": spec.parameters(),
        "input_files": len(inputs.files),
        "unread_files": len(inputs.unread),
        "unread_file_names": inputs.unread[:MAX_NAMED_FILES],
        "outputs": dict(finals),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    cli.configure_logging(args.log_level)
    spec = PreprocessSpec.from_args(args)
    run = StagedRun(RunSpec.from_args(STAGE, args), DATASETS, unpartitioned=INDEX_DATASETS, log=LOG)
    inputs = input_files(spec.input, run.spec.run_date, spec.lookback_days)
    run.check_output(inputs={"--input": spec.input})
    LOG.info("reading %d files (%d of the run date)", len(inputs.files), len(inputs.run_day))
    spark = get_spark(APP_NAME, conf=SPARK_CONF, inputs=inputs.files)
    with run:
        parsed = parse_lines(spark, run, inputs, spec.input)
        run.lap("parse")
        _write(parsed.parsed_df.transform(tx.filter_rejected).coalesce(1), run.staged(REJECTS_DIR))
        run.lap("rejects")
        positives = to_positives(run, parsed, spec)
        counts = stage_train_and_test(spark, run, spec, positives)
        check_staged({name: run.staged(name) for name in DATASETS}, counts)
        funnel = to_funnel(parsed, positives)
        check_funnel(STAGE, funnel)
        run.lap("counts")
        # The gate checks what was written: Spark tasks read the staged files back with Arrow and count
        # the suites' metrics per file (each file holds whole users); Spark's compiled gate reads the
        # Parquet only when those counts do not prove a suite met.
        context = gate_context(counts, spec, funnel)
        staged_sets = {
            name: read_back(spark, run.staged(folder), run.suite(name, context))
            for name, folder in ((TRAIN, TRAIN_DIR), (TEST, TEST_DIR))
        }
        run.gate(staged_sets, context=context, cache_frames=False)
        run.lap("quality")
        run.publish()
    return run.report(funnel, report_details(spec, inputs, parsed, positives, counts, run.finals))


def _output_counts(
    run: StagedRun, split_df: DataFrame, ranks_df: DataFrame, test_negatives: int
) -> dict[str, int]:
    users = split_df.agg(
        F.count(F.lit(1)).alias("users"),
        F.sum(F.when(F.col(tx.N_ITEMS) - F.size(F.col(tx.POS_SET)) < test_negatives, 1).otherwise(0)).alias(
            "short"
        ),
    ).first()
    return {
        "users": int(users["users"]),
        "items": ranks_df.count(),
        "users_short_of_test_negatives": int(users["short"] or 0),
        "train_rows": storage.parquet_rows(run.staged(TRAIN_DIR)),
        "test_rows": storage.parquet_rows(run.staged(TEST_DIR)),
        "users_index_size": storage.parquet_rows(run.staged(USERS_INDEX_DIR)),
        "items_index_size": storage.parquet_rows(run.staged(ITEMS_INDEX_DIR)),
    }


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
