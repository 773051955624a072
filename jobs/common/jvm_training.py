"""The training run of the JVM class-data archive (``jobs.common.jvm_archive.build`` runs it as its own
process): a local session doing the kinds of work the jobs do (SQL with shuffles, joins and windows,
Parquet, CSV, text and JSON, Arrow and pandas Python UDFs, collects), so that their classes are loaded
when the JVM writes the archive at exit (``-XX:ArchiveClassesAtExit``, set by the builder)."""
from __future__ import annotations

import tempfile
from collections.abc import Iterator

import pandas as pd
import pyarrow as pa
from pyspark import SparkContext
from pyspark.sql import Window
from pyspark.sql import functions as F

from jobs.common.spark import get_spark


def _arrow_task(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        yield pa.RecordBatch.from_arrays([batch.column(0)], names=["id"])


def _doubled(values: Iterator[pd.Series]) -> Iterator[pd.Series]:
    for series in values:
        yield series * 2


def train() -> None:
    spark = get_spark("stylegraph-jvm-archive")
    with tempfile.TemporaryDirectory(prefix="stylegraph-jvm-archive-") as tmp:
        frame = spark.range(0, 2000, 1, 4).select(
            F.col("id"),
            (F.col("id") % 7).alias("key"),
            F.concat(F.lit("s"), F.col("id").cast("string")).alias("sku"),
            F.array(F.col("id").cast("float"), F.lit(1.0).cast("float")).alias("vector"),
        )
        frame.write.mode("overwrite").parquet(f"{tmp}/parquet")
        frame.select("id", "key", "sku").write.mode("overwrite").option("header", True).option(
            "compression", "gzip"
        ).csv(f"{tmp}/csv")
        frame.select(F.to_json(F.struct("id", "sku")).alias("value")).write.mode("overwrite").text(
            f"{tmp}/text"
        )
        read = spark.read.parquet(f"{tmp}/parquet")
        lines = spark.read.text(f"{tmp}/text").select(
            F.from_json("value", "id long, sku string").alias("row"), F.col("_metadata.file_path")
        )
        window = Window.partitionBy("key").orderBy(F.col("id").desc())
        summary = (
            read.join(lines.select("row.id", "row.sku"), on="id", how="left")
            .withColumn("rank", F.row_number().over(window))
            .groupBy("key")
            .agg(F.count(F.lit(1)).alias("n"), F.max("rank").alias("top"), F.collect_list("id").alias("ids"))
            .persist()
        )
        summary.count()
        summary.collect()
        summary.unpersist()
        spark.read.option("header", True).csv(f"{tmp}/csv").repartition(3, "key").sortWithinPartitions(
            "id"
        ).write.mode("overwrite").parquet(f"{tmp}/csv-parquet")
        read.select("id").mapInArrow(_arrow_task, "id long").count()
        read.select(F.pandas_udf(_doubled, "long")("id").alias("twice")).agg(F.sum("twice")).collect()
        small = spark.createDataFrame([(1, "a")], "id long, sku string")
        small.write.mode("overwrite").parquet(f"{tmp}/small")
    spark.stop()
    # The JVM writes the archive as it exits: end it here (it exits when its stdin closes) and wait.
    jvm = SparkContext._gateway.proc
    jvm.stdin.close()
    if jvm.wait(timeout=300) != 0:
        raise RuntimeError(f"the JVM exited with {jvm.returncode} while writing the archive")


if __name__ == "__main__":
    train()
