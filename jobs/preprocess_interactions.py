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
import datetime as dt
import logging
import time
from collections.abc import Sequence
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.common import cli, outputs, storage
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
    run_gate,
    thresholds_from_args,
)
from jobs.common.report import Funnel, PhaseClock, check_funnel, write_report
from jobs.common.spark import get_spark
from jobs.transforms import interactions as tx
from schemas import interactions as S

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
SPARK_CONF = {
    # Hostile timestamps must parse to null, not raise Spark 3's "upgrade" exception.
    "spark.sql.legacy.timeParserPolicy": "CORRECTED",
}
_IS_RUN_DAY = "_is_run_day"
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
    parser.add_argument("--split", choices=S.SPLITS, default=S.SPLIT_LOO)
    parser.add_argument(
        "--test-fraction",
        type=cli.fraction,
        default=None,
        help="chrono split: share of each user's latest positives in test (0 < f < 1)",
    )
    return add_quality_args(parser)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.split == S.SPLIT_CHRONO and (args.test_fraction is None or not 0.0 < args.test_fraction < 1.0):
        raise JobError(
            "preprocess_interactions: --split chrono needs --test-fraction between 0 and 1 (exclusive)"
        )
    if args.split == S.SPLIT_LOO and args.test_fraction is not None:
        raise JobError("preprocess_interactions: --test-fraction only applies to --split chrono")
    return args


def input_files(
    input_uri: str, run_date: dt.date, lookback_days: int
) -> tuple[list[str], list[str], list[str]]:
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
    return sorted(files), run_day_files, sorted(unread)


