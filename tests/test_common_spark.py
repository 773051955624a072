"""The one SparkSession builder: local defaults by hand, cluster settings win under spark-submit."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from jobs.common import spark as spark_module
from jobs.common import worker_daemon


def test_jobs_reuse_the_running_session_and_get_runtime_settings(spark) -> None:
    again = spark_module.get_spark("a-job", conf={"spark.sql.execution.arrow.maxRecordsPerBatch": "64"})
    assert again is spark
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"
    assert spark.conf.get("spark.sql.sources.partitionOverwriteMode") == "dynamic"
    assert spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch") == "64"
    assert spark.sparkContext.master == "local[2]"
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "10000")


def test_the_local_jvm_runs_the_parallel_collector(spark) -> None:
    beans = spark.sparkContext._jvm.java.lang.management.ManagementFactory.getGarbageCollectorMXBeans()
    assert sorted(bean.getName() for bean in beans) == ["PS MarkSweep", "PS Scavenge"]


def test_spark_submit_launch_is_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spark_module.SparkContext, "_active_spark_context", None)
    monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)
    assert not spark_module.is_cluster_launched()
    monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "40123")
    assert spark_module.is_cluster_launched()


def test_task_slots_reads_the_master(spark) -> None:
    from jobs.common.spark import task_slots

    # The shared test session runs local[2] with spark.default.parallelism 8: slots are the cores.
    assert spark.sparkContext.master == "local[2]"
    assert spark.sparkContext.defaultParallelism == 8
    assert task_slots(spark) == 2


@pytest.mark.parametrize(
    ("master", "default_parallelism", "expected"),
    [("local[3]", 8, 3), ("local[4, 2]", 8, 4), ("local[*]", 8, None), ("local", 8, 1),
     ("yarn", 48, 48), ("spark://host:7077", 0, 1)],
)
def test_task_slots_by_master(master: str, default_parallelism: int, expected: int | None) -> None:
    import os
    from types import SimpleNamespace

    from jobs.common.spark import task_slots

    context = SimpleNamespace(master=master, defaultParallelism=default_parallelism)
    fake = SimpleNamespace(sparkContext=context)
    assert task_slots(fake) == (expected if expected is not None else os.cpu_count())


def test_murmur3_int_is_sparks_hash(spark) -> None:
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    values = [0, 1, -1, 7, 42, 2**31 - 1, -(2**31), 123456789, -987654321]
    df = spark.createDataFrame([(v,) for v in values], T.StructType([T.StructField("v", T.IntegerType())]))
    expected = [row[0] for row in df.select(F.hash("v")).collect()]
    assert [spark_module.murmur3_int(v) for v in values] == expected


@pytest.mark.parametrize("partitions", [1, 2, 3, 7])
def test_partition_keys_land_in_their_partition(spark, partitions: int) -> None:
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    keys = spark_module.partition_keys(partitions)
    assert len(set(keys)) == partitions
    df = spark.createDataFrame([(k,) for k in keys], T.StructType([T.StructField("k", T.IntegerType())]))
    placed = dict(df.repartition(partitions, "k").select("k", F.spark_partition_id()).collect())
    assert [placed[k] for k in keys] == list(range(partitions))


def test_start_spark_gives_the_session_and_raises_what_building_it_raised(spark, monkeypatch):
    assert spark_module.start_spark("stylegraph-test").result() is spark

    def refuse(app_name, conf=None, inputs=()):
        raise RuntimeError(f"no JVM for {app_name}")

    monkeypatch.setattr(spark_module, "get_spark", refuse)
    starting = spark_module.start_spark("refused")
    with pytest.raises(RuntimeError, match="no JVM for refused"):
        starting.result()


def test_small_local_inputs_get_a_c1_only_jvm(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiler follows the input: C1 only up to SMALL_INPUT_BYTES, the tiered compiler above it and
    when the size is unknown (remote inputs, spark-submit, Glue)."""
    small = spark_module.SMALL_INPUT_BYTES
    assert spark_module.C1_ONLY not in spark_module.local_settings()["spark.driver.extraJavaOptions"]
    assert spark_module.C1_ONLY in spark_module.local_settings(small)["spark.driver.extraJavaOptions"].split()
    assert spark_module.C1_ONLY not in spark_module.local_settings(small + 1)["spark.driver.extraJavaOptions"]
    # Every other local setting is the same whichever compiler runs.
    without = spark_module.local_settings(small + 1)
    with_c1 = spark_module.local_settings(0)
    assert {k: v for k, v in with_c1.items() if k != "spark.driver.extraJavaOptions"} == {
        k: v for k, v in without.items() if k != "spark.driver.extraJavaOptions"
    }
    assert with_c1["spark.driver.extraJavaOptions"].startswith(without["spark.driver.extraJavaOptions"])

    monkeypatch.setattr(spark_module.SparkContext, "_active_spark_context", None)
    monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)
    logs = tmp_path / "logs"
    (logs / "dt=2024-03-30").mkdir(parents=True)
    (logs / "dt=2024-03-30" / "part-0.jsonl").write_bytes(b"x" * 1000)
    (logs / "dt=2024-03-30" / "part-1.jsonl").write_bytes(b"x" * 24)
    catalog = tmp_path / "catalog.csv"
    catalog.write_bytes(b"y" * 7)
    assert spark_module.input_size([str(logs), f"file://{catalog}"]) == 1031
    (logs / "dt=2024-03-30" / "gone.jsonl").symlink_to(tmp_path / "nowhere")  # a dangling link counts 0
    assert spark_module.input_size([None, str(logs), None, str(catalog)]) == 1031  # an option not given
    assert spark_module.input_size([str(tmp_path / "missing")]) == 0
    assert spark_module.input_size([str(catalog), "s3://bucket/logs/"]) is None
    monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "40123")  # spark-submit's settings win: nothing to size
    assert spark_module.input_size([str(catalog)]) is None


