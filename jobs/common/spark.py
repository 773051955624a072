"""The one SparkSession builder every job and test uses.

Run by hand, by ``python -m jobs.<name>`` or by the tests, the session gets local defaults
(``local[*]``, few shuffle partitions, no UI). Launched by ``spark-submit`` (EMR steps, the real
``spark-submit`` in ``make dist``'s test) or inside AWS Glue, the cluster's settings win: the
builder then sets nothing but the application name and the job's own runtime SQL settings.

A local JVM that will read few rows compiles with C1 only (:data:`SMALL_INPUT_BYTES`): on a sample-sized
run, or where Python tasks read the data, the JVM spends more CPU compiling with C2 than C2's code saves.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

from pyspark import SparkContext
from pyspark.sql import SparkSession

from jobs.common import jvm_archive, storage, worker_daemon

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
    # The local JVM is driver and executor: the parallel collector's throughput beats G1's (the default)
    # on these batch jobs, and it spends no CPU on concurrent marking (bench/RESULTS.md, "preprocess":
    # 10 M events in 180.4 s, against 187.9 and 194.5 s with G1).
    "spark.driver.extraJavaOptions": "-XX:+UseParallelGC",
    "spark.sql.sources.partitionOverwriteMode": "dynamic",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    # Only loopback is reachable on laptops and CI sandboxes; don't guess a public interface.
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
    # Python workers fork from a daemon that first imports the modules a job names
    # (preloaded_workers); without a name, PySpark's own daemon.
    worker_daemon.DAEMON_CONF: worker_daemon.__name__,
    # Local runs write where the user points, not into ./spark-warehouse.
    "spark.sql.warehouse.dir": os.path.join(os.environ.get("TMPDIR", "/tmp"), "stylegraph-warehouse"),
}

# A local JVM whose job reads at most this many bytes of rows in the JVM compiles with C1 only
# (``-XX:TieredStopAtLevel=1``). There, most of the JVM's work is its first pass through Spark's own
# code, and C2's optimising compiles cost more CPU than their code saves; past a few tens of MB of rows
# C2's faster code wins. The threshold rests on by-hand runs of preprocess at 0.6, 46 and 152 MB of logs
# and of similarity, listed in bench/RESULTS.md ("cold"); `bench.cold` measures the result.
SMALL_INPUT_BYTES = 32 * 1024 * 1024
C1_ONLY = "-XX:TieredStopAtLevel=1"

# Settings every job relies on, wherever it runs (applied after creation, so they are runtime SQL confs).
RUNTIME_DEFAULTS: dict[str, str] = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.sources.partitionOverwriteMode": "dynamic",
}


def local_settings(input_bytes: int | None = None) -> dict[str, str]:
    """The settings of a local session: :data:`LOCAL_DEFAULTS`, the driver JVM also mapping the
    class-data archive where ``make jvm-archive`` built one (``jobs.common.jvm_archive``), and compiling
    with C1 only when the job's input is known to be small (``input_bytes`` at most
    :data:`SMALL_INPUT_BYTES`; None: unknown, the tiered compiler)."""
    settings = dict(LOCAL_DEFAULTS)
    java_options = "spark.driver.extraJavaOptions"
    extra = [jvm_archive.java_options()]
    if input_bytes is not None and input_bytes <= SMALL_INPUT_BYTES:
        extra.append(C1_ONLY)
    settings[java_options] = " ".join([settings[java_options], *filter(None, extra)])
    return settings


def input_size(uris: Iterable[str | None]) -> int | None:
    """Bytes of the local files at ``uris`` (a file, or every file below a folder; a missing one, an
    unreadable one or a None counts 0); None when one is remote (sizing it would mean listing object
    storage) or when a local session would not be started here (spark-submit, Glue, or a session already
    running)."""
    if is_cluster_launched():
        return None
    total = 0
    for uri in filter(None, uris):
        if storage.is_remote(uri):
            return None
        path = storage.local_path(uri)
        files = [path] if os.path.isfile(path) else [
            os.path.join(folder, name) for folder, _, names in os.walk(path) for name in names
        ]
        for file in files:
            try:
                total += os.path.getsize(file)
            except OSError:  # gone since the listing, or a dangling link: nothing a job will read
                continue
    return total


def is_cluster_launched() -> bool:
    """True when spark-submit (or Glue) started this Python process, so its settings must win."""
    return "PYSPARK_GATEWAY_PORT" in os.environ or SparkContext._active_spark_context is not None


def get_spark(
    app_name: str,
    *,
    master: str | None = None,
    conf: Mapping[str, str] | None = None,
    inputs: Sequence[str | None] | None = None,
) -> SparkSession:
    """Return the active SparkSession or build one.

    Args:
        app_name: the application name shown by YARN, Glue and the Spark UI.
        master: local master for runs outside spark-submit; default ``$STYLEGRAPH_SPARK_MASTER``
            or ``local[*]``. Ignored under spark-submit or Glue.
        conf: runtime SQL settings the job needs (e.g. Arrow batch size); set on the session
            whichever way it was launched.
        inputs: the files whose rows the job's JVM reads (local paths or URIs; ``[]``: none, the data
            goes through Python tasks only); None: not known. A local JVM started for at most
            :data:`SMALL_INPUT_BYTES` of them compiles with C1 only. Measured only when a local JVM starts.

    Returns:
        The session. Under spark-submit or Glue, the one their settings built.
    """
    builder = SparkSession.builder.appName(app_name)
    if not is_cluster_launched():
        # Python workers (pandas UDFs) run this interpreter, the venv's, not whatever python3 is on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = builder.master(master or os.environ.get(MASTER_ENV, DEFAULT_LOCAL_MASTER))
        settings = local_settings(input_size(inputs) if inputs is not None else None)
        for key, value in settings.items():
            builder = builder.config(key, value)
    spark = builder.getOrCreate()
    for key, value in {**RUNTIME_DEFAULTS, **(conf or {})}.items():
        spark.conf.set(key, value)
    LOG.debug("SparkSession %s on %s", app_name, spark.sparkContext.master)
    return spark


@contextmanager
def preloaded_workers(spark: SparkSession, modules: Sequence[str]) -> Iterator[None]:
    """The Python functions the job defines within the block (UDFs, ``mapInArrow`` functions: Spark takes
    the worker environment when one is defined) run in workers forked from a daemon that has imported
    ``modules`` first (:mod:`jobs.common.worker_daemon`): an executor imports them once instead of each
    worker. Enter it before the job defines its first one.

    Spark keeps a daemon, and its idle workers, per worker environment: functions defined outside the block
    (another job of the same session) keep the daemon they had, without the job's modules. Where the
    daemon is PySpark's own (a cluster that does not set ``spark.python.daemon.module`` to
    :mod:`jobs.common.worker_daemon`), nothing changes."""
    environment = spark.sparkContext.environment
    previous = environment.get(worker_daemon.PRELOAD_ENV)
    environment[worker_daemon.PRELOAD_ENV] = ",".join(modules)
    try:
        yield
    finally:
        if previous is None:
            environment.pop(worker_daemon.PRELOAD_ENV, None)
        else:
            environment[worker_daemon.PRELOAD_ENV] = previous


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


_MASK32 = 0xFFFFFFFF
HASH_SEED = 42  # Spark's Murmur3Hash seed (F.hash and hash partitioning)


def _rotl32(value: int, bits: int) -> int:
    return ((value << bits) | (value >> (32 - bits))) & _MASK32


def murmur3_int(value: int, seed: int = HASH_SEED) -> int:
    """Spark's ``Murmur3_x86_32.hashInt``: ``F.hash`` of an int column, as a signed 32-bit int."""
    k1 = (value & _MASK32) * 0xCC9E2D51 & _MASK32
    k1 = _rotl32(k1, 15) * 0x1B873593 & _MASK32
    h1 = _rotl32((seed & _MASK32) ^ k1, 13)
    h1 = (h1 * 5 + 0xE6546B64) & _MASK32
    h1 ^= 4  # the input's length in bytes
    h1 ^= h1 >> 16
    h1 = h1 * 0x85EBCA6B & _MASK32
    h1 ^= h1 >> 13
    h1 = h1 * 0xC2B2AE35 & _MASK32
    h1 ^= h1 >> 16
    return h1 - (1 << 32) if h1 & 0x80000000 else h1


