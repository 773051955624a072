"""Embed every product image with a CNN: ``<output>/embeddings/dt=<run date>/``.

Input is the catalog CSV (``--catalog``; ``image_path`` relative to ``--images-root``) or, without a
catalog, every image file found recursively under ``--images-root`` (the sku is the file name without
its extension). Each product gets exactly one output row (``schemas/embeddings.py`` EMBEDDING_SCHEMA):
status "ok" with its embedding, or status "error" with a null embedding and ``"<reason>: <detail>"``.
Catalog rows without a sku, or repeating an earlier row's sku, are quarantined to
``<output>/rejects/embed/dt=<run date>/`` with their reason and get no embedding row.

Model, weights and head are checked on the driver before any Spark work (a clear JobError); the pandas
UDF in ``udfs/embed_images.py`` loads the model once per Python worker and reads the image files itself,
so no image bytes go through the JVM or a shuffle.

Incremental: the run takes the latest earlier ``embeddings/dt=`` partition (its own date on a rerun) and,
when that was written with the same configuration (``_embed_config.json`` beside its Parquet files),
reuses the vector of every product whose image bytes hash the same (``content_sha256``); only new and
changed images are decoded and embedded. The output is complete and equal to a full run's. ``--full``,
or a previous partition that is missing, unreadable or differently configured, embeds every product
(logged with the reason). See docs/embed.md.

    python -m jobs.embed_images --catalog S/catalog/catalog.csv --images-root S/images \
        --output W/style --run-date 2024-03-31 --model resnet152 --weights s3://bucket/resnet152.pth
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.common import outputs, storage
from jobs.common.catalog import check_catalog_header
from jobs.common.cli import JobError, job_parser, positive_int, reports_root, run
from jobs.common.quality import (
    EMBEDDING_DIM,
    EMBEDDINGS,
    ROWS_IN,
    ROWS_REJECTED,
    add_quality_args,
    run_gate,
    thresholds_from_args,
)
from jobs.common.report import Funnel, PhaseClock, check_funnel, write_report
from jobs.common.spark import get_spark, task_slots
from jobs.transforms.embed_reuse import (
    config_differences,
    filter_changed,
    filter_removed,
    select_reusable,
    select_reused,
)
from schemas import catalog as C
from schemas import embeddings as E
from udfs import image_models as M
from udfs.embed_images import EmbedConfig, make_embed_udf, make_hash_udf

LOG = logging.getLogger("stylegraph.embed_images")

JOB_NAME = "embed_images"
STAGE = "embed"
EMBEDDINGS_DIR = "embeddings"
REJECTS_DIR = ("rejects", "embed")
DEFAULT_BATCH_SIZE = 16

# Files the images-root listing treats as product images (case-insensitive).
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "gif", "bmp", "webp", "tif", "tiff")
# Upper bound of rows per partition, so a failed task retries little work; the lower bound is one batch.
MAX_ROWS_PER_PARTITION = 2048

ARROW_MAX_RECORDS = "spark.sql.execution.arrow.maxRecordsPerBatch"
ORDER_COL = "_input_order"
RESULT_COL = "_result"
BINARY_FILE_PATH = "path"
INPUT_CATALOG = "catalog"
INPUT_LISTING = "images_root"

# The configuration a partition was written with, beside its Parquet files ("_": readers skip it).
CONFIG_FILE = "_embed_config.json"
# Bump when what the fingerprint stands for changes (e.g. how batches are formed): older partitions
# then differ and the next run embeds everything.
FINGERPRINT_FORMAT = 1
MODE_INCREMENTAL = "incremental"
MODE_FULL = "full"
# Spark settings that change the numbers a worker computes (threads per task, GPU executors).
NUMERIC_SPARK_CONFS = {
    "task_cpus": ("spark.task.cpus", "1"),
    "executor_gpus": ("spark.executor.resource.gpu.amount", "0"),
}
FINGERPRINT_LIBRARIES = ("torch", "torchvision", "pillow")


def build_parser() -> argparse.ArgumentParser:
    parser = job_parser(JOB_NAME, __doc__.splitlines()[0])
    parser.add_argument(
        "--catalog", default=None, help="catalog CSV (file or folder); default: list --images-root"
    )
    parser.add_argument("--images-root", required=True, help="folder the catalog's image_path is relative to")
    parser.add_argument("--output", required=True, help="output root; writes embeddings/dt=<run date>/")
    parser.add_argument("--model", default=M.DEFAULT_MODEL, help=f"one of {', '.join(M.MODEL_FEATURE_DIMS)}")
    parser.add_argument(
        "--weights", default="random:0", help="state_dict path or s3:// URI, 'imagenet', or random:SEED"
    )
    parser.add_argument(
        "--head", default=None, help="state_dict of a linear projection applied after pooling"
    )
    parser.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--device", choices=M.DEVICE_CHOICES, default=M.DEVICE_AUTO)
    parser.add_argument("--normalize", action="store_true", help="L2-normalise the output vectors")
    parser.add_argument(
        "--max-image-pixels", type=positive_int, default=M.DEFAULT_MAX_IMAGE_PIXELS,
        help="larger images are rejected as decompression bombs",
    )
    parser.add_argument(
        "--full", action="store_true",
        help="embed every product; default: reuse the previous partition's vectors of unchanged images",
    )
    return add_quality_args(parser)


# ------------------------------------------------------------------------------------- driver checks


def resolve_model(args: argparse.Namespace) -> tuple[EmbedConfig, dict[str, Any]]:
    """Check model, weights and head on the driver; the worker configuration and report details.

    Raises:
        JobError: unknown model, weights missing or not fitting the model, head missing or mismatched.
    """
    try:
        M.check_model_name(args.model)
        weights = M.resolve_weights(args.model, args.weights)
        head_out = head_sha = None
        if args.head:
            head = M.load_head(args.head, M.feature_dim(args.model))
            head_out, head_sha = head.out_features, M.sha256_of_uri(args.head)
    except M.ModelConfigError as err:
        raise JobError(str(err)) from err
    config = EmbedConfig(
        model=args.model,
        weights=weights,
        images_root=storage.resolve(args.images_root),
        head_uri=args.head,
        normalize=args.normalize,
        device=args.device,
        batch_size=args.batch_size,
        max_pixels=args.max_image_pixels,
    )
    details = {
        "model": M.describe_model(args.model, head_out, args.normalize),
        "backbone": args.model,
        "dimensions": head_out or M.feature_dim(args.model),
        "weights": weights.describe(),
        "weights_sha256": weights.sha256,
        "head": args.head,
        "head_sha256": head_sha,
        "normalize": args.normalize,
        "device": args.device,
        "batch_size": args.batch_size,
    }
    return config, details


def embed_fingerprint(config: EmbedConfig, details: Mapping[str, Any], spark_conf: Any) -> dict[str, Any]:
    """Everything besides an image's bytes that decides its vector, as JSON-ready data.

    Args:
        config: the worker configuration (limits, batch size, device).
        details: from :func:`resolve_model` (model column, weights and head sha256).
        spark_conf: the SparkConf (threads per task and GPU executors change the numbers).
    """
    fingerprint = {
        "format": FINGERPRINT_FORMAT,
        "model": details["model"],
        "weights_sha256": details["weights_sha256"],
        "head_sha256": details["head_sha256"],
        "preprocessing": M.PREPROCESSING,
        "max_image_pixels": config.max_pixels,
        "max_image_bytes": config.max_bytes,
        "batch_size": config.batch_size,
        "device": config.device,
        **{key: spark_conf.get(name, default) for key, (name, default) in NUMERIC_SPARK_CONFS.items()},
        "libraries": {name: importlib.metadata.version(name) for name in FINGERPRINT_LIBRARIES},
    }
    return json.loads(json.dumps(fingerprint, sort_keys=True))  # as it reads back from the file


@dataclass(frozen=True)
class PreviousRun:
    """The previous embeddings partition and whether tonight may reuse its vectors.

    ``uri`` is set when a readable previous partition exists (its skus count the removed products) and
    ``is_reusable`` when its configuration is tonight's; ``reason`` says which and why, for the log.
    """

    uri: str | None
    is_reusable: bool
    reason: str


def parquet_problem(uri: str, columns: Sequence[str]) -> str | None:
    """Why the Parquet files below ``uri`` cannot be read for ``columns`` (footers only), or None."""
    import pyarrow.parquet as pq

    try:
        fs, _ = storage.filesystem(uri)
        files = storage.list_files(uri, suffixes=(".parquet",))
        if not files:
            return "no Parquet files"
        for file_uri in files:
            with fs.open_input_file(storage.filesystem(file_uri)[1]) as handle:
                names = set(pq.ParquetFile(handle).schema_arrow.names)
            missing = [column for column in columns if column not in names]
            if missing:
                return f"{file_uri} has no column(s) {', '.join(missing)}"
    except Exception as err:  # pyarrow raises OSError, ArrowInvalid...: all mean "cannot be read"
        return f"{type(err).__name__}: {err}"
    return None


def find_previous(
    output: str, run_date: Any, fingerprint: Mapping[str, Any], *, is_full: bool
) -> PreviousRun:
    """The latest embeddings partition dated ``run_date`` or earlier, checked for reuse."""
    dataset = storage.join(output, EMBEDDINGS_DIR)
    partition = storage.latest_partition(dataset, run_date)
    if partition is None:
        return PreviousRun(None, False, f"no embeddings partition dated {run_date} or earlier in {dataset}")
    uri = storage.resolve(partition)  # on S3: the partition's current version
    problem = parquet_problem(uri, [field.name for field in E.EMBEDDING_SCHEMA.fields])
    if problem:
        return PreviousRun(None, False, f"previous embeddings {uri} cannot be read: {problem}")
    if is_full:
        return PreviousRun(uri, False, "--full")
    config_uri = storage.join(uri, CONFIG_FILE)
    try:
        previous = storage.read_json(config_uri)
    except FileNotFoundError:
        return PreviousRun(uri, False, f"previous embeddings {uri} have no {CONFIG_FILE}")
    except (OSError, ValueError) as err:
        return PreviousRun(uri, False, f"{config_uri} cannot be read: {type(err).__name__}: {err}")
    if not isinstance(previous, Mapping):
        return PreviousRun(uri, False, f"{config_uri} is not a JSON object")
    differences = config_differences(previous, fingerprint)
    if differences:
        return PreviousRun(uri, False, f"previous embeddings {uri} differ in {', '.join(differences)}")
    return PreviousRun(uri, True, f"reusing unchanged images' vectors from {uri}")


def final_folders(args: argparse.Namespace) -> dict[str, str]:
    """The partitions a run publishes: embeddings and rejects of the run date."""
    return {
        "embeddings": storage.partition_uri(args.output, EMBEDDINGS_DIR, args.run_date),
        "rejects": storage.partition_uri(args.output, "/".join(REJECTS_DIR), args.run_date),
    }


def check_inputs(args: argparse.Namespace) -> None:
    """Raise JobError when the catalog or the images root does not exist."""
    if args.catalog and not storage.exists(args.catalog):
        raise JobError(f"--catalog {args.catalog}: not found")
    if not storage.exists(args.images_root):
        raise JobError(f"--images-root {args.images_root}: not found")


# ------------------------------------------------------------------------------------------- reading


def read_catalog(spark: SparkSession, catalog_uri: str) -> DataFrame:
    """The catalog CSV with its declared schema, plus its row order (for picking the first duplicate)."""
    check_catalog_header(catalog_uri)
    return (
        spark.read.schema(C.CATALOG_SCHEMA)
        .options(**C.CATALOG_CSV_OPTIONS)
        .csv(storage.read_path(catalog_uri))
        .withColumn(ORDER_COL, F.monotonically_increasing_id())
    )


def _root_marker(images_root: str) -> str:
    """The part of a file's listed path that ends at the images root (local path or bucket/prefix)."""
    return storage.filesystem(images_root)[1].rstrip("/") + "/"


