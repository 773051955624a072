"""The one argument convention: every job is ``jobs/<name>.py`` with ``main(argv=None)``.

``main`` parses its arguments with a parser from :func:`job_parser`, does the work and returns a
report dict. The module ends with ``if __name__ == "__main__": raise SystemExit(run(main))`` so that
``spark-submit jobs/<name>.py ...``, ``python -m jobs.<name> ...``, Glue and the tests all call the
same ``main``. A :class:`JobError` is a clear, expected failure (bad arguments, missing input): it is
logged as one line and exits with code 2. Anything else is a bug: traceback, exit code 1.
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

LOG = logging.getLogger("stylegraph")

EXIT_OK = 0
EXIT_BUG = 1
EXIT_JOB_ERROR = 2


class JobError(Exception):
    """An expected failure with a message meant for the person on call (no traceback needed)."""


def run_date(value: str) -> dt.date:
    """argparse type: a run date written exactly ``YYYY-MM-DD``."""
    try:
        parsed = dt.date.fromisoformat(value)
    except ValueError:
        parsed = None
    if parsed is None or parsed.isoformat() != value:
        raise argparse.ArgumentTypeError(f"run date must be YYYY-MM-DD, got {value!r}")
    return parsed


def positive_int(value: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value!r}")
    return number


def non_negative_int(value: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value!r}")
    return number


def fraction(value: str) -> float:
    """argparse type: a float in [0, 1]."""
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value!r}")
    return number


class _Parser(argparse.ArgumentParser):
    """argparse that raises JobError instead of exiting, so callers (tests, the pipeline) see why."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise JobError(f"{self.prog}: {message}")


def job_parser(name: str, description: str, *, run_date_required: bool = False) -> argparse.ArgumentParser:
    """A parser with the options every job shares.

    ``--run-date YYYY-MM-DD``: the partition the run writes (default: today, UTC, unless required).
    ``--report-dir URI``: where the run report goes (default ``<output>/_reports``; see
    :func:`reports_root`). ``--log-level``.
    """
    parser = _Parser(prog=name, description=description)
    parser.add_argument(
        "--run-date",
        type=run_date,
        required=run_date_required,
        default=None if run_date_required else dt.datetime.now(dt.UTC).date(),
        help="partition date YYYY-MM-DD",
    )
    parser.add_argument("--report-dir", default=None, help="run reports root (default <output>/_reports)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def reports_root(args: argparse.Namespace) -> str:
    """The run-report root of a parsed job: ``--report-dir``, else ``<output>/_reports``."""
    if args.report_dir:
        return str(args.report_dir)
    return str(args.output).rstrip("/") + "/_reports"


def configure_logging(level: str = "INFO") -> None:
    """One log format for every job; quiet py4j's chatter."""
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger().setLevel(level)
    logging.getLogger("py4j").setLevel(logging.WARNING)


def run(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> int:
    """Call a job's ``main`` and turn its outcome into an exit code."""
    configure_logging()
    try:
        main(argv)
    except JobError as err:
        LOG.error("%s", err)
        return EXIT_JOB_ERROR
    except Exception:  # a bug, not bad input: the traceback is what the person on call needs
        LOG.exception("job failed")
        return EXIT_BUG
    return EXIT_OK
