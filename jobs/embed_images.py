"""Embed every product image with a CNN (issue 3): ``<output>/embeddings/dt=<run date>/``.

Input is the catalog CSV (``--catalog``; ``image_path`` relative to ``--images-root``) or, without a
catalog, every image file found recursively under ``--images-root`` (the sku is the file name without
its extension). Each product gets exactly one output row (``schemas/embeddings.py`` EMBEDDING_SCHEMA):
status "ok" with its embedding, or status "error" with a null embedding and ``"<reason>: <detail>"``.
Catalog rows without a sku, or repeating an earlier row's sku, are quarantined to
``<output>/rejects/embed/dt=<run date>/`` with their reason and get no embedding row.

Model, weights and head are checked on the driver before any Spark work (a clear JobError); the pandas
UDF in ``udfs/embed_images.py`` loads the model once per Python worker and reads the image files itself,
so no image bytes go through the JVM or a shuffle.

    python -m jobs.embed_images --catalog S/catalog/catalog.csv --images-root S/images \
        --output W/style --run-date 2024-03-31 --model resnet152 --weights s3://bucket/resnet152.pth
"""
from __future__ import annotations

import argparse
import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
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
from jobs.common.report import Funnel, check_funnel, write_report
from jobs.common.spark import get_spark, task_slots
from schemas import catalog as C
from schemas import embeddings as E
from udfs import image_models as M
from udfs.embed_images import EmbedConfig, make_embed_udf

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
        )
    )


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


# ---------------------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the embedding job; returns the run report."""
    started = time.time()
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

    input_kind = INPUT_CATALOG if args.catalog else INPUT_LISTING
    input_df = read_catalog(spark, args.catalog) if args.catalog else list_images(spark, args.images_root)
    checked_df = input_df.transform(with_reject_reason).persist()
    try:
        rows_in = checked_df.count()
        LOG.info("%d input rows (%s) read and checked in %.1fs", rows_in, input_kind, time.time() - started)
        if rows_in == 0:
            where = f"--catalog {args.catalog}" if args.catalog else f"--images-root {args.images_root}"
            raise JobError(f"no input images: {where} has no products")
        return _embed_and_publish(spark, args, config, details, checked_df, rows_in, input_kind, started)
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
) -> dict[str, Any]:
    partitions = partition_count(rows_in, task_slots(spark), args.batch_size)
    embeddings_df = (
        checked_df.transform(select_products)
        .repartition(partitions)
        # A reduce task receives the map outputs in any order, and the model's CPU kernels round
        # differently for different batch compositions: a fixed order in each partition makes the
        # batches, and so a rerun's embeddings, bit-identical.
        .sortWithinPartitions(C.SKU)
        .transform(with_embeddings, make_embed_udf(config), details["model"], details["weights_sha256"])
    )
    _, staged = storage.start_staging(args.output, STAGE)
    staged_embeddings = storage.join(staged, EMBEDDINGS_DIR)
    staged_rejects = storage.join(staged, *REJECTS_DIR)
    final_embeddings, final_rejects = final_folders(args).values()
    try:
        checked_df.transform(select_rejects).write.parquet(storage.spark_path(staged_rejects))
        embed_started = time.time()
        # One Arrow batch = one model batch: executor memory stays flat whatever the catalog size.
        with sql_conf(spark, {ARROW_MAX_RECORDS: str(args.batch_size)}):
            embeddings_df.write.parquet(storage.spark_path(staged_embeddings))
        embed_seconds = time.time() - embed_started
        LOG.info("embeddings staged in %.1fs on %d partitions", embed_seconds, partitions)

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
        outputs.mark_root(STAGE, args.output)
        storage.publish(staged_embeddings, final_embeddings)
        storage.publish(staged_rejects, final_rejects)
    finally:
        storage.finish_staging(staged)

    LOG.info(
        "embedded %d of %d products (%d error rows, %d catalog rows quarantined) in %.1fs",
        ok, products, rows_written - ok, rows_in - products, embed_seconds,
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
            "embed_seconds": round(embed_seconds, 3),
            "images_per_second": round(rows_written / embed_seconds, 2) if embed_seconds > 0 else None,
            "outputs": {"embeddings": final_embeddings, "rejects": final_rejects},
        },
    )


if __name__ == "__main__":
    raise SystemExit(run(main))
