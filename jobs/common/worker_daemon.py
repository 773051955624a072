"""PySpark's Python worker daemon, importing the modules a job names before it forks its workers.

An executor starts a daemon per worker environment (``spark.python.daemon.module``: local sessions name
this one, ``jobs.common.spark.LOCAL_DEFAULTS``, as does the EMR embed step) and forks each Python worker
from it. PySpark's own daemon holds next to nothing, so every worker imports what its tasks need: for the
embedding that is torch, over a second of CPU per worker. Modules this daemon imports before its first
fork are in every worker from its first instruction, their pages shared copy-on-write: paid once per
daemon, not once per worker.

The modules are named, comma-separated, in the worker environment variable :data:`PRELOAD_ENV`, which a
job sets for the Python functions it defines (``jobs.common.spark.preloaded_workers``); other jobs of
the session keep their own daemon. For an environment without the variable this daemon is PySpark's,
unchanged. A module that fails to import is reported on stderr and the daemon starts again as PySpark's
own, with nothing half imported: the workers then import what they need themselves, as they would have
without it. The module itself must be importable wherever it is named (the EMR bootstrap installs it with
the stylegraph wheel on every node).

Forking after importing torch is what PyTorch's own data loader does with its workers. CUDA is initialised
by its first use, in a worker, never here.
"""
from __future__ import annotations

import contextlib
import ctypes
import importlib
import io
import os
import sys
import tempfile
from collections.abc import Iterable

PRELOAD_ENV = "STYLEGRAPH_WORKER_PRELOAD"
# The Spark setting that names a daemon module; this one's name for it.
DAEMON_CONF = "spark.python.daemon.module"
# What the preload may write, at most, on its way to stderr: the JVM drains the daemon's stderr only
# after it has read the port from stdout, so a full pipe before then would stall the executor.
MAX_OUTPUT_BYTES = 8192


def modules_to_preload(value: str | None) -> list[str]:
    """The module names in :data:`PRELOAD_ENV`'s value (None or blank: none)."""
    return [name.strip() for name in (value or "").split(",") if name.strip()]


def preload(names: Iterable[str]) -> list[str]:
    """Import ``names``; returns those that failed.

    The daemon's stdout carries its port to the JVM and must hold nothing else, and its stderr is not read
    until then: whatever the imports write, Python or native code, is held in a file and then goes to
    stderr, its last :data:`MAX_OUTPUT_BYTES`. The first module that fails ends the preload, with a line
    naming it."""
    failed = []
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 1)  # native code's writes
        os.dup2(held.fileno(), 2)
        text = io.TextIOWrapper(io.FileIO(held.fileno(), "w", closefd=False), write_through=True)
        try:
            with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):  # Python's
                for name in names:
                    try:
                        importlib.import_module(name)
                    except Exception as error:
                        failed.append(name)
                        print(f"stylegraph worker daemon: cannot preload {name}: {type(error).__name__}: "
                              f"{error}", file=text)
                        break  # the daemon starts again without them: nothing more to import
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            ctypes.CDLL(None).fflush(None)  # native code's buffered writes
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
        size = held.seek(0, os.SEEK_END)
        held.seek(max(0, size - MAX_OUTPUT_BYTES))
        os.write(2, held.read())
    return failed


def main() -> None:
    if preload(modules_to_preload(os.environ.get(PRELOAD_ENV))):
        # Not a half-imported module in the workers' way: PySpark's daemon, in a fresh interpreter (the
        # port is not written yet, so the JVM sees one daemon).
        os.execv(sys.executable, [sys.executable, "-m", "pyspark.daemon"])
    from pyspark.daemon import manager

    manager()


if __name__ == "__main__":
    main()
