"""A publish no crash breaks: a simulated kill before every step of it, locally and on S3 (moto
server), with a reader checked at each point (the old partition whole or the new one whole, never
both, never neither), then the next run recovering; staging left by dead runs is cleaned."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.common import storage

DAY, OTHER_DAY = "2024-03-31", "2024-03-30"
OLD = [1, 2, 3]
NEW = [10, 11]
KEPT = [7]


class SimulatedKill(BaseException):
    """Raised by the fault hook: the run dies here (no ``except Exception`` catches it)."""


def _parquet(folder: str, values: list[int], name: str = "part-00000.parquet") -> None:
    fs, path = storage.filesystem(folder)
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path}/{name}") as stream:
        pq.write_table(pa.table({"user_idx": pa.array(values, pa.int32())}), stream)


def _steps(run) -> list[str]:
    """The publish steps of one uninterrupted run of ``run`` (recorded by the hook)."""
    seen: list[str] = []
    previous = storage.set_fault_hook(seen.append)
    try:
        run()
    finally:
        storage.set_fault_hook(previous)
    return seen


def _kill_at(index: int):
    count = {"n": 0}

    def hook(step: str) -> None:
        if count["n"] == index:
            raise SimulatedKill(step)
        count["n"] += 1

    return hook


def _forget_live_runs() -> None:
    """What the death of the process does to its runs: none is in progress any more."""
    storage._LIVE_RUNS.clear()


# ------------------------------------------------------------------------------------------- locally


def _local_tree(root: str) -> tuple[str, str]:
    """``root/train`` with two days; a run of ``preprocess`` staged the new ``DAY``."""
    _parquet(storage.partition_uri(root, "train", OTHER_DAY), KEPT)
    _parquet(storage.partition_uri(root, "train", DAY), OLD, "part-00000.parquet")
    _parquet(storage.partition_uri(root, "train", DAY), [], "part-00001.parquet")
    _, staging = storage.start_staging(root, "preprocess")
    staged = storage.join(staging, "train")
    _parquet(staged, NEW)
    return staging, staged


def _spark_rows(spark, root: str) -> tuple[list[tuple[str, int]], str]:
    """What Spark sees of the dataset root (partition discovery, as a reader of every day would)."""
    df = spark.read.parquet(storage.spark_path(storage.join(root, "train")))
    rows = sorted((str(r["dt"]), r["user_idx"]) for r in df.collect())
    return rows, df.schema["dt"].dataType.simpleString()


def _expected(values: list[int]) -> list[tuple[str, int]]:
    return sorted([(OTHER_DAY, v) for v in KEPT] + [(DAY, v) for v in values])


@pytest.mark.parametrize("has_exchange", [True, False], ids=["renameat2", "no-exchange"])
def test_a_kill_between_any_two_local_publish_steps_loses_nothing(
    spark, tmp_path, monkeypatch: pytest.MonkeyPatch, has_exchange: bool
) -> None:
    if not has_exchange:
        monkeypatch.setattr(storage, "_renameat2", None)
    probe = str(tmp_path / "probe")
    _, staged = _local_tree(probe)
    steps = _steps(lambda: storage.publish(staged, storage.partition_uri(probe, "train", DAY)))
    assert len(steps) >= (2 if has_exchange else 4)
    for index, step in enumerate(steps):
        root = str(tmp_path / f"kill{index}")
        staging, staged = _local_tree(root)
        final = storage.partition_uri(root, "train", DAY)
        monkeypatch.setattr(storage, "_fault_hook", _kill_at(index))
        with pytest.raises(SimulatedKill):
            storage.publish(staged, final)
        monkeypatch.setattr(storage, "_fault_hook", None)
        _forget_live_runs()

        rows, dt_type = _spark_rows(spark, root)
        if has_exchange or "set-aside" not in step:
            # Old whole or new whole; never both (no duplicated rows), never a day missing.
            assert rows in (_expected(OLD), _expected(NEW)), step
        else:
            # Without an exchange there is one instant with no folder at the final name; the old
            # one is hidden in staging, not read twice, and the next run puts it back.
            assert rows in (_expected(OLD), _expected([]), _expected(NEW)), step
        assert dt_type == "date", step  # no aside folder turned the partition column into strings

        # The next run of the stage recovers, then publishes its own output.
        assert storage.recover_staging(root, "preprocess") == [staging]
        assert _spark_rows(spark, root)[0] in (_expected(OLD), _expected(NEW)), step
        _, staging2 = storage.start_staging(root, "preprocess")
        _parquet(storage.join(staging2, "train"), NEW)
        storage.publish(storage.join(staging2, "train"), final)
        storage.finish_staging(staging2)
        assert _spark_rows(spark, root) == (_expected(NEW), "date"), step
        assert sorted(os.listdir(os.path.join(root, "train"))) == [f"dt={OTHER_DAY}", f"dt={DAY}"]
        assert not os.path.exists(os.path.join(root, storage.STAGING_DIR)), step


def test_a_kill_of_the_older_publish_is_repaired_by_the_next_one(spark, tmp_path) -> None:
    """The older publish left ``dt=D.__replaced-<id>`` (a name Spark reads) and no ``dt=D``."""
    root = str(tmp_path)
    _parquet(storage.partition_uri(root, "train", OTHER_DAY), KEPT)
    _parquet(storage.join(root, "train", f"dt={DAY}.__replaced-1a2b3c4d"), OLD)
    _, staging = storage.start_staging(root, "preprocess")
    _parquet(storage.join(staging, "train"), NEW)
    storage.publish(storage.join(staging, "train"), storage.partition_uri(root, "train", DAY))
    assert sorted(os.listdir(tmp_path / "train")) == [f"dt={OTHER_DAY}", f"dt={DAY}"]
    assert _spark_rows(spark, root) == (_expected(NEW), "date")


# ---------------------------------------------------------------------------------------------- S3


def _s3_rows(root: str) -> list[tuple[str, int]]:
    """What the suite's readers see of the dataset root (``storage.list_files`` resolves pointers)."""
    out = []
    for uri in storage.list_files(storage.join(root, "train"), (".parquet",)):
        fs, path = storage.filesystem(uri)
        day = uri.split("/dt=", 1)[1][:10]
        with fs.open_input_file(path) as handle:
            out += [(day, v) for v in pq.read_table(handle).column("user_idx").to_pylist()]
    return sorted(out)