def read_lines(spark: SparkSession, files: Sequence[str]) -> DataFrame:
    """``line, input_file`` for every line of the files (gzip by extension)."""
    return spark.read.text([storage.spark_path(f) for f in files]).select(
        F.col("value").alias(S.LINE), F.col("_metadata.file_path").alias(S.INPUT_FILE)
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


def _write(df: DataFrame, uri: str) -> None:
    df.write.mode("overwrite").parquet(storage.spark_path(uri))


def check_staged(staged: dict[str, str], counts: dict[str, int]) -> None:
    """The "staged and checked -> publish" gate: every folder is there and the sets are not empty.

    The quality gate (great-expectations suites) is called here too, once it exists.
    """
    for name, uri in staged.items():
        if not storage.exists(uri):
            raise RuntimeError(f"staged {name} missing at {uri}")
    if counts["train_rows"] + counts["test_rows"] == 0:
        raise RuntimeError("staged train and test sets are both empty")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    started_at = time.time()
    args = parse_args(argv)
    cli.configure_logging(args.log_level)
    run_date: dt.date = args.run_date
    files, run_day_files, unread_files = input_files(args.input, run_date, args.lookback_days)
    # Index maps first: if a later swap fails, a rerun reuses the ids already published.
    finals = {
        USERS_INDEX_DIR: storage.join(args.output, USERS_INDEX_DIR),
        ITEMS_INDEX_DIR: storage.join(args.output, ITEMS_INDEX_DIR),
        REJECTS_DIR: storage.partition_uri(args.output, REJECTS_DIR, run_date),
        TRAIN_DIR: storage.partition_uri(args.output, TRAIN_DIR, run_date),
        TEST_DIR: storage.partition_uri(args.output, TEST_DIR, run_date),
    }
    outputs.check_output(
        STAGE, args.output, inputs={"--input": args.input}, replaces=finals.values(),
        report_dir=cli.reports_root(args),
    )
    LOG.info("reading %d files (%d of the run date)", len(files), len(run_day_files))

    spark = get_spark(APP_NAME, conf=SPARK_CONF)
    clock = PhaseClock(LOG)
    run_day_marker = f"/dt={run_date.isoformat()}/"
    parsed_df = (
        read_lines(spark, files)
        .transform(tx.with_parsed_events, run_date=run_date)
        # Only rejected lines keep their text: the cache stays narrow.
        .select(
            F.when(F.col(S.REASON).isNotNull(), F.col(S.LINE)).alias(S.LINE),
            S.INPUT_FILE,
            S.EVENT_ID,
            S.USER_ID,
            S.ITEM_ID,
            S.EVENT_TS,
            S.REASON,
            F.col(S.INPUT_FILE).contains(run_day_marker).alias(_IS_RUN_DAY),
        )
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    try:
        by_reason = {
            (row[S.REASON], row[_IS_RUN_DAY]): row["count"]
            for row in parsed_df.groupBy(S.REASON, _IS_RUN_DAY).count().collect()
        }
    except Exception:
        parsed_df.unpersist()
        raise_unreadable(files)
        raise
    lines_read = sum(by_reason.values())
    run_day_lines = sum(n for (_, is_run_day), n in by_reason.items() if is_run_day)
    if run_day_lines == 0:
        parsed_df.unpersist()
        raise JobError(f"the run date's logs are empty: {storage.partition_uri(args.input, '', run_date)}")
    rejected = {reason: 0 for reason in S.REJECT_REASONS}
    for (reason, _), n in by_reason.items():
        if reason is not None:
            rejected[reason] += n
    valid_lines = lines_read - sum(rejected.values())
    clock.lap("parse")

    _, staging_root = storage.start_staging(args.output, STAGE)
    staged = {
        name: storage.join(staging_root, name)
        for name in (REJECTS_DIR, USERS_INDEX_DIR, ITEMS_INDEX_DIR, TRAIN_DIR, TEST_DIR)
    }
    # Frames this run caches, released however it ends: the session may outlive the job (tests, Glue).
    cached: list[DataFrame] = [parsed_df]
    try:
        _write(parsed_df.transform(tx.filter_rejected).coalesce(1), staged[REJECTS_DIR])
        clock.lap("rejects")

        events_df = parsed_df.transform(tx.filter_valid).transform(tx.drop_duplicate_events)
        positives_df = events_df.transform(tx.to_positives).persist(StorageLevel.MEMORY_AND_DISK)
        cached.append(positives_df)
        totals = positives_df.agg(F.count(F.lit(1)).alias("n"), F.sum(S.EVENT_COUNT).alias("events")).first()
        parsed_df.unpersist()
        n_positives = int(totals["n"])
        unique_events = int(totals["events"] or 0)
        duplicates = valid_lines - unique_events
        clock.lap("positives")

        core_df, rounds = tx.filter_k_core(
            positives_df, min_user=args.min_user_interactions, min_item=args.min_item_interactions
        )
        cached.append(core_df)
        n_core = core_df.count()
        if n_core == 0:
            raise JobError(
                f"no positives left after the k-core (min users {args.min_user_interactions}, "
                f"min items {args.min_item_interactions}) for {run_date}"
            )
        clock.lap("k_core")

        kept_items_df = core_df.select(S.ITEM_ID).distinct().persist(StorageLevel.MEMORY_AND_DISK)
        cached.append(kept_items_df)
        users_index_df = tx.extend_index(
            read_index(spark, storage.join(args.output, USERS_INDEX_DIR), S.USER_INDEX_SCHEMA),
            tx.first_seen(positives_df, core_df, S.USER_ID),
            id_col=S.USER_ID,
            idx_col=S.USER_IDX,
            run_date=run_date,
        )
        items_index_df = tx.extend_index(
            read_index(spark, storage.join(args.output, ITEMS_INDEX_DIR), S.ITEM_INDEX_SCHEMA),
            tx.first_seen(positives_df, kept_items_df, S.ITEM_ID),
            id_col=S.ITEM_ID,
            idx_col=S.ITEM_IDX,
            run_date=run_date,
        )
        # One sorted file per map: they are small next to the events, and a later run reads them whole.
        # Cached as they are written; the joins below read them from memory.
        users_index_df = (
            users_index_df.repartition(1).sortWithinPartitions(S.USER_IDX).persist(StorageLevel.MEMORY_AND_DISK)
        )
        items_index_df = (
            items_index_df.repartition(1).sortWithinPartitions(S.ITEM_IDX).persist(StorageLevel.MEMORY_AND_DISK)
        )
        cached += [users_index_df, items_index_df]
        _write(users_index_df, staged[USERS_INDEX_DIR])
        _write(items_index_df, staged[ITEMS_INDEX_DIR])
        clock.lap("index")

        # Tonight's items straight from their map (no pass over the positives), cached: small, used by
        # the split and both negative samplers.
        ranks_df = tx.item_ranks(
            items_index_df.join(kept_items_df, on=S.ITEM_ID, how="left_semi")
        ).persist(StorageLevel.MEMORY_AND_DISK)
        split_df = (
            core_df.transform(tx.with_indices, users_index_df, items_index_df)
            .transform(tx.to_user_histories, ranks_df)
            .transform(tx.with_split, split=args.split, test_fraction=args.test_fraction)
            # Same rows in the same order on every run: output files are byte-for-byte repeatable.
            .sortWithinPartitions(S.USER_IDX)
            # Filled by the train write, read again by the test write and the counts.
            .persist(StorageLevel.MEMORY_AND_DISK)
        )
        cached += [ranks_df, split_df]
        _write(
            tx.explode_train_rows(split_df, ranks_df, negatives=args.train_negatives, seed=args.seed),
            staged[TRAIN_DIR],
        )
        for frame in (positives_df, core_df, kept_items_df, users_index_df, items_index_df):
            frame.unpersist()
        clock.lap("split_and_train")
        _write(
            tx.explode_test_rows(split_df, ranks_df, negatives=args.test_negatives, seed=args.seed),
            staged[TEST_DIR],
        )
        clock.lap("test")

        counts = _output_counts(staged, split_df, ranks_df, args.test_negatives)
        check_staged(staged, counts)
        funnel = Funnel(
            rows_in=lines_read,
            rows_out=unique_events,
            rejected_by_reason={k: v for k, v in rejected.items() if v},
            dropped_by_reason={DUPLICATE_REASON: duplicates} if duplicates else {},
        )
        check_funnel(STAGE, funnel)
        clock.lap("counts")
        # The gate checks what was written. Three narrow columns: re-reading the Parquet for each metric
        # is cheaper than caching tens of millions of rows (at 1 M events, 12 s instead of 19 s).
        run_gate(
            STAGE,
            {
                TRAIN: spark.read.parquet(storage.spark_path(staged[TRAIN_DIR])),
                TEST: spark.read.parquet(storage.spark_path(staged[TEST_DIR])),
            },
            cache_frames=False,
            reports_root=cli.reports_root(args),
            run_date=run_date,
            thresholds=thresholds_from_args(args),
            context={
                N_USERS: counts["users_index_size"],
                N_ITEMS: counts["items_index_size"],
                LEAVE_ONE_OUT: args.split == S.SPLIT_LOO,
                TEST_NEGATIVES: args.test_negatives,
                ROWS_IN: funnel.rows_in,
                ROWS_REJECTED: funnel.rows_rejected,
            },
        )

        clock.lap("quality")
        outputs.mark_root(STAGE, args.output)
        for name, final in finals.items():
            storage.publish(staged[name], final)
    finally:
        for frame in cached:
            frame.unpersist()
        storage.finish_staging(staging_root)
    clock.lap("publish")

    details = {
        "lines_read": lines_read,
        "lines_read_run_date": run_day_lines,
        "rejected": sum(rejected.values()),
        "rejected_by_reason": rejected,
        "duplicates_dropped": duplicates,
        "valid_events": unique_events,
        "positives": n_positives,
        "events_collapsed_into_positives": unique_events - n_positives,
        "removed_by_k_core": n_positives - n_core,
        "k_core_rounds": rounds,
        "positives_after_k_core": n_core,
        **counts,
        "parameters": {
            "lookback_days": args.lookback_days,
            "min_user_interactions": args.min_user_interactions,
            "min_item_interactions": args.min_item_interactions,
            "train_negatives": args.train_negatives,
            "test_negatives": args.test_negatives,
            "seed": args.seed,
            "split": args.split,
            "test_fraction": args.test_fraction,
        },
        "input_files": len(files),
        "unread_files": len(unread_files),
        "unread_file_names": unread_files[:MAX_NAMED_FILES],
        "outputs": {name: final for name, final in finals.items()},
        "phase_seconds": clock.seconds,
    }
    return write_report(
        cli.reports_root(args), STAGE, run_date, funnel, started_at=started_at, details=details
    )


def _output_counts(
    staged: dict[str, str], split_df: DataFrame, ranks_df: DataFrame, test_negatives: int
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
        "train_rows": storage.parquet_rows(staged[TRAIN_DIR]),
        "test_rows": storage.parquet_rows(staged[TEST_DIR]),
        "users_index_size": storage.parquet_rows(staged[USERS_INDEX_DIR]),
        "items_index_size": storage.parquet_rows(staged[ITEMS_INDEX_DIR]),
    }


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
