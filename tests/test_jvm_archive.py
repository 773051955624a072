"""The local JVM's class-data archive: local JVMs map it, a damaged or foreign one never hurts a run,
and its key follows the Java and the jars it was built from."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.common import jvm_archive
from jobs.common import spark as spark_module

ROOT = Path(__file__).resolve().parent.parent
# A fresh local session in its own process: prints the archives its JVM maps, then a row it computed.
SESSION_SCRIPT = """
from pyspark import SparkContext
from jobs.common.spark import get_spark
spark = get_spark("archive-test", master="local[1]")
total = spark.range(10).groupBy().sum("id").first()[0]
with open(f"/proc/{SparkContext._gateway.proc.pid}/maps") as maps:
    mapped = sorted({line.split()[-1] for line in maps if line.rstrip().endswith(".jsa")})
print("MAPPED", [path for path in mapped if "spark-classes-" in path])
print("TOTAL", total)
"""


def run_session(
    env: dict[str, str], cwd: Path
) -> tuple[list[str], subprocess.CompletedProcess[str]]:
    """Run SESSION_SCRIPT in ``cwd`` (where a crashing JVM would leave its hs_err file)."""
    paths = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-c", SESSION_SCRIPT], cwd=cwd, env={**os.environ, "PYTHONPATH": paths, **env},
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    printed = [line.split(" ", 1) for line in done.stdout.splitlines()]
    lines = {key: value for key, value in printed if key in ("MAPPED", "TOTAL")}
    assert lines["TOTAL"] == "45"
    return eval(lines["MAPPED"]), done  # noqa: S307 - a list literal this test printed


@pytest.fixture(scope="module")
def archive() -> Path:
    """This machine's archive (``make test`` builds it first; built here when the tests run alone)."""
    built = jvm_archive.build()
    assert built is not None, "no java found"
    return built


def test_a_local_jvm_maps_the_archive(archive: Path, tmp_path: Path) -> None:
    mapped, _ = run_session({}, tmp_path)
    assert mapped == [str(archive)]


@pytest.mark.parametrize("damage", ["cut_short", "not_an_archive"])
def test_a_damaged_archive_is_never_mapped_and_the_run_goes_on(
    archive: Path, tmp_path: Path, damage: str
) -> None:
    """A JVM mapping a cut-short archive crashes (SIGBUS): such a file must not reach it; garbage of the
    right size reaches it and must be ignored without a word on stderr."""
    data = archive.read_bytes()
    if damage == "cut_short":
        (tmp_path / archive.name).write_bytes(data[: len(data) // 3])
        assert jvm_archive.find_archive() != tmp_path / archive.name
    else:
        (tmp_path / archive.name).write_bytes(b"\0garbage" * (len(data) // 8) + b"\0" * (len(data) % 8))
    mapped, done = run_session({jvm_archive.ARCHIVE_ENV: str(tmp_path)}, tmp_path)
    assert mapped == []
    assert "cds" not in done.stderr.lower() and "sharing" not in done.stderr.lower()


@pytest.fixture
def archive_copy(archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The archive copied into a folder of its own, which ``STYLEGRAPH_JVM_ARCHIVE`` names."""
    monkeypatch.setenv(jvm_archive.ARCHIVE_ENV, str(tmp_path))
    copy = tmp_path / archive.name
    copy.write_bytes(archive.read_bytes())
    return copy


def test_the_archive_name_holds_its_size(archive_copy: Path) -> None:
    copy = archive_copy
    assert jvm_archive.find_archive() == copy
    assert f"-XX:SharedArchiveFile={copy}" in jvm_archive.java_options()
    with copy.open("ab") as handle:  # one byte more than its name says
        handle.write(b"\0")
    assert jvm_archive.find_archive() is None
    assert jvm_archive.java_options() == ""


def test_the_key_follows_the_java_and_every_jar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    java = tmp_path / "jdk" / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text("#!/bin/sh\n")
    jars = tmp_path / "spark" / "jars"
    jars.mkdir(parents=True)
    for name in ("spark-core.jar", "spark-sql.jar"):
        (jars / name).write_bytes(b"jar")
    monkeypatch.setenv("JAVA_HOME", str(java.parent.parent))
    monkeypatch.setenv("SPARK_HOME", str(jars.parent))
    first = jvm_archive.archive_key()
    assert first is not None and jvm_archive.archive_key() == first
    os.utime(jars / "spark-sql.jar", ns=(1, 1))  # an upgraded jar of the same size
    second = jvm_archive.archive_key()
    assert second != first
    java.write_text("#!/bin/sh\n# another build\n")
    third = jvm_archive.archive_key()
    assert third not in (first, second)
    (jars / "extra.jar").write_bytes(b"x")
    assert jvm_archive.archive_key() not in (first, second, third)
    java.unlink()
    assert jvm_archive.archive_key() is None
    monkeypatch.setenv(jvm_archive.ARCHIVE_ENV, jvm_archive.OFF)
    assert jvm_archive.find_archive() is None and jvm_archive.java_options() == ""


def test_local_sessions_get_the_archive_and_keep_the_collector(
    archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = spark_module.local_settings()["spark.driver.extraJavaOptions"].split()
    assert options[0] == "-XX:+UseParallelGC"
    assert f"-XX:SharedArchiveFile={archive}" in options
    monkeypatch.setenv(jvm_archive.ARCHIVE_ENV, jvm_archive.OFF)
    assert spark_module.local_settings() == spark_module.LOCAL_DEFAULTS


def test_build_removes_what_dead_builders_set_aside_and_this_installs_old_archives(
    archive_copy: Path, tmp_path: Path
) -> None:
    """Another checkout's archive (another install) stays: removing it would make two checkouts on one
    machine rebuild each other's away at every ``make``."""
    copy = archive_copy
    prefix = copy.name[: copy.name.rindex("-") + 1]
    install = copy.name[: copy.name.index("-", len(jvm_archive.PREFIX)) + 1]
    old_key = tmp_path / f"{install}{'0' * 16}-3{jvm_archive.SUFFIX}"
    other_install = tmp_path / f"{jvm_archive.PREFIX}ffffffff-{'0' * 16}-3{jvm_archive.SUFFIX}"
    for archive_file in (old_key, other_install):
        archive_file.write_bytes(b"jsa")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    abandoned = tmp_path / f".{prefix}{dead.stdout.strip()}.tmp"
    in_progress = tmp_path / f".{prefix}{os.getpid()}.tmp"
    for aside in (abandoned, in_progress):
        aside.write_bytes(b"part of an archive")
    assert jvm_archive.build() == copy
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [copy.name, in_progress.name, other_install.name]
    )