def test_a_running_session_is_reused_without_sizing_inputs(spark, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_listing(uris):
        raise AssertionError(f"sized {uris} although the JVM is running")

    monkeypatch.setattr(spark_module, "input_size", no_listing)
    assert spark_module.get_spark("another-job", inputs=["/no/such/input"]) is spark


def test_a_local_jvm_started_for_a_small_input_compiles_with_c1_only(tmp_path) -> None:
    """A real JVM: the option reaches it for a small input and for none (a job whose rows only Python
    tasks read), not for an unknown one."""
    import subprocess
    import sys

    (tmp_path / "input.csv").write_text("sku\n1\n")
    script = (
        "import sys\n"
        "from jobs.common.spark import get_spark\n"
        "inputs = None if sys.argv[1:] == ['unknown'] else sys.argv[1:]\n"
        "spark = get_spark('jit-check', master='local[1]', inputs=inputs)\n"
        "bean = spark.sparkContext._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean()\n"
        "print('ARGS', ' '.join(bean.getInputArguments()))\n"
    )
    for inputs, expected in (([str(tmp_path / "input.csv")], True), ([], True), (["unknown"], False)):
        done = subprocess.run(
            [sys.executable, "-c", script, *inputs], capture_output=True, text=True, timeout=120, check=True
        )
        args = next(line for line in done.stdout.splitlines() if line.startswith("ARGS "))
        assert (spark_module.C1_ONLY in args.split()) is expected, args


def _loaded_in_worker(spark, names: tuple[str, ...]) -> list[str]:
    """Which of ``names`` a Python worker holds when its task starts (a SQL task, as the jobs' UDFs)."""
    import pyarrow as pa

    def report(batches):
        import sys

        for _ in batches:
            yield pa.RecordBatch.from_pylist([{"loaded": ",".join(n for n in names if n in sys.modules)}])

    (row,) = spark.range(0, 1, 1, 1).mapInArrow(report, "loaded string").collect()
    return [name for name in row["loaded"].split(",") if name]


def test_python_workers_fork_with_the_modules_a_job_preloads(spark) -> None:
    """Real workers: inside ``preloaded_workers`` the job's tasks run in workers that hold the modules
    before the task imports anything; a module that cannot be imported, or one that writes to stdout (the
    daemon's channel for its port), does not stop the daemon. After the block the session's tasks (another
    job's) run in workers without them again."""
    probes = ("wave", "xml.dom.minidom")  # standard modules no worker imports on its own
    environment = dict(spark.sparkContext.environment)
    assert _loaded_in_worker(spark, probes) == []
    with spark_module.preloaded_workers(spark, [*probes, "this"]):
        assert _loaded_in_worker(spark, probes) == list(probes)
        with spark_module.preloaded_workers(spark, ["wave"]):
            assert _loaded_in_worker(spark, probes) == ["wave"]
        assert spark.sparkContext.environment[worker_daemon.PRELOAD_ENV] == "wave,xml.dom.minidom,this"
    assert _loaded_in_worker(spark, probes) == []
    assert spark.sparkContext.environment == environment
    # A module that cannot be imported: the daemon starts again as PySpark's, nothing half imported.
    with spark_module.preloaded_workers(spark, [*probes, "stylegraph_no_such_module"]):
        assert _loaded_in_worker(spark, probes) == []


def test_the_daemons_preload_keeps_stdout_clean_and_bounds_what_it_writes(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """stdout carries the daemon's port; stderr is not read before it, so what the imports write there
    is held and its end passed on; the first failure stops the preload."""
    for name in ("this", "wave"):  # this prints the Zen of Python when imported
        monkeypatch.delitem(sys.modules, name, raising=False)
    (tmp_path / "stylegraph_chatty.py").write_text("print('x' * 20000, end='')\nprint('the end')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert worker_daemon.modules_to_preload(" torch, ,udfs.embed_images ") == ["torch", "udfs.embed_images"]
    assert worker_daemon.modules_to_preload(None) == []
    assert worker_daemon.preload(["this", "stylegraph_chatty"]) == []
    out, err = capfd.readouterr()
    assert out == ""
    assert len(err.encode()) == worker_daemon.MAX_OUTPUT_BYTES and err.endswith("x" * 100 + "the end\n")
    assert worker_daemon.preload(["stylegraph_no_such_module", "wave"]) == ["stylegraph_no_such_module"]
    out, err = capfd.readouterr()
    assert out == ""
    assert err == ("stylegraph worker daemon: cannot preload stylegraph_no_such_module: ModuleNotFoundError: "
                   "No module named 'stylegraph_no_such_module'\n")
    assert "wave" not in sys.modules


def test_the_embedding_modules_are_what_an_embedding_worker_imports(tmp_path) -> None:
    """In a fresh interpreter holding only what the embed job preloads, the embedding UDF's body on real
    images and a weights file (model load, decode, embed) imports nothing of torch, pandas, pyarrow or
    numpy of its own (Pillow's format plugins, milliseconds, it imports as images need them)."""
    import subprocess

    import torch

    from tests.test_embed_models import write_good_images
    from udfs import image_models as M

    names = [path.name for path in write_good_images(tmp_path / "images").values()]
    torch.save(M.build_classifier("resnet18", seed=1).state_dict(), tmp_path / "weights.pth")
    script = (
        "import importlib, json, sys\n"
        "from udfs import embed_images as E\n"
        "for name in E.WORKER_MODULES: importlib.import_module(name)\n"
        "before = set(sys.modules)\n"
        "import pandas as pd\n"
        "from udfs import image_models as M\n"
        "root, names = sys.argv[1], json.loads(sys.argv[2])\n"
        "weights = M.WeightsSpec('file', 'not checked here', uri=root + '/weights.pth')\n"
        "config = E.EmbedConfig(\n"
        "    model='resnet18', weights=weights, images_root=root + '/images', batch_size=2\n"
        ")\n"
        "frames = list(E.embed_path_batches([pd.Series(names)], config))\n"
        "assert sum(f['status'].eq('ok').sum() for f in frames) == len(names), frames\n"
        "heavy = ('torch', 'pandas', 'pyarrow', 'numpy')\n"
        "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in heavy))\n"
    )
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), json.dumps(names)], capture_output=True, text=True,
        cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
