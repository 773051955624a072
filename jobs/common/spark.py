"""The one SparkSession builder every job and test uses.

Run by hand, by ``python -m jobs.<name>`` or by the tests, the session gets local defaults
(``local[*]``, few shuffle partitions, no UI). Launched by ``spark-submit`` (EMR steps, the real
``spark-submit`` in ``make dist``'s test) or inside AWS Glue, the cluster's settings win: the
builder then sets nothing but the application name and the job's own runtime SQL settings.
"""
from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping

from pyspark import SparkContext
from pyspark.sql import SparkSession

LOG = logging.getLogger(__name__)

# Env var that overrides the local master (e.g. local[2] for benchmarks) without code changes.
MASTER_ENV = "STYLEGRAPH_SPARK_MASTER"
DEFAULT_LOCAL_MASTER = "local[*]"

LOCAL_DEFAULTS: dict[str, str] = {
    "spark.sql.shuffle.partitions": "8",
    "spark.default.parallelism": "8",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.session.timeZone": "UTC",
    "spark.driver.memory": "3g",
    "spark.sql.sources.partitionOverwriteMode": "dynamic",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    # Only loopback is reachable on laptops and CI sandboxes; don't guess a public interface.
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
    # Local runs write where the user points, not into ./spark-warehouse.
    "spark.sql.warehouse.dir": os.path.join(os.environ.get("TMPDIR", "/tmp"), "stylegraph-warehouse"),
}

# Settings every job relies on, wherever it runs (applied after creation, so they are runtime SQL confs).
RUNTIME_DEFAULTS: dict[str, str] = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.sources.partitionOverwriteMode": "dynamic",
}


def is_cluster_launched() -> bool:
    """True when spark-submit (or Glue) started this Python process, so its settings must win."""
    return "PYSPARK_GATEWAY_PORT" in os.environ or SparkContext._active_spark_context is not None


def get_spark(
    app_name: str,
    *,
    master: str | None = None,
    conf: Mapping[str, str] | None = None,
) -> SparkSession:
    """Return the active SparkSession or build one.

    Args:
        app_name: the application name shown by YARN, Glue and the Spark UI.
        master: local master for runs outside spark-submit; default ``$STYLEGRAPH_SPARK_MASTER``
            or ``local[*]``. Ignored under spark-submit or Glue.
        conf: runtime SQL settings the job needs (e.g. Arrow batch size); set on the session
            whichever way it was launched.

    Returns:
        The session. Under spark-submit or Glue, the one their settings built.
    """
    builder = SparkSession.builder.appName(app_name)
    if not is_cluster_launched():
        # Python workers (pandas UDFs) run this interpreter, the venv's, not whatever python3 is on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = builder.master(master or os.environ.get(MASTER_ENV, DEFAULT_LOCAL_MASTER))
        for key, value in LOCAL_DEFAULTS.items():
            builder = builder.config(key, value)
    spark = builder.getOrCreate()
    for key, value in {**RUNTIME_DEFAULTS, **(conf or {})}.items():
        spark.conf.set(key, value)
    LOG.debug("SparkSession %s on %s", app_name, spark.sparkContext.master)
    return spark


def task_slots(spark: SparkSession) -> int:
    """How many tasks run at once: N of a ``local[N]`` master (``local[*]``: this machine's cores,
    plain ``local``: 1), else the context's default parallelism (a cluster's total executor cores
    unless set). Used to size partitions so that a round of tasks fills the slots (embed, export)
    and to group similarity's block pairs.

    ``spark.default.parallelism`` is not the answer locally: the builder sets it to 8 for small
    shuffles whatever the core count."""
    master = spark.sparkContext.master
    match = re.fullmatch(r"local(?:\[(\*|\d+)(?:,\s*\d+)?\])?", master)
    if not match:
        return max(1, spark.sparkContext.defaultParallelism)
    if match.group(1) is None:
        return 1
    return (os.cpu_count() or 1) if match.group(1) == "*" else int(match.group(1))