def _s3_tree(root: str) -> str:
    _parquet(storage.partition_uri(root, "train", OTHER_DAY), KEPT)
    _parquet(storage.partition_uri(root, "train", DAY), OLD, "part-00000.parquet")
    _parquet(storage.partition_uri(root, "train", DAY), [], "part-00001.parquet")
    staged = storage.join(storage.staging_uri(root, "preprocess", storage.new_run_id()), "train")
    _parquet(staged, NEW, "part-00000.parquet")
    _parquet(staged, NEW[:1], "part-00001.parquet")
    return staged


S3_NEW = sorted(NEW + NEW[:1])


def test_a_kill_between_any_two_s3_publish_steps_loses_nothing(aws_env: str, monkeypatch) -> None:
    boto3.client("s3").create_bucket(Bucket="stylegraph-publish")
    probe = "s3://stylegraph-publish/probe"
    staged = _s3_tree(probe)
    final = storage.partition_uri(probe, "train", DAY)
    steps = _steps(lambda: storage.publish(staged, final))
    assert steps.count("s3:copy") == 2 and "s3:before-pointer" in steps and "s3:after-pointer" in steps
    # A second publish over a versioned folder: kills there too, with the first version as the old.
    for index, step in enumerate(steps):
        root = f"s3://stylegraph-publish/kill{index}"
        final = storage.partition_uri(root, "train", DAY)
        staged = _s3_tree(root)
        storage.publish(staged, final)  # the folder is now a version behind a pointer
        first = storage.read_pointer(final)["version"]
        staged = storage.join(storage.staging_uri(root, "preprocess", storage.new_run_id()), "train")
        _parquet(staged, OLD[:2], "part-00000.parquet")
        _parquet(staged, OLD[2:], "part-00001.parquet")
        monkeypatch.setattr(storage, "_fault_hook", _kill_at(index))
        with pytest.raises(SimulatedKill):
            storage.publish(staged, final)
        monkeypatch.setattr(storage, "_fault_hook", None)

        rows = _s3_rows(root)
        assert rows in (_expected(S3_NEW), _expected(OLD)), step
        current = storage.read_pointer(final)["version"]
        assert (current == first) == (rows == _expected(S3_NEW)), step

        # The next run publishes whole; what the killed run copied is cleaned once old enough, the
        # version readers were given is kept through the grace period, the current one always.
        staged = storage.join(storage.staging_uri(root, "preprocess", storage.new_run_id()), "train")
        _parquet(staged, NEW)
        storage.publish(staged, final)
        assert _s3_rows(root) == _expected(NEW), step
        pointer = storage.read_pointer(final)
        assert current in [item["version"] for item in pointer["retired"]], step
        storage.clean_versions(final, now=time.time() + storage.VERSION_GRACE_SECONDS + 60)
        listed = boto3.client("s3").list_objects_v2(
            Bucket="stylegraph-publish", Prefix=f"kill{index}/train/dt={DAY}/"
        )["Contents"]
        keys = [o["Key"] for o in listed if not o["Key"].endswith("/")]
        left = {key.split(f"dt={DAY}/", 1)[1].split("/", 1)[0] for key in keys}
        assert left == {storage.POINTER_NAME, f"{storage.VERSION_PREFIX}{pointer['version']}"}, step
        assert _s3_rows(root) == _expected(NEW), step


