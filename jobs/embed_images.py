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
import dataclasses
import functools
import importlib.metadata
import json
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.common import quality_pass, storage
from jobs.common.catalog import check_catalog_header
from jobs.common.cli import JobError, job_parser, positive_int
from jobs.common.cli import run as run_job
from jobs.common.quality import (
    EMBEDDING_DIM,
    EMBEDDINGS,
    ROWS_IN,
    ROWS_REJECTED,
    Checked,
    WrittenCounts,
    add_quality_args,
)
from jobs.common.report import Funnel, check_funnel
from jobs.common.run import RunSpec, StagedRun
from jobs.common.spark import partition_keys, preloaded_workers, start_spark, task_slots
from jobs.transforms.embed_reuse import (
    config_differences,
    filter_changed,
    filter_removed,
    select_reusable,
    select_reused,
)
from schemas import catalog as catalog_schema
from schemas import embeddings as embeddings_schema
from udfs import image_models
from udfs.embed_images import WORKER_MODULES, EmbedConfig, make_embed_udf, make_hash_udf, probe_task

LOG = logging.getLogger("stylegraph.embed_images")

JOB_NAME = "embed_images"
STAGE = "embed"
EMBEDDINGS_DIR = "embeddings"
REJECTS_DIR = "rejects/embed"
DEFAULT_BATCH_SIZE = 16

# Files the images-root listing treats as product images (case-insensitive).
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "gif", "bmp", "webp", "tif", "tiff")
# Upper bound of rows per partition, so a failed task retries little work; the lower bound is one batch.
MAX_ROWS_PER_PARTITION = 2048

ARROW_MAX_RECORDS = "spark.sql.execution.arrow.maxRecordsPerBatch"
ORDER_COL = "_input_order"
RESULT_COL = "_result"
ROUTE_COL = "_route"
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
    parser.add_argument(
        "--model",
        default=image_models.DEFAULT_MODEL,
        help=f"one of {', '.join(image_models.MODEL_FEATURE_DIMS)}",
    )
    parser.add_argument(
        "--weights", default="random:0", help="state_dict path or s3:// URI, 'imagenet', or random:SEED"
    )
    parser.add_argument(
        "--head", default=None, help="state_dict of a linear projection applied after pooling"
    )
    parser.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--device", choices=image_models.DEVICE_CHOICES, default=image_models.DEVICE_AUTO)
    parser.add_argument(
        "--precision", choices=image_models.PRECISION_CHOICES, default=image_models.PRECISION_AUTO,
        help="auto: bf16 where the device computes it natively (CPUs with AVX512-BF16 or AMX, Ampere+ "
        "GPUs), fp16 on older GPUs, else fp32; fp32: always fp32 (default: auto)",
    )
    parser.add_argument("--normalize", action="store_true", help="L2-normalise the output vectors")
    parser.add_argument(
        "--max-image-pixels", type=positive_int, default=image_models.DEFAULT_MAX_IMAGE_PIXELS,
        help="larger images are rejected as decompression bombs",
    )
    parser.add_argument(
        "--full", action="store_true",
        help="embed every product; default: reuse the previous partition's vectors of unchanged images",
    )
    return add_quality_args(parser)


# ------------------------------------------------------------------------------------- driver checks


@dataclass(frozen=True)
class EmbedSpec:
    """What an embedding run reads and how it embeds (the parsed flags)."""

    catalog: str | None
    images_root: str
    model: str
    weights: str
    head: str | None
    batch_size: int
    device: str
    precision: str
    is_normalized: bool
    max_image_pixels: int
    is_full: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> EmbedSpec:
        return cls(
            catalog=args.catalog,
            images_root=args.images_root,
            model=args.model,
            weights=args.weights,
            head=args.head,
            batch_size=args.batch_size,
            device=args.device,
            precision=args.precision,
            is_normalized=args.normalize,
            max_image_pixels=args.max_image_pixels,
            is_full=args.full,
        )

    @property
    def input_kind(self) -> str:
        return INPUT_CATALOG if self.catalog else INPUT_LISTING