def _listed_path(uri: str) -> str:
    """A listed file URI as ``/local/path`` or ``bucket/key`` (the form :func:`_root_marker` matches)."""
    parsed = urlparse(uri)
    path = unquote(parsed.path)
    return f"{parsed.netloc}{path}" if storage.is_remote(uri) else path


def list_images(spark: SparkSession, images_root: str) -> DataFrame:
    """Every image file below the root as catalog-shaped rows: sku from the file name, relative path.

    The listing is ``binaryFile``'s (recursive, hidden and ``_`` files skipped), taken from its file
    index (``inputFiles``) rather than by scanning it: a scan reads no bytes when only ``path`` is
    selected, but silently skips zero-byte files, and an empty image must be reported, not lost.
    The index already lives on the driver; the paths are a few MB even for a million images.
    """
    files = (
        spark.read.format("binaryFile")
        .option("recursiveFileLookup", "true")
        .load(storage.read_path(images_root))
        .inputFiles()
    )
    paths = [(_listed_path(uri),) for uri in files]
    listed_df = spark.createDataFrame(paths, T.StructType([T.StructField(BINARY_FILE_PATH, T.StringType())]))
    return listed_df.transform(with_listing_columns, root_marker=_root_marker(storage.resolve(images_root)))


def with_listing_columns(listed_df: DataFrame, root_marker: str) -> DataFrame:
    """binaryFile paths -> catalog columns: image files only, path relative to the root, sku = stem."""
    extensions = "|".join(IMAGE_EXTENSIONS)
    path = F.col(BINARY_FILE_PATH)
    relative = path.substr(F.instr(path, root_marker) + len(root_marker), F.length(path))
    images_df = (
        listed_df
        .filter(F.lower(F.col(BINARY_FILE_PATH)).rlike(rf"\.({extensions})$"))
        .withColumn(C.IMAGE_PATH, relative)
        .withColumn(C.SKU, F.regexp_extract(F.col(C.IMAGE_PATH), r"([^/]*?)(\.[^./]*)?$", 1))
    )
    return images_df.select(
        *[
            F.col(column) if column in (C.SKU, C.IMAGE_PATH) else F.lit(None).cast("string").alias(column)
            for column in C.CATALOG_COLUMNS
        ],
        F.col(C.IMAGE_PATH).alias(ORDER_COL),
    )


