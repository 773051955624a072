"""What every Glue entry script does: resolve the job's options, run its ``main``, commit.

Glue passes job-run arguments as ``--option value`` pairs. The options of a stage are the ones
:data:`jobs.pipeline.STAGES` gives it (``--input``, ``--output``, ``--run-date``...), so the argv the
job's ``main`` receives here is exactly the one the local runner and the EMR steps pass.

``awsglue`` is imported lazily: inside Glue (a ``--JOB_RUN_ID`` argument and the Glue runtime), the run
is wrapped in ``Job.init``/``Job.commit``; elsewhere (a laptop, a test) the same script runs on plain
pyspark, ``getResolvedOptions`` still parsing the arguments when the awsglue package is installed.

The one optional argument, ``--stylegraph-glue-database`` (:data:`glue.jobs.GLUE_DATABASE_ARGUMENT`), is
resolved only when present (``getResolvedOptions`` fails on a missing option) and exported as
``STYLEGRAPH_GLUE_DATABASE`` before the job's ``main`` runs, so its publishes register their partitions
in that Glue database.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from glue.jobs import GLUE_DATABASE_ARGUMENT
from jobs import pipeline
from jobs.common import cli
from jobs.common.glue_catalog import DATABASE_ENV, checked_database

LOG = logging.getLogger("stylegraph.glue")

JOB_NAME = "JOB_NAME"
JOB_RUN_ID = "JOB_RUN_ID"
GLUE_DATABASE = GLUE_DATABASE_ARGUMENT.removeprefix("--")


def option_names(stage: pipeline.Stage) -> list[str]:
    """The stage's options without dashes (``input``, ``run-date``...), as Glue's resolver wants them."""
    return [option.removeprefix("--") for option, _ in (*stage.args, *pipeline.COMMON_ARGS)]


def _given(argv: Sequence[str], option: str) -> bool:
    """Whether ``argv`` has ``--option value`` or ``--option=value``."""
    return any(arg == f"--{option}" or arg.startswith(f"--{option}=") for arg in argv[1:])


def _resolve(argv: Sequence[str], options: list[str]) -> dict[str, Any]:
    """The required ``options`` and, only when ``argv`` has it, the optional :data:`GLUE_DATABASE`."""
    optional = [GLUE_DATABASE] if _given(argv, GLUE_DATABASE) else []
    try:
        from awsglue.utils import getResolvedOptions
    except ImportError:  # not in Glue and no awsglue package: the same contract with argparse
        parser = argparse.ArgumentParser(add_help=False)
        parser.add_argument(f"--{JOB_NAME}", default=None)
        parser.add_argument(f"--{JOB_RUN_ID}", default=None)
        for option in options:
            parser.add_argument(f"--{option}", required=True)
        for option in optional:
            parser.add_argument(f"--{option}")
        parsed, _ = parser.parse_known_args(list(argv[1:]))
        return vars(parsed)
    try:
        return getResolvedOptions(list(argv), [JOB_NAME, *options, *optional])
    except Exception as err:  # awsglue's GlueArgumentError, raised for a missing option
        raise cli.JobError(f"Glue job arguments: {err}") from None


def job_argv(stage: pipeline.Stage, resolved: dict[str, Any]) -> list[str]:
    """The job's argv from the resolved options (argparse turned ``run-date`` into ``run_date``)."""
    argv: list[str] = []
    for option in option_names(stage):
        argv += [f"--{option}", str(resolved[option.replace("-", "_")])]
    return argv


def export_glue_database(resolved: dict[str, Any]) -> str | None:
    """Put the resolved Glue database, if any, into this process's environment (``STYLEGRAPH_GLUE_DATABASE``,
    read by :mod:`jobs.common.glue_catalog` at each publish)."""
    database = resolved.get(GLUE_DATABASE.replace("-", "_"))
    if database is None:
        return None
    os.environ[DATABASE_ENV] = checked_database(database)
    return database


def _glue_job(resolved: dict[str, Any]) -> Any | None:
    """``Job`` initialised when running inside Glue, else None."""
    if not resolved.get(JOB_RUN_ID):
        return None
    from awsglue.context import GlueContext
    from awsglue.job import Job
    from pyspark.context import SparkContext

    job = Job(GlueContext(SparkContext.getOrCreate()))
    job.init(resolved[JOB_NAME], resolved)
    return job


def run_glue_stage(stage_name: str, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Resolve ``argv`` (default ``sys.argv``) for the stage, run the job's ``main``, commit in Glue."""
    stage = pipeline.STAGES_BY_NAME[stage_name]
    resolved = _resolve(list(sys.argv if argv is None else argv), option_names(stage))
    job_args = job_argv(stage, resolved)
    database = export_glue_database(resolved)
    glue_job = _glue_job(resolved)
    LOG.info("glue %s: %s %s", stage.name, stage.module, " ".join(job_args))
    if database:
        LOG.info("glue %s: published partitions are registered in the Glue database %s", stage.name, database)
    report = importlib.import_module(stage.module).main(job_args)
    if glue_job is not None:
        glue_job.commit()
    return report


def main_for(stage_name: str) -> int:
    """The exit code of a Glue entry script (``JobError`` -> 2, a bug -> 1), as ``cli.run`` gives it."""
    return cli.run(lambda _argv: run_glue_stage(stage_name, sys.argv))
