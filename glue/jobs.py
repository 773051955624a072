"""AWS Glue job definitions as data, one job per CPU stage of the pipeline.

:data:`WORKERS` says how big each job is; :func:`job_definition` gives ``create_job`` keyword arguments
(Glue 5.0, Python 3, the stage's entry script, the project's zip on ``--extra-py-files`` and the pinned
modules Glue lacks on ``--additional-python-modules``); :func:`run_arguments` turns the stage's argv
from :func:`jobs.pipeline.plan` into the job run's ``Arguments``.

A Glue job run cannot put ``STYLEGRAPH_GLUE_DATABASE`` into the driver's environment (Glue's
``--customer-driver-env-vars`` sets only ``CUSTOMER_``-prefixed names), so the Glue Data Catalog database
travels as the job argument :data:`GLUE_DATABASE_ARGUMENT`, in the job's ``DefaultArguments`` or a run's
``Arguments`` (a run's wins), and ``glue/entry.py`` exports it before the job's ``main`` runs.
"""
from __future__ import annotations

from typing import Any

from jobs import pipeline
from jobs.common.glue_catalog import checked_database

GLUE_VERSION = "5.0"
JOB_PREFIX = "stylegraph-"
# (worker type, number of workers) per stage that runs on Glue.
WORKERS: dict[str, tuple[str, int]] = {
    "preprocess": ("G.1X", 10),
    "export": ("G.1X", 5),
    "validate": ("G.1X", 2),
}
# Stages that never run on Glue, and why. The similarity tasks pin BLAS threads with threadpoolctl and
# compute with torch on a GPU; Glue would have to pip-install them (torch: a multi-GB CUDA build from
# PyPI) on every worker at every start, so similarity runs on the EMR cluster, which has them installed
# from the wheelhouse.
NOT_ON_GLUE: dict[str, str] = {
    "embed": "it needs GPUs, and Glue has no GPU workers",
    "similarity": "its tasks need threadpoolctl (and torch on a GPU), which the Glue jobs do not ship",
}
# What Glue 5.0 itself provides that the stages import: Spark 3.5 (pyspark, py4j) and boto3.
GLUE_PROVIDED_MODULES: tuple[str, ...] = ("pyspark", "boto3")
# What the jobs import on top of it: these pins (requirements/base.txt), pip-installed with their
# dependencies at job start. torch, torchvision, threadpoolctl and petastorm are not among them.
ADDITIONAL_PYTHON_MODULES: tuple[str, ...] = (
    "pyarrow==12.0.1",
    "numpy==1.26.4",
    "numba==0.61.2",
    "zlib-ng==1.1.0",
    "pandas==2.3.3",
    "great-expectations==1.24.*",
    "Pillow>=10",
)
TIMEOUT_MINUTES = 120
# Glue's own retries start a new run id that neither the CLI nor Airflow's GlueJobOperator watches (they
# poll the first run, see it fail and would start yet another): retries belong to the caller.
MAX_RETRIES = 0

# The optional job argument naming the Glue Data Catalog database (see the module docstring).
GLUE_DATABASE_ARGUMENT = "--stylegraph-glue-database"

GLUE_STAGES: tuple[pipeline.Stage, ...] = tuple(stage for stage in pipeline.STAGES if stage.name in WORKERS)


def job_name(stage: pipeline.Stage) -> str:
    return f"{JOB_PREFIX}{stage.name}"


def glue_stage(name: str) -> pipeline.Stage:
    """The stage called ``name`` if it can run on Glue, else JobError."""
    stages = {stage.name: stage for stage in GLUE_STAGES}
    if name not in stages:
        why = f" ({name}: {NOT_ON_GLUE[name]}; run it on EMR)" if name in NOT_ON_GLUE else ""
        raise pipeline.JobError(f"stage {name!r} does not run on Glue: choose from {', '.join(stages)}{why}")
    return stages[name]


def job_definition(
    stage: pipeline.Stage,
    *,
    role_arn: str,
    script_uri: str,
    py_files_uri: str,
    temp_dir_uri: str,
    glue_database: str | None = None,
) -> dict[str, Any]:
    """``glue.create_job`` keyword arguments for one stage (``update_job`` takes the same minus Name); every
    run registers its published partitions in ``glue_database`` unless the run names another."""
    worker_type, workers = WORKERS[stage.name]
    definition: dict[str, Any] = {
        "Name": job_name(stage),
        "Description": f"stylegraph {stage.name}: {stage.module}",
        "Role": role_arn,
        "GlueVersion": GLUE_VERSION,
        "Command": {"Name": "glueetl", "ScriptLocation": script_uri, "PythonVersion": "3"},
        "WorkerType": worker_type,
        "NumberOfWorkers": workers,
        "Timeout": TIMEOUT_MINUTES,
        "MaxRetries": MAX_RETRIES,
        "ExecutionProperty": {"MaxConcurrentRuns": 3},
        "DefaultArguments": {
            "--extra-py-files": py_files_uri,
            "--additional-python-modules": ",".join(ADDITIONAL_PYTHON_MODULES),
            "--TempDir": temp_dir_uri,
            "--enable-metrics": "true",
            "--enable-continuous-cloudwatch-log": "true",
            # Plain spark.read jobs are idempotent per run date; bookmarks would only skip input.
            "--job-bookmark-option": "job-bookmark-disable",
        },
        "Tags": {"project": "stylegraph", "stage": stage.name},
    }
    if glue_database:
        definition["DefaultArguments"][GLUE_DATABASE_ARGUMENT] = checked_database(glue_database)
    return definition


def run_arguments(call: pipeline.StageCall, glue_database: str | None = None) -> dict[str, str]:
    """A job run's ``Arguments``: the stage's argv as ``{"--option": "value"}``, plus the Glue Data Catalog
    database when given."""
    arguments = dict(call.option_pairs())
    if glue_database:
        arguments[GLUE_DATABASE_ARGUMENT] = checked_database(glue_database)
    return arguments