# ------------------------------------------------------------------------------------ transformations


def with_reject_reason(catalog_df: DataFrame) -> DataFrame:
    """Add ``reason``: missing_sku (null/blank), duplicate_sku (not the first row of its sku), else null."""
    first_of_sku = Window.partitionBy(C.SKU).orderBy(ORDER_COL)
    is_missing_sku = F.col(C.SKU).isNull() | F.col(C.SKU).rlike(r"^\s*$")
    return catalog_df.withColumn(
        E.REJECT_REASON,
        F.when(is_missing_sku, F.lit(E.REJECT_MISSING_SKU))
        .when(F.row_number().over(first_of_sku) > 1, F.lit(E.REJECT_DUPLICATE_SKU)),
    )


def select_rejects(checked_df: DataFrame) -> DataFrame:
    """The quarantined catalog rows, as EMBED_REJECT_SCHEMA."""
    return checked_df.filter(F.col(E.REJECT_REASON).isNotNull()).select(*E.EMBED_REJECT_COLUMNS)


def select_products(checked_df: DataFrame) -> DataFrame:
    """The products to embed: one row per valid sku."""
    return checked_df.filter(F.col(E.REJECT_REASON).isNull()).select(C.SKU, C.IMAGE_PATH)


def with_embeddings(products_df: DataFrame, embed_udf: Any, model: str, weights_sha256: str) -> DataFrame:
    """Run the embedding UDF on each product's image; the result has EMBEDDING_SCHEMA's columns."""
    return (
        products_df
        .withColumn(RESULT_COL, embed_udf(F.col(C.IMAGE_PATH)))
        .select(
            F.col(C.SKU).alias(E.SKU),
            F.col(C.IMAGE_PATH).alias(E.IMAGE_PATH),
            F.col(f"{RESULT_COL}.{E.EMBEDDING}").alias(E.EMBEDDING),
            F.col(f"{RESULT_COL}.{E.STATUS}").alias(E.STATUS),
            F.col(f"{RESULT_COL}.{E.ERROR}").alias(E.ERROR),
            F.lit(model).alias(E.MODEL),
            F.lit(weights_sha256).alias(E.WEIGHTS_SHA256),
            F.col(f"{RESULT_COL}.{E.CONTENT_SHA256}").alias(E.CONTENT_SHA256),
        )
    )