def resolve_model(spec: EmbedSpec) -> tuple[EmbedConfig, dict[str, Any]]:
    """Check model, weights and head on the driver; the worker configuration and report details.

    Raises:
        JobError: unknown model, weights missing or not fitting the model, head missing or mismatched.
    """
    try:
        image_models.check_model_name(spec.model)
        weights = image_models.resolve_weights(spec.model, spec.weights)
        head_out = head_sha = None
        if spec.head:
            head_out = image_models.head_out_features(spec.head, image_models.feature_dim(spec.model))
            head_sha = image_models.sha256_of_uri(spec.head)
    except image_models.ModelConfigError as err:
        raise JobError(str(err)) from err
    config = EmbedConfig(
        model=spec.model,
        weights=weights,
        images_root=storage.resolve(spec.images_root),
        head_uri=spec.head,
        normalize=spec.is_normalized,
        device=spec.device,
        precision=spec.precision,
        batch_size=spec.batch_size,
        max_pixels=spec.max_image_pixels,
    )
    details = {
        "model": image_models.describe_model(spec.model, head_out, spec.is_normalized),
        "backbone": spec.model,
        "dimensions": head_out or image_models.feature_dim(spec.model),
        "weights": weights.describe(),
        "weights_sha256": weights.sha256,
        "head": spec.head,
        "head_sha256": head_sha,
        "normalize": spec.is_normalized,
        "device": spec.device,
        "precision": spec.precision,
        "batch_size": spec.batch_size,
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
        "preprocessing": image_models.PREPROCESSING,
        "inference": image_models.INFERENCE,
        "max_image_pixels": config.max_pixels,
        "max_image_bytes": config.max_bytes,
        "batch_size": config.batch_size,
        "device": config.device,
        "autocast": config.autocast,
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
    problem = parquet_problem(uri, [field.name for field in embeddings_schema.EMBEDDING_SCHEMA.fields])
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


def check_inputs(spec: EmbedSpec) -> None:
    """Raise JobError when the catalog or the images root does not exist."""
    if spec.catalog and not storage.exists(spec.catalog):
        raise JobError(f"--catalog {spec.catalog}: not found")
    if not storage.exists(spec.images_root):
        raise JobError(f"--images-root {spec.images_root}: not found")


# ------------------------------------------------------------------------------------------- reading


def read_catalog(spark: SparkSession, catalog_uri: str) -> DataFrame:
    """The catalog CSV with its declared schema, plus its row order (for picking the first duplicate)."""
    check_catalog_header(catalog_uri)
    return (
        spark.read.schema(catalog_schema.CATALOG_SCHEMA)
        .options(**catalog_schema.CATALOG_CSV_OPTIONS)
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
        .withColumn(catalog_schema.IMAGE_PATH, relative)
        .withColumn(
            catalog_schema.SKU, F.regexp_extract(F.col(catalog_schema.IMAGE_PATH), r"([^/]*?)(\.[^./]*)?$", 1)
        )
    )
    return images_df.select(
        *[
            F.col(column) if column in (catalog_schema.SKU, catalog_schema.IMAGE_PATH)
            else F.lit(None).cast("string").alias(column)
            for column in catalog_schema.CATALOG_COLUMNS
        ],
        F.col(catalog_schema.IMAGE_PATH).alias(ORDER_COL),
    )


# ------------------------------------------------------------------------------------ transformations


def with_reject_reason(catalog_df: DataFrame) -> DataFrame:
    """Add ``reason``: missing_sku (null/blank), duplicate_sku (not the first row of its sku), else null."""
    first_of_sku = Window.partitionBy(catalog_schema.SKU).orderBy(ORDER_COL)
    is_missing_sku = F.col(catalog_schema.SKU).isNull() | F.col(catalog_schema.SKU).rlike(r"^\s*$")
    return catalog_df.withColumn(
        embeddings_schema.REJECT_REASON,
        F.when(is_missing_sku, F.lit(embeddings_schema.REJECT_MISSING_SKU))
        .when(F.row_number().over(first_of_sku) > 1, F.lit(embeddings_schema.REJECT_DUPLICATE_SKU)),
    )


def select_rejects(checked_df: DataFrame) -> DataFrame:
    """The quarantined catalog rows, as EMBED_REJECT_SCHEMA."""
    return (
        checked_df.filter(F.col(embeddings_schema.REJECT_REASON).isNotNull())
        .select(*embeddings_schema.EMBED_REJECT_COLUMNS)
    )


def select_products(checked_df: DataFrame) -> DataFrame:
    """The products to embed: one row per valid sku."""
    return (
        checked_df.filter(F.col(embeddings_schema.REJECT_REASON).isNull())
        .select(catalog_schema.SKU, catalog_schema.IMAGE_PATH)
    )


def with_embeddings(products_df: DataFrame, embed_udf: Any, model: str, weights_sha256: str) -> DataFrame:
    """Run the embedding UDF on each product's image; the result has EMBEDDING_SCHEMA's columns."""
    return (
        products_df
        .withColumn(RESULT_COL, embed_udf(F.col(catalog_schema.IMAGE_PATH)))
        .select(
            F.col(catalog_schema.SKU).alias(embeddings_schema.SKU),
            F.col(catalog_schema.IMAGE_PATH).alias(embeddings_schema.IMAGE_PATH),
            F.col(f"{RESULT_COL}.{embeddings_schema.EMBEDDING}").alias(embeddings_schema.EMBEDDING),
            F.col(f"{RESULT_COL}.{embeddings_schema.STATUS}").alias(embeddings_schema.STATUS),
            F.col(f"{RESULT_COL}.{embeddings_schema.ERROR}").alias(embeddings_schema.ERROR),
            F.lit(model).alias(embeddings_schema.MODEL),
            F.lit(weights_sha256).alias(embeddings_schema.WEIGHTS_SHA256),
            F.col(f"{RESULT_COL}.{embeddings_schema.CONTENT_SHA256}").alias(embeddings_schema.CONTENT_SHA256),
        )
    )


def with_content_hash(products_df: DataFrame, hash_udf: Any) -> DataFrame:
    """Add ``content_sha256``: the sha256 of each product's image file (null when it cannot be read)."""
    return products_df.withColumn(
        embeddings_schema.CONTENT_SHA256, hash_udf(F.col(catalog_schema.IMAGE_PATH))
    )


def partition_count(rows: int, slots: int, batch_size: int) -> int:
    """Partitions for the UDF: one per task slot, none smaller than a batch, none over
    MAX_ROWS_PER_PARTITION rows (then a multiple of the slots, so every round keeps all slots busy)."""
    partitions = max(1, min(slots, math.ceil(rows / batch_size)))
    if math.ceil(rows / partitions) > MAX_ROWS_PER_PARTITION:
        rounds = math.ceil(rows / (slots * MAX_ROWS_PER_PARTITION))
        partitions = rounds * slots
    return partitions


def spread_evenly(products_df: DataFrame, partitions: int) -> DataFrame:
    """The products over ``partitions`` for the embedding UDF, at most one row apart, each partition's
    rows sorted by sku.

    Products in sku order are dealt to the partitions in turn (``partition_keys``: a key that hashing
    sends to each partition). A plain ``repartition(n)`` left them several rows apart (32 products over 3
    partitions: 9, 11 and 12), and a model batch is padded to its full size, so a partition one row over
    a multiple of the batch size costs its task a whole extra batch: with batches of 16, 32 products in
    17 and 15 rows made the job wait for a second batch of one image. The dealing runs in one task after
    a shuffle, on the products' rows only: what comes before it (the catalog read, an incremental
    night's join with the previous vectors) keeps its own tasks.
    """
    keys = partition_keys(partitions)
    route = F.element_at(
        F.array(*(F.lit(key) for key in keys)),
        (F.monotonically_increasing_id() % partitions + 1).cast(T.IntegerType()),
    )
    return (
        # Not coalesce(1): it would pull the stages before it into the one task.
        products_df.repartition(1)
        .sortWithinPartitions(catalog_schema.SKU)
        # In one partition the ids are 0, 1, 2, ...: the n-th sku goes to partition n % partitions.
        .withColumn(ROUTE_COL, route)
        .repartition(partitions, F.col(ROUTE_COL))
        .drop(ROUTE_COL)
        # Each batch's images in a fixed order (a reduce task receives the map outputs in any order):
        # the same batches on a rerun. The vectors do not depend on it (batches are padded to one size).
        .sortWithinPartitions(catalog_schema.SKU)
    )


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


def read_embeddings(spark: SparkSession, uri: str) -> DataFrame:
    """An embeddings partition with its declared schema."""
    return spark.read.schema(embeddings_schema.EMBEDDING_SCHEMA).parquet(storage.spark_path(uri))


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
    embeddings_df = to_embed_df.transform(spread_evenly, partitions).transform(
        with_embeddings, make_embed_udf(config, model_images), model, weights_sha256
    )
    if reused_df is not None:
        embeddings_df = embeddings_df.unionByName(reused_df)
    return EmbedPlan(embeddings_df, partitions, to_embed, hashed_df, hash_seconds)


@dataclass(frozen=True)
class EmbedOutcome:
    """What the staged output holds, counted: the funnel and the products' fate."""

    rows_in: int
    rows_written: int
    ok: int
    errors_by_reason: dict[str, int]
    rejects_by_reason: dict[str, int]
    reused: int
    removed: int | None

    @property
    def products(self) -> int:
        return self.rows_in - sum(self.rejects_by_reason.values())

    @property
    def funnel(self) -> Funnel:
        rejected = {**self.rejects_by_reason, **self.errors_by_reason}
        return Funnel(rows_in=self.rows_in, rows_out=self.ok, rejected_by_reason=rejected)

    @property
    def by_fate(self) -> dict[str, int | None]:
        """reused + embedded + failed = products; removed: previous products no longer in the catalog."""
        return {
            "reused": self.reused,
            "embedded": self.ok - self.reused,
            "failed": self.rows_written - self.ok,
            "removed": self.removed,
        }


def read_input(spark: SparkSession, spec: EmbedSpec) -> DataFrame:
    """The catalog rows, or the images root's listing as catalog rows, each with its reject reason."""
    input_df = read_catalog(spark, spec.catalog) if spec.catalog else list_images(spark, spec.images_root)
    return input_df.transform(with_reject_reason)


def count_input(checked_df: DataFrame, spec: EmbedSpec) -> int:
    """The input rows (JobError when there is none)."""
    rows_in = checked_df.count()
    LOG.info("%d input rows (%s) read and checked", rows_in, spec.input_kind)
    if rows_in == 0:
        where = f"--catalog {spec.catalog}" if spec.catalog else f"--images-root {spec.images_root}"
        raise JobError(f"no input images: {where} has no products")
    return rows_in


PROBE_SCHEMA = pa.schema([("reason", pa.string()), ("autocast", pa.string())])


def probe_executor(spark: SparkSession, spec: EmbedSpec) -> Future[tuple[str | None, str | None]]:
    """Ask one executor task, in the background, how it would run the model: whether CUDA is usable
    (``--device cuda``) and the autocast dtype ``--precision`` resolves to on its device
    (:func:`udfs.embed_images.probe_task`). Where GPU resources are configured, every task runs on a GPU
    executor. A daemon thread: a job that fails before it needs the answer exits without waiting for it.

    The task is a SQL one (``mapInArrow``), like the embedding's: Spark keeps another daemon and other
    Python workers for RDD tasks, so the worker the probe starts is one the embedding reuses."""
    device, precision = spec.device, spec.precision

    def probe(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            answers = [probe_task(device, precision) for _ in range(batch.num_rows)]
            rows = [dict(zip(PROBE_SCHEMA.names, answer, strict=True)) for answer in answers]
            yield pa.RecordBatch.from_pylist(rows, schema=PROBE_SCHEMA)

    task = spark.range(0, 1, 1, 1).mapInArrow(probe, "reason string, autocast string")
    answer: Future[tuple[str | None, str | None]] = Future()

    def ask() -> None:
        try:
            (row,) = task.collect()
            answer.set_result((row["reason"], row["autocast"]))
        except BaseException as error:  # handed to the caller of result()
            answer.set_exception(error)

    threading.Thread(target=ask, name="embed-probe", daemon=True).start()
    return answer


def resolve_autocast(probe: Future[tuple[str | None, str | None]]) -> str | None:
    """The run's autocast dtype from the executor's answer.

    Raises:
        JobError: ``--device cuda`` and the executors have no usable GPU: never a silent CPU run.
    """
    reason, autocast = probe.result()
    if reason:
        raise JobError(f"--device cuda: {reason} (on the executors); refusing to embed on CPU")
    return autocast


def log_mode(previous: PreviousRun, is_full: bool) -> None:
    if previous.is_reusable or is_full:
        LOG.info("%s run: %s", MODE_INCREMENTAL if previous.is_reusable else MODE_FULL, previous.reason)
    else:
        LOG.warning("full run (every product is embedded): %s", previous.reason)


def stage_rejects(run: StagedRun, checked_df: DataFrame) -> None:
    """Write the catalog rows quarantined with their reason to staging."""
    checked_df.transform(select_rejects).write.parquet(storage.spark_path(run.staged(REJECTS_DIR)))
    run.lap("rejects")


def stage_embeddings(
    spark: SparkSession, run: StagedRun, plan: EmbedPlan, *, fingerprint: dict[str, Any], batch_size: int,
) -> float:
    """Write the embeddings (with the fingerprint beside them) to staging; returns the seconds it took."""
    staged_embeddings = run.staged(EMBEDDINGS_DIR)
    embed_started = time.time()
    # One Arrow batch = one model batch: executor memory stays flat whatever the catalog size.
    with sql_conf(spark, {ARROW_MAX_RECORDS: str(batch_size)}):
        plan.embeddings_df.write.parquet(storage.spark_path(staged_embeddings))
    embed_seconds = time.time() - embed_started
    LOG.info("embeddings staged in %.1fs on %d partitions", embed_seconds, plan.partitions)
    storage.write_json(storage.join(staged_embeddings, CONFIG_FILE), fingerprint)
    run.lap("embed")
    return embed_seconds


def read_staged(run: StagedRun, with_vectors: bool) -> pa.Table:
    """The staged embeddings' status and error columns, read back on the driver (and their sku and
    embedding columns for the quality gate: the driver holds every vector, as the similarity job's does)."""
    columns = [embeddings_schema.STATUS, embeddings_schema.ERROR]
    if with_vectors:
        columns += [embeddings_schema.SKU, embeddings_schema.EMBEDDING]
    return storage.read_parquet(run.staged(EMBEDDINGS_DIR), columns=columns)


def _reason(error: str | None) -> str | None:
    """The reason word of an error value (``"missing_file: ..."`` -> ``missing_file``)."""
    return None if error is None else error.split(":", 1)[0]


def count_outputs(
    spark: SparkSession, run: StagedRun, written: pa.Table, checked_df: DataFrame, rows_in: int,
    plan: EmbedPlan, previous: PreviousRun,
) -> EmbedOutcome:
    """Count what was staged (``written``: :func:`read_staged`); the funnel must balance and every product
    have exactly one row."""
    by_status = Counter(
        zip(
            written.column(embeddings_schema.STATUS).to_pylist(),
            map(_reason, written.column(embeddings_schema.ERROR).to_pylist()),
            strict=True,
        )
    )
    # Spark writes a file for an empty frame too: no file here is a fault, and read_parquet says so.
    rejects = storage.read_parquet(run.staged(REJECTS_DIR), columns=[embeddings_schema.REJECT_REASON])
    rejects_by_reason = dict(Counter(rejects.column(embeddings_schema.REJECT_REASON).to_pylist()))
    ok = sum(n for (status, _), n in by_status.items() if status == embeddings_schema.STATUS_OK)
    errors_by_reason = {
        str(reason): n for (status, reason), n in sorted(by_status.items())
        if status == embeddings_schema.STATUS_ERROR
    }
    outcome = EmbedOutcome(
        rows_in=rows_in, rows_written=sum(by_status.values()), ok=ok, errors_by_reason=errors_by_reason,
        rejects_by_reason=rejects_by_reason, reused=0, removed=None,
    )
    check_funnel(STAGE, outcome.funnel)
    if outcome.rows_written != outcome.products:
        raise RuntimeError(
            f"{STAGE}: wrote {outcome.rows_written} embedding rows for {outcome.products} products"
        )
    removed = None
    if previous.uri is not None:
        removed = read_embeddings(spark, previous.uri).transform(
            filter_removed, checked_df.transform(select_products)
        ).count()
    reused = 0 if plan.to_embed is None else outcome.products - plan.to_embed
    return dataclasses.replace(outcome, reused=reused, removed=removed)


def report_details(
    spec: EmbedSpec, details: dict[str, Any], outcome: EmbedOutcome, plan: EmbedPlan, previous: PreviousRun,
    *, fingerprint: dict[str, Any], images_through_model: int, embed_seconds: float, finals: dict[str, str],
) -> dict[str, Any]:
    """The report's details beside the funnel."""
    return {
        **details,
        "input": spec.input_kind,
        "catalog": spec.catalog,
        "images_root": spec.images_root,
        # Every product has a row in the output: ok rows have an embedding, error rows say why not.
        "rows_written": outcome.rows_written,
        "embeddings_ok": outcome.ok,
        "embeddings_error_by_reason": outcome.errors_by_reason,
        "catalog_rejects_by_reason": outcome.rejects_by_reason,
        "partitions": plan.partitions,
        "mode": MODE_INCREMENTAL if previous.is_reusable else MODE_FULL,
        "mode_reason": previous.reason,
        "previous_embeddings": previous.uri,
        "products": outcome.by_fate,
        # Counted by the embedding UDF as it calls the model (a retried task counts again).
        "images_through_model": images_through_model,
        "config_fingerprint": fingerprint,
        "hash_seconds": round(plan.hash_seconds, 3),
        "embed_seconds": round(embed_seconds, 3),
        "images_per_second": round(outcome.rows_written / embed_seconds, 2) if embed_seconds > 0 else None,
        "outputs": {"embeddings": finals[EMBEDDINGS_DIR], "rejects": finals[REJECTS_DIR]},
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the embedding job; returns the run report."""
    args = build_parser().parse_args(argv)
    spec = EmbedSpec.from_args(args)
    run = StagedRun(RunSpec.from_args(STAGE, args), [EMBEDDINGS_DIR, REJECTS_DIR], log=LOG)
    # The JVM starts while the driver checks the model and the inputs. Its rows are the catalog's (or the
    # images root's listing, one short row per file): the images themselves only the Python workers read.
    starting = start_spark(JOB_NAME, inputs=[spec.catalog])
    config, details = resolve_model(spec)
    check_inputs(spec)
    run.check_output(inputs={"--catalog": spec.catalog, "--images-root": spec.images_root})
    spark = starting.result()
    # The job's Python tasks fork from a worker daemon that has imported torch and the embedding code, once
    # per executor. The probe, the first of them, starts its executor's daemon while the catalog is read.
    with preloaded_workers(spark, WORKER_MODULES):
        return embed_and_publish(spark, spec, run, config, details)


def embed_and_publish(
    spark: SparkSession, spec: EmbedSpec, run: StagedRun, config: EmbedConfig, details: dict[str, Any]
) -> dict[str, Any]:
    """The run once the session is up and the model and inputs are checked: read and check the input,
    stage the rejects and the embeddings, gate and publish them; returns the run report."""
    probe = probe_executor(spark, spec)  # the catalog is read meanwhile
    if spec.device == image_models.DEVICE_CUDA:
        resolve_autocast(probe)  # a missing GPU is refused before any input is read
    run.lap("model_check_and_session")
    with run:
        checked_df = run.persist(read_input(spark, spec), StorageLevel.MEMORY_AND_DISK_DESER)
        rows_in = count_input(checked_df, spec)
        run.lap("read_catalog")
        stage_rejects(run, checked_df)  # needs no model: written while the probe's daemon imports torch
        config = dataclasses.replace(config, autocast=resolve_autocast(probe))
        run.lap("workers_ready")  # the probe answers once the worker daemon has its modules
        details["autocast"] = config.autocast or "fp32"
        fingerprint = embed_fingerprint(config, details, spark.sparkContext.getConf())
        previous = find_previous(run.spec.output, run.spec.run_date, fingerprint, is_full=spec.is_full)
        log_mode(previous, spec.is_full)
        model_images = spark.sparkContext.accumulator(0)
        plan = plan_embeddings(spark, checked_df, rows_in, config, details, previous, model_images)
        run.on_exit(plan.release)
        run.lap("previous_and_hashes")
        embed_seconds = stage_embeddings(
            spark, run, plan, fingerprint=fingerprint, batch_size=spec.batch_size
        )
        context = {EMBEDDING_DIM: details["dimensions"]}
        suite = run.suite(EMBEDDINGS, context)
        written = read_staged(run, with_vectors=suite is not None)
        outcome = count_outputs(spark, run, written, checked_df, rows_in, plan, previous)
        run.lap("counts")
        if outcome.ok == 0:
            raise JobError(
                f"no image could be embedded ({outcome.rows_written} products, errors by reason "
                f"{outcome.errors_by_reason}): check --images-root {spec.images_root}"
            )
        staged_df = functools.partial(read_embeddings, spark, run.staged(EMBEDDINGS_DIR))
        # The gate counts the suite on the table the counts were read from; Spark checks the staged files
        # only when those counts do not prove every expectation met (then with examples).
        checked: Checked = staged_df() if suite is None else WrittenCounts(
            suite, (quality_pass.table_partial(suite, written),), staged=staged_df, counted_by="driver"
        )
        run.gate(
            {EMBEDDINGS: checked},
            context={
                **context,
                ROWS_IN: outcome.funnel.rows_in,
                ROWS_REJECTED: outcome.funnel.rows_rejected,
            },
        )
        run.lap("quality")
        run.publish()
    LOG.info(
        "%s of %d products: %s; %d catalog rows quarantined; %d images through the model; write stage %.1fs",
        MODE_INCREMENTAL if previous.is_reusable else MODE_FULL, outcome.products, outcome.by_fate,
        rows_in - outcome.products, model_images.value, embed_seconds,
    )
    details = report_details(
        spec, details, outcome, plan, previous, fingerprint=fingerprint,
        images_through_model=model_images.value, embed_seconds=embed_seconds, finals=run.finals,
    )
    return run.report(outcome.funnel, details)


if __name__ == "__main__":
    raise SystemExit(run_job(main))