def test_s3_versions_stay_through_the_grace_period(aws_env: str) -> None:
    boto3.client("s3").create_bucket(Bucket="stylegraph-grace")
    final = "s3://stylegraph-grace/w/train/dt=1"
    versions = []
    for values in (OLD, NEW):
        staged = storage.join(storage.staging_uri("s3://stylegraph-grace/w", "p", storage.new_run_id()), "t")
        _parquet(staged, values)
        storage.publish(staged, final)
        versions.append(storage.read_pointer(final)["version"])
    old_version = storage.join(final, f"{storage.VERSION_PREFIX}{versions[0]}")
    # A reader that resolved the pointer before the switch still reads the old version whole.
    assert storage.clean_versions(final) == []
    assert storage.parquet_rows(old_version) == len(OLD)
    assert storage.clean_versions(final, now=time.time() + storage.VERSION_GRACE_SECONDS + 1) == [old_version]
    assert storage.parquet_rows(old_version) == 0
    assert storage.parquet_rows(final) == len(NEW)


# ------------------------------------------------------------------------------------------ staging


def test_staging_of_dead_runs_is_cleaned_by_the_next_run(tmp_path) -> None:
    root = str(tmp_path)
    # A run of this process that ended without cleaning (killed), one of a live process, one of a
    # process that is gone, one of another host started an hour ago, and one of another host started
    # beyond the grace period.
    _, dead_here = storage.start_staging(root, "embed")
    _forget_live_runs()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host = os.uname().nodename
    try:
        owners = {
            "live": {"host": host, "pid": sleeper.pid, "run_id": "live", "started_at": time.time()},
            "gone": {"host": host, "pid": gone.pid, "run_id": "gone", "started_at": time.time()},
            "elsewhere": {"host": "node-7", "pid": 1, "run_id": "elsewhere",
                          "started_at": time.time() - 3600},
            "stale": {"host": "node-7", "pid": 1, "run_id": "stale",
                      "started_at": time.time() - storage.STAGING_GRACE_SECONDS - 1},
        }
        for name, owner in owners.items():
            run_folder = storage.staging_uri(root, "embed", name)
            storage.write_json(storage.join(run_folder, storage.RUN_FILE), owner)
            _parquet(storage.join(run_folder, "embeddings"), OLD)
        _parquet(storage.join(storage.staging_uri(root, "similarity", "other-stage"), "x"), OLD)

        _, mine = storage.start_staging(root, "embed")

        left = sorted(os.listdir(tmp_path / "_staging" / "embed"))
        assert left == sorted(["live", "elsewhere", os.path.basename(mine)])
        assert os.listdir(tmp_path / "_staging" / "similarity") == ["other-stage"]  # not embed's
        assert not os.path.exists(dead_here)
    finally:
        sleeper.kill()
        sleeper.wait()
    storage.finish_staging(mine)
    assert sorted(os.listdir(tmp_path / "_staging" / "embed")) == ["elsewhere", "live"]