def with_content_hash(products_df: DataFrame, hash_udf: Any) -> DataFrame:
    """Add ``content_sha256``: the sha256 of each product's image file (null when it cannot be read)."""
    return products_df.withColumn(E.CONTENT_SHA256, hash_udf(F.col(C.IMAGE_PATH)))


def error_reason(error: Any) -> Any:
    """Column: the reason word of an ``error`` value (``"missing_file: ..."`` -> ``missing_file``)."""
    return F.substring_index(error, ":", 1)


def partition_count(rows: int, slots: int, batch_size: int) -> int:
    """Partitions for the UDF: one per task slot, none smaller than a batch, none over
    MAX_ROWS_PER_PARTITION rows (then a multiple of the slots, so every round keeps all slots busy)."""
    partitions = max(1, min(slots, math.ceil(rows / batch_size)))
    if math.ceil(rows / partitions) > MAX_ROWS_PER_PARTITION:
        rounds = math.ceil(rows / (slots * MAX_ROWS_PER_PARTITION))
        partitions = rounds * slots
    return partitions


@contextmanager
def sql_conf(spark: SparkSession, settings: Mapping[str, str]) -> Iterator[None]:
    """Set runtime SQL settings for a block and put the previous values back (the session is shared)."""
    previous = {key: spark.conf.get(key, None) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


def _counts(df: DataFrame, *columns: Any) -> dict[tuple[Any, ...], int]:
    """Row counts per group (a handful of groups: safe to collect)."""
    return {tuple(row[:-1]): int(row[-1]) for row in df.groupBy(*columns).count().collect()}


def read_embeddings(spark: SparkSession, uri: str) -> DataFrame:
    """An embeddings partition with its declared schema."""
    return spark.read.schema(E.EMBEDDING_SCHEMA).parquet(storage.spark_path(uri))


@dataclass
class EmbedPlan:
    """Tonight's embeddings as a frame to write, and how they are put together.

    ``to_embed`` products go through the embedding UDF (None: every product, a full run) on
    ``partitions`` partitions; the others take their previous vector. ``hashed_df`` (persisted, or
    None) holds every product's content hash; :meth:`release` frees it.
    """

    embeddings_df: DataFrame
    partitions: int
    to_embed: int | None
    hashed_df: DataFrame | None
    hash_seconds: float

    def release(self) -> None:
        if self.hashed_df is not None:
            self.hashed_df.unpersist()


def plan_embeddings(
    spark: SparkSession,
    checked_df: DataFrame,
    rows_in: int,
    config: EmbedConfig,
    details: Mapping[str, Any],
    previous: PreviousRun,
    model_images: Any,
) -> EmbedPlan:
    """The embeddings of every product: all through the model (full), or the changed ones through the
    model and the rest from ``previous`` (incremental). Runs the hashing pass when incremental."""
    slots = task_slots(spark)
    model, weights_sha256 = details["model"], details["weights_sha256"]
    products_df = checked_df.transform(select_products)
    hashed_df = reused_df = None
    to_embed = None
    hash_seconds = 0.0
    to_embed_df = products_df
    if previous.is_reusable:
        assert previous.uri is not None
        hash_started = time.time()
        hashed_df = (
            products_df.repartition(partition_count(rows_in, slots, config.batch_size))
            .transform(with_content_hash, make_hash_udf(config.images_root, config.max_bytes))
            .persist()
        )
        reusable_df = read_embeddings(spark, previous.uri).transform(select_reusable, model, weights_sha256)
        reused_df = hashed_df.transform(select_reused, reusable_df, model, weights_sha256)
        to_embed_df = hashed_df.transform(filter_changed, reusable_df)
        to_embed = to_embed_df.count()
        hash_seconds = time.time() - hash_started
        LOG.info("images hashed in %.1fs: %d of the products are new or changed", hash_seconds, to_embed)
    partitions = partition_count(rows_in if to_embed is None else to_embed, slots, config.batch_size)
    embeddings_df = (
        to_embed_df
        .repartition(partitions)
        # Each batch's images in a fixed order (a reduce task receives the map outputs in any order):
        # the same batches on a rerun. The vectors do not depend on it (batches are padded to one size).
        .sortWithinPartitions(C.SKU)
        .transform(with_embeddings, make_embed_udf(config, model_images), model, weights_sha256)
    )
    if reused_df is not None:
        embeddings_df = embeddings_df.unionByName(reused_df)
    return EmbedPlan(embeddings_df, partitions, to_embed, hashed_df, hash_seconds)


# ---------------------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the embedding job; returns the run report."""
    started = time.time()
    clock = PhaseClock(LOG)
    args = build_parser().parse_args(argv)
    config, details = resolve_model(args)
    check_inputs(args)
    outputs.check_output(
        STAGE,
        args.output,
        inputs={"--catalog": args.catalog, "--images-root": args.images_root},
        replaces=final_folders(args).values(),
        report_dir=reports_root(args),
    )
    spark = get_spark(JOB_NAME)
    if args.device == M.DEVICE_CUDA:
        # Asked of one executor task: where GPU resources are configured, every task runs on a GPU executor.
        reason = spark.sparkContext.parallelize([0], 1).map(lambda _: M.cuda_unavailable_reason()).first()
        if reason:
            raise JobError(f"--device cuda: {reason} (on the executors); refusing to embed on CPU")
    clock.lap("model_check_and_session")

    input_kind = INPUT_CATALOG if args.catalog else INPUT_LISTING
    input_df = read_catalog(spark, args.catalog) if args.catalog else list_images(spark, args.images_root)
    checked_df = input_df.transform(with_reject_reason).persist()
    try:
        rows_in = checked_df.count()
        clock.lap("read_catalog")
        LOG.info("%d input rows (%s) read and checked in %.1fs", rows_in, input_kind, time.time() - started)
        if rows_in == 0:
            where = f"--catalog {args.catalog}" if args.catalog else f"--images-root {args.images_root}"
            raise JobError(f"no input images: {where} has no products")
        fingerprint = embed_fingerprint(config, details, spark.sparkContext.getConf())
        previous = find_previous(args.output, args.run_date, fingerprint, is_full=args.full)
        if previous.is_reusable or args.full:
            LOG.info("%s run: %s", MODE_INCREMENTAL if previous.is_reusable else MODE_FULL, previous.reason)
        else:
            LOG.warning("full run (every product is embedded): %s", previous.reason)
        return _embed_and_publish(
            spark, args, config, details, checked_df, rows_in, input_kind, started,
            fingerprint=fingerprint, previous=previous, clock=clock,
        )
    finally:
        checked_df.unpersist()


def _embed_and_publish(
    spark: SparkSession,
    args: argparse.Namespace,
    config: EmbedConfig,
    details: dict[str, Any],
    checked_df: DataFrame,
    rows_in: int,
    input_kind: str,
    started: float,
    *,
    fingerprint: dict[str, Any],
    previous: PreviousRun,
    clock: PhaseClock,
) -> dict[str, Any]:
    model_images = spark.sparkContext.accumulator(0)
    plan = plan_embeddings(spark, checked_df, rows_in, config, details, previous, model_images)
    clock.lap("previous_and_hashes")
    embeddings_df, partitions = plan.embeddings_df, plan.partitions
    _, staged = storage.start_staging(args.output, STAGE)
    staged_embeddings = storage.join(staged, EMBEDDINGS_DIR)
    staged_rejects = storage.join(staged, *REJECTS_DIR)
    final_embeddings, final_rejects = final_folders(args).values()
    try:
        checked_df.transform(select_rejects).write.parquet(storage.spark_path(staged_rejects))
        clock.lap("rejects")
        embed_started = time.time()
        # One Arrow batch = one model batch: executor memory stays flat whatever the catalog size.
        with sql_conf(spark, {ARROW_MAX_RECORDS: str(args.batch_size)}):
            embeddings_df.write.parquet(storage.spark_path(staged_embeddings))
        embed_seconds = time.time() - embed_started
        LOG.info("embeddings staged in %.1fs on %d partitions", embed_seconds, partitions)
        storage.write_json(storage.join(staged_embeddings, CONFIG_FILE), fingerprint)
        clock.lap("embed")

        # Staged and checked -> publish.
        written_df = spark.read.schema(E.EMBEDDING_SCHEMA).parquet(storage.spark_path(staged_embeddings))
        by_status = _counts(written_df, E.STATUS, error_reason(F.col(E.ERROR)))
        rejects_df = spark.read.schema(E.EMBED_REJECT_SCHEMA).parquet(storage.spark_path(staged_rejects))
        rejects_by_reason = {key[0]: n for key, n in _counts(rejects_df, E.REJECT_REASON).items()}
        rows_written = sum(by_status.values())
        ok = sum(n for (status, _), n in by_status.items() if status == E.STATUS_OK)
        errors_by_reason = {
            str(reason): n for (status, reason), n in sorted(by_status.items()) if status == E.STATUS_ERROR
        }
        funnel = Funnel(
            rows_in=rows_in, rows_out=ok, rejected_by_reason={**rejects_by_reason, **errors_by_reason}
        )
        check_funnel(STAGE, funnel)
        products = rows_in - sum(rejects_by_reason.values())
        if rows_written != products:
            raise RuntimeError(f"{STAGE}: wrote {rows_written} embedding rows for {products} products")
        reused = 0 if plan.to_embed is None else products - plan.to_embed
        removed = None
        if previous.uri is not None:
            removed = read_embeddings(spark, previous.uri).transform(
                filter_removed, checked_df.transform(select_products)
            ).count()
        clock.lap("counts")
        if ok == 0:
            raise JobError(
                f"no image could be embedded ({rows_written} products, errors by reason {errors_by_reason}): "
                f"check --images-root {args.images_root}"
            )
        run_gate(
            STAGE,
            {EMBEDDINGS: written_df},
            reports_root=reports_root(args),
            run_date=args.run_date,
            thresholds=thresholds_from_args(args),
            context={
                EMBEDDING_DIM: details["dimensions"],
                ROWS_IN: funnel.rows_in,
                ROWS_REJECTED: funnel.rows_rejected,
            },
        )
        clock.lap("quality")
        outputs.mark_root(STAGE, args.output)
        storage.publish(staged_embeddings, final_embeddings)
        storage.publish(staged_rejects, final_rejects)
        clock.lap("publish")
    finally:
        storage.finish_staging(staged)
        plan.release()

    counts = {"reused": reused, "embedded": ok - reused, "failed": rows_written - ok, "removed": removed}
    LOG.info(
        "%s of %d products: %d reused, %d embedded, %d failed (error rows), %s removed since the previous "
        "run; %d catalog rows quarantined; %d images through the model; write stage %.1fs",
        MODE_INCREMENTAL if previous.is_reusable else MODE_FULL, products, counts["reused"],
        counts["embedded"], counts["failed"], "-" if removed is None else removed, rows_in - products,
        model_images.value, embed_seconds,
    )
    return write_report(
        reports_root(args),
        STAGE,
        args.run_date,
        funnel,
        started_at=started,
        details={
            **details,
            "input": input_kind,
            "catalog": args.catalog,
            "images_root": args.images_root,
            # Every product has a row in the output: ok rows have an embedding, error rows say why not.
            "rows_written": rows_written,
            "embeddings_ok": ok,
            "embeddings_error_by_reason": errors_by_reason,
            "catalog_rejects_by_reason": rejects_by_reason,
            "partitions": partitions,
            "mode": MODE_INCREMENTAL if previous.is_reusable else MODE_FULL,
            "mode_reason": previous.reason,
            "previous_embeddings": previous.uri,
            # reused + embedded + failed = products; removed: previous products no longer in the catalog.
            "products": counts,
            # Counted by the embedding UDF as it calls the model (a retried task counts again).
            "images_through_model": model_images.value,
            "config_fingerprint": fingerprint,
            "hash_seconds": round(plan.hash_seconds, 3),
            "seconds_by_phase": clock.seconds,
            "embed_seconds": round(embed_seconds, 3),
            "images_per_second": round(rows_written / embed_seconds, 2) if embed_seconds > 0 else None,
            "outputs": {"embeddings": final_embeddings, "rejects": final_rejects},
        },
    )


if __name__ == "__main__":
    raise SystemExit(run(main))