def partition_keys(partitions: int) -> list[int]:
    """An int key per partition ``p`` (the smallest >= 0) that ``repartition(partitions, key)`` sends to
    partition ``p``: Spark's hash partitioning is ``pmod(murmur3(key), partitions)``.

    Lets a job place a few groups exactly (``repartition`` by a small key scatters them: 7 keys over 7
    partitions left 3 empty). Only the balance rests on it: rows of one key still meet in one partition
    whatever Spark's hash is.
    """
    keys: dict[int, int] = {}
    candidate = 0
    while len(keys) < partitions:
        keys.setdefault(murmur3_int(candidate) % partitions, candidate)  # Python's % is pmod
        candidate += 1
    return [keys[p] for p in range(partitions)]


class SparkStart:
    """A SparkSession being built in a background thread (:func:`start_spark`): the JVM starts while the
    driver checks its arguments and inputs, which needs no Spark. :meth:`result` waits for it."""

    def __init__(
        self, app_name: str, conf: Mapping[str, str] | None = None, inputs: Sequence[str | None] | None = None
    ) -> None:
        self._session: SparkSession | None = None
        self._error: BaseException | None = None
        # A daemon thread: a job that fails its checks exits without waiting for a JVM it will not use.
        self._thread = threading.Thread(
            target=self._build, args=(app_name, conf, inputs), name=f"spark-start-{app_name}", daemon=True
        )
        self._thread.start()

    def _build(
        self, app_name: str, conf: Mapping[str, str] | None, inputs: Sequence[str | None] | None
    ) -> None:
        try:
            session = get_spark(app_name, conf=conf, inputs=inputs)
            # A first DataFrame, analysed and never run, builds the session's SQL state (analyser,
            # catalog), half a second of a cold JVM that the job's first query would otherwise wait for.
            session.range(1)
            self._session = session
        except BaseException as error:  # handed to the caller of result()
            self._error = error

    def result(self) -> SparkSession:
        """The session, once built; raises what building it raised."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._session is not None
        return self._session


def start_spark(
    app_name: str, *, conf: Mapping[str, str] | None = None, inputs: Sequence[str | None] | None = None
) -> SparkStart:
    """Start building the job's session (:func:`get_spark`) in the background; ``.result()`` gives it.

    For jobs whose first steps are driver checks (the embed job's model and weights, the similarity
    job's reading of every input row with pyarrow): the JVM's start, a few seconds, overlaps them."""
    return SparkStart(app_name, conf, inputs)
