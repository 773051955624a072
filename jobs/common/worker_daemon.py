"""PySpark's Python worker daemon, importing the modules a job names before it forks its workers.

Spark starts one daemon per executor (``spark.python.daemon.module``; local sessions use this one,
``jobs.common.spark.LOCAL_DEFAULTS``) and forks each Python worker from it. PySpark's own daemon holds
next to nothing, so every worker imports what its tasks need: for the embedding that is torch, over a
second of CPU per worker. Modules this daemon imports before its first fork are in every worker from its
first instruction, their pages shared copy-on-write: paid once per executor, not once per worker.

The modules are named, comma-separated, in the worker environment variable :data:`PRELOAD_ENV`, which a
job sets for the Python tasks it creates (``jobs.common.spark.preloaded_workers``). Spark keeps a daemon
per worker environment, so other jobs of the session keep theirs: for an environment without the variable
this daemon is PySpark's, unchanged. A module that fails to import is reported on
stderr and left to the workers, which then fail (or not) as they would have without the daemon.

Forking after importing torch is what PyTorch's own data loader does with its workers. CUDA is initialised
by its first use, in a worker, never here.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterable

PRELOAD_ENV = "STYLEGRAPH_WORKER_PRELOAD"


def modules_to_preload(value: str | None) -> list[str]:
    """The module names in :data:`PRELOAD_ENV`'s value (None or blank: none)."""
    return [name.strip() for name in (value or "").split(",") if name.strip()]


def preload(names: Iterable[str]) -> list[str]:
    """Import ``names``; returns those that failed, each reported on stderr.

    The daemon's stdout carries its port to the JVM and must hold nothing else: while the modules import,
    whatever they write there (Python or native code) goes to stderr."""
    failed = []
    sys.stdout.flush()
    stdout = os.dup(1)
    os.dup2(2, 1)  # native code's writes
    try:
        with contextlib.redirect_stdout(sys.stderr):  # Python's
            for name in names:
                try:
                    importlib.import_module(name)
                except Exception as error:  # the workers import it again and report it in their task
                    failed.append(name)
                    print(f"stylegraph worker daemon: cannot preload {name}: {type(error).__name__}: {error}",
                          file=sys.stderr, flush=True)
    finally:
        os.dup2(stdout, 1)
        os.close(stdout)
    return failed


def main() -> None:
    preload(modules_to_preload(os.environ.get(PRELOAD_ENV)))
    from pyspark.daemon import manager

    manager()


if __name__ == "__main__":
    main()