def test_the_suites_readers_resolve_the_pointer(aws_env: str) -> None:
    from jobs import neptune_load, run_report, validate_gremlin_csv
    from jobs.common import outputs
    from readers import ncf_torch

    boto3.client("s3").create_bucket(Bucket="stylegraph-readers")
    work = "s3://stylegraph-readers/w"
    train = storage.partition_uri(f"{work}/ncf", "train", DAY)
    staged = storage.join(storage.staging_uri(f"{work}/ncf", "preprocess", storage.new_run_id()), "train")
    _parquet(staged, NEW)
    storage.publish(staged, train)
    export = storage.partition_uri(f"{work}/style", "gremlin", DAY)
    staged = storage.join(storage.staging_uri(f"{work}/style/gremlin", "export", "r1"), f"dt={DAY}")
    storage.write_text(f"{staged}/vertices/v-00000.csv", "~id\n1\n")
    storage.write_text(f"{staged}/edges/e-00000.csv", "~id,~from,~to\n")
    storage.write_json(f"{staged}/manifest.json", {"higher_is_closer": False})
    storage.publish(staged, export, owner=outputs.folder_marker("export"))
    train_version = f"{train}/_v-{storage.read_pointer(train)['version']}"
    export_version = f"{export}/_v-{storage.read_pointer(export)['version']}"

    assert ncf_torch.petastorm_url(train) == train_version  # petastorm
    assert storage.read_path(train) == train_version  # every Spark read of a published folder
    assert storage.parquet_rows(train) == len(NEW)
    checked = validate_gremlin_csv.validate_export(f"{export}/vertices", f"{export}/edges").files
    assert checked == {
        validate_gremlin_csv.VERTEX: [f"{export_version}/vertices/v-00000.csv"],
        validate_gremlin_csv.EDGE: [f"{export_version}/edges/e-00000.csv"],
    }
    assert run_report.read_json_or_none(f"{export}/manifest.json") == {"higher_is_closer": False}
    assert neptune_load.current_version(f"{export}/") == export_version  # the Neptune loader's source
    assert neptune_load.prefix(export_version, "vertices") == f"{export_version}/vertices/"
    # The owner marker sits beside the versions, never under a prefix the loader reads.
    assert outputs.read_marker(export) == {"owner": "export", "kind": "folder"}
    assert storage.list_files(export_version) == [
        f"{export_version}/edges/e-00000.csv", f"{export_version}/manifest.json",
        f"{export_version}/vertices/v-00000.csv"]


def test_training_reads_only_the_current_version_on_s3(aws_env: str) -> None:
    """petastorm's reader would take every ``<version>/`` folder below the partition for its own partitions:
    it must read the current version's files alone, even while a replaced version is kept for its grace."""
    from readers import ncf_torch

    boto3.client("s3").create_bucket(Bucket="stylegraph-training")
    root = "s3://stylegraph-training/w/ncf"
    train = storage.partition_uri(root, "train", DAY)
    for run, users in (("old", OLD), ("new", NEW)):
        staged = storage.join(storage.staging_uri(root, "preprocess", run), "train")
        storage.write_parquet(pa.table({
            "user_idx": pa.array(users, pa.int32()),
            "item_idx": pa.array([u + 100 for u in users], pa.int32()),
            "label": pa.array([1.0] * len(users), pa.float32()),
        }), f"{staged}/part-00000.parquet")
        storage.publish(staged, train)
    assert len(storage.read_pointer(train)["retired"]) == 1  # the old version is still there

    loader = ncf_torch.ncf_dataloader(train, batch_size=8)
    users = [int(user) for batch_users, _, _ in loader for user in batch_users]
    assert sorted(users) == NEW


