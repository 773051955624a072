"""The local Spark JVM's class-data archive (Java's CDS): the classes a job's JVM loads, mapped from one
file instead of read, parsed and verified from Spark's jars at every start.

A local run (``make run``, ``python -m jobs.<name>``, the tests) starts its own JVM, which loads
thousands of Spark classes before its first task runs. With the archive, the session starts and the
first Spark jobs run seconds sooner (bench/RESULTS.md, "cold"). ``make jvm-archive`` (a step of
``make run``, ``make test`` and ``make bench``) builds it once: a training process
(``jobs.common.jvm_training``) runs the kinds of Spark work the jobs do, and its JVM writes the classes
it loaded as it exits (``-XX:ArchiveClassesAtExit``) to a file set aside, which is then renamed into
place whole.

An archive only fits the Java and the Spark jars it was built with. Its name holds the Spark install
(its jars folder), a key of the Java and the jars (:func:`archive_key`) and its own size
(``spark-classes-<install>-<key>-<bytes>.jsa``): after an upgrade no archive matches and local JVMs start
as before until ``make jvm-archive`` builds a new one (and removes the install's old one; other checkouts'
archives are theirs); an archive cut short is never handed to a JVM (mapping one crashes it). An
archive the JVM finds unusable otherwise is ignored (``-Xshare:auto``). Clusters (spark-submit on EMR,
Glue) never use it: ``jobs.common.spark`` sets JVM options only for local sessions.

``STYLEGRAPH_JVM_ARCHIVE``: ``off`` starts local JVMs without the archive; a path uses that folder
instead of ``$XDG_CACHE_HOME/stylegraph`` (``~/.cache/stylegraph``).
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

LOG = logging.getLogger("stylegraph.jvm_archive")

ARCHIVE_ENV = "STYLEGRAPH_JVM_ARCHIVE"
OFF = "off"
# Set by the builder in its training process: the JVM option that writes the archive at exit.
TRAINING_ENV = "STYLEGRAPH_JVM_ARCHIVE_TRAINING"
PREFIX = "spark-classes-"
SUFFIX = ".jsa"


def java_executable() -> str | None:
    """The java Spark's launcher runs: ``$JAVA_HOME/bin/java``, else the one on PATH (resolved)."""
    home = os.environ.get("JAVA_HOME")
    found = os.path.join(home, "bin", "java") if home else shutil.which("java")
    return os.path.realpath(found) if found and os.path.exists(found) else None


def spark_jars() -> Path:
    """The folder of the jars the local JVM's class path holds (pyspark's own Spark)."""
    spark_home = os.environ.get("SPARK_HOME")
    if spark_home:
        return Path(spark_home) / "jars"
    import pyspark

    return Path(pyspark.__file__).resolve().parent / "jars"


def archive_key() -> str | None:
    """A key of what the archive depends on: the java binary and every jar of the class path (paths,
    sizes, modification times, as the JVM checks them); None without a java or jars."""
    java = java_executable()
    jars = spark_jars()
    if java is None or not jars.is_dir():
        return None
    digest = hashlib.sha256()
    for path in (Path(java), *sorted(jars.glob("*.jar"))):
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def archive_folder() -> Path:
    configured = os.environ.get(ARCHIVE_ENV, "")
    if configured and configured != OFF:
        return Path(configured)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "stylegraph"


def _install_prefix() -> str:
    """``spark-classes-<install>-``: the archives of this Spark install (its jars folder), whatever their
    key. Two checkouts on one machine each keep theirs; a build replaces only its own install's."""
    return f"{PREFIX}{hashlib.sha256(str(spark_jars().resolve()).encode()).hexdigest()[:8]}-"


def _key_prefix() -> str | None:
    if os.environ.get(ARCHIVE_ENV) == OFF:
        return None
    key = archive_key()
    return f"{_install_prefix()}{key}-" if key else None


def _replace_others(folder: Path, path: Path) -> None:
    """Remove this install's other archives (of a Java or jars replaced since, or cut short)."""
    for other in folder.glob(f"{_install_prefix()}*{SUFFIX}"):
        if other != path:
            other.unlink(missing_ok=True)


def find_archive() -> Path | None:
    """The archive for this Java and these jars, when it is there and whole: its name ends in its size
    in bytes (``spark-classes-<install>-<key>-<bytes>.jsa``), and a JVM mapping a cut-short archive
    would crash."""
    prefix = _key_prefix()
    if prefix is None:
        return None
    for path in archive_folder().glob(f"{prefix}*{SUFFIX}"):
        size = path.name[len(prefix) : -len(SUFFIX)]
        if size.isdigit() and path.stat().st_size == int(size):
            return path
    return None


def java_options() -> str:
    """The JVM options that map the archive, when there is one for this Java and these jars; in the
    builder's training process, the option that writes it; else nothing."""
    training = os.environ.get(TRAINING_ENV)
    if training:
        return f"-XX:ArchiveClassesAtExit={training}"
    path = find_archive()
    if path is None:
        return ""
    # -Xshare:auto: an archive the JVM finds unusable is ignored (the start is then as without it); the
    # cds log tags are off so that such a file does not print warnings into every run.
    return f"-XX:SharedArchiveFile={path} -Xshare:auto -Xlog:cds=off -Xlog:cds+dynamic=off"


def build() -> Path | None:
    """Build the archive for this Java and these jars (a training process), unless it is there, and
    remove this install's other archives (of a Java or jars replaced since, or cut short). Returns its
    path; None where there is none to build (no java, or ``STYLEGRAPH_JVM_ARCHIVE=off``).

    Raises:
        RuntimeError: the training process failed or wrote no archive.
        OSError: the folder cannot be written.
    """
    prefix = _key_prefix()
    if prefix is None:
        return None
    _remove_abandoned(archive_folder())
    found = find_archive()
    if found is not None:
        _replace_others(archive_folder(), found)
        LOG.info("JVM class-data archive present: %s", found)
        return found
    folder = archive_folder()
    folder.mkdir(parents=True, exist_ok=True)
    aside = folder / f".{prefix}{os.getpid()}.tmp"
    started = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "jobs.common.jvm_training"], env={**os.environ, TRAINING_ENV: str(aside)},
        capture_output=True, text=True, check=False,
    )
    if done.returncode != 0 or not aside.is_file() or aside.stat().st_size == 0:
        aside.unlink(missing_ok=True)
        raise RuntimeError(
            f"building the JVM class-data archive failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
        )
    path = folder / f"{prefix}{aside.stat().st_size}{SUFFIX}"
    os.replace(aside, path)
    _replace_others(folder, path)
    LOG.info("JVM class-data archive built in %.1f s: %s (%d MB)", time.time() - started, path,
             path.stat().st_size >> 20)
    return path


def _remove_abandoned(folder: Path) -> None:
    """Remove the files set aside by builders that died before renaming theirs (``.<prefix><pid>.tmp``,
    the pid no longer running): a killed build must not leave 150 MB behind for good."""
    for aside in folder.glob(f".{PREFIX}*.tmp"):
        pid = aside.name[: -len(".tmp")].rsplit("-", 1)[-1]
        if pid.isdigit() and not _is_running(int(pid)):
            aside.unlink(missing_ok=True)


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.common.jvm_archive",
        description="Build the local Spark JVM's class-data archive (once per Java and Spark install).",
    )
    parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        path = build()
    except OSError as err:  # an unwritable cache folder: local jobs start as they would without it
        LOG.warning("no JVM class-data archive (%s): local Spark jobs start without it", err)
        return 0
    if path is None:
        LOG.info("no JVM class-data archive: no java found, or %s=%s", ARCHIVE_ENV, OFF)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