# ------------------------------------------------------------------------------------- read pins


_PUBLISH_ELSEWHERE = """
import sys
import pyarrow as pa, pyarrow.parquet as pq
from jobs.common import storage
root, final, values = sys.argv[1], sys.argv[2], [int(v) for v in sys.argv[3].split(",")]
staged = storage.join(storage.staging_uri(root, "preprocess", storage.new_run_id()), "train")
fs, path = storage.filesystem(staged)
with fs.open_output_stream(path + "/part-00000.parquet") as stream:
    pq.write_table(pa.table({"user_idx": pa.array(values, pa.int32())}), stream)
storage.publish(staged, final)
"""

_RESOLVE_ELSEWHERE = "import sys\nfrom jobs.common import storage\nprint(storage.resolve(sys.argv[1]))\n"


def _another_process(script: str, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_a_process_reads_one_version_of_a_folder_whatever_another_run_publishes(aws_env: str) -> None:
    boto3.client("s3").create_bucket(Bucket="stylegraph-pins")
    root = "s3://stylegraph-pins/w"
    final = storage.partition_uri(root, "train", DAY)
    _another_process(_PUBLISH_ELSEWHERE, root, final, "1,2,3")
    first = storage.resolve(final)
    assert first == f"{final}/{storage.VERSION_PREFIX}{storage.read_pointer(final)['version']}"
    assert storage.resolve(f"{final}/part-00000.parquet") == f"{first}/part-00000.parquet"

    _another_process(_PUBLISH_ELSEWHERE, root, final, "10,11")  # another run, while this one reads
    second = f"{final}/{storage.VERSION_PREFIX}{storage.read_pointer(final)['version']}"
    assert second != first
    assert storage.resolve(final) == first  # the same version as this process's first read
    assert storage.read_path(final) == first
    assert storage.list_files(storage.join(root, "train")) == [f"{first}/part-00000.parquet"]
    assert sorted(storage.read_parquet(final).column("user_idx").to_pylist()) == OLD
    assert _another_process(_RESOLVE_ELSEWHERE, final) == second  # a fresh process: the current one

    staged = storage.join(storage.staging_uri(root, "preprocess", storage.new_run_id()), "train")
    _parquet(staged, KEPT)
    storage.publish(staged, final)  # this process publishes the folder itself: it reads its own
    third = f"{final}/{storage.VERSION_PREFIX}{storage.read_pointer(final)['version']}"
    assert storage.resolve(final) == third
    assert storage.read_parquet(final).column("user_idx").to_pylist() == KEPT


# --------------------------------------------------------------------------------- legacy staging


def _legacy_staging(root: str) -> tuple[str, str]:
    """A staging run folder of an older version (no ``_RUN.json``) and one of a current live run."""
    legacy = storage.staging_uri(root, "embed", "20240101T000000-0123456789ab")
    _parquet(storage.join(legacy, "embeddings"), OLD)
    _, live = storage.start_staging(root, "embed")
    return legacy, live


@pytest.mark.parametrize("where", ["local", "s3"])
def test_staging_without_a_run_file_is_dead_after_the_grace_period(
    where: str, tmp_path, aws_env: str, caplog: pytest.LogCaptureFixture
) -> None:
    if where == "s3":
        boto3.client("s3").create_bucket(Bucket="stylegraph-legacy")
        root = "s3://stylegraph-legacy/w"
    else:
        root = str(tmp_path)
    legacy, live = _legacy_staging(root)
    assert storage.recover_staging(root, "embed") == []  # written just now: maybe a run still going
    assert storage.exists(storage.join(legacy, "embeddings"))

    later = time.time() + storage.STAGING_GRACE_SECONDS + 60
    with caplog.at_level("WARNING", logger="stylegraph.storage"):
        assert storage.recover_staging(root, "embed", now=later) == [legacy]
    assert f"{legacy} has no readable {storage.RUN_FILE}" in caplog.text
    assert not storage.all_files(legacy)
    assert storage.all_files(live) == [storage.join(live, storage.RUN_FILE)]  # a live run's folder stays
    storage.finish_staging(live)
