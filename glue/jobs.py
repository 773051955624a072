"""AWS Glue job definitions as data, one job per CPU stage of the pipeline.

:data:`WORKERS` says how big each job is; :func:`job_definition` gives ``create_job`` keyword arguments
(Glue 5.0, Python 3, the stage's entry script, the project's zip on ``--extra-py-files`` and the pinned
modules Glue lacks on ``--additional-python-modules``); :func:`run_arguments` turns the stage's argv
from :func:`jobs.pipeline.plan` into the job run's ``Arguments``.
"""
from __future__ import annotations

from typing import Any

from jobs import pipeline

GLUE_VERSION = "5.0"
JOB_PREFIX = "stylegraph-"
# (worker type, number of workers) per stage. Glue has no GPU workers: the embedding stays on EMR.
WORKERS: dict[str, tuple[str, int]] = {
    "preprocess": ("G.1X", 10),
    "similarity": ("G.2X", 10),
    "export": ("G.1X", 5),
    "validate": ("G.1X", 2),
}
# Glue 5.0 ships Spark 3.5 and boto3; these pins (requirements/base.txt) are what the CPU jobs import
# on top of it. torch, torchvision and petastorm are the embedding's, which never runs on Glue.
ADDITIONAL_PYTHON_MODULES: tuple[str, ...] = (
    "pyarrow==12.0.1",
    "numpy==1.26.4",
    "pandas==2.3.3",
    "great-expectations==1.24.*",
    "Pillow>=10",
)
TIMEOUT_MINUTES = 120
MAX_RETRIES = 1

GLUE_STAGES: tuple[pipeline.Stage, ...] = tuple(stage for stage in pipeline.STAGES if stage.name in WORKERS)


def job_name(stage: pipeline.Stage) -> str:
    return f"{JOB_PREFIX}{stage.name}"


def glue_stage(name: str) -> pipeline.Stage:
    """The stage called ``name`` if it can run on Glue, else JobError."""
    stages = {stage.name: stage for stage in GLUE_STAGES}
    if name not in stages:
        raise pipeline.JobError(
            f"stage {name!r} does not run on Glue: choose from {', '.join(stages)}"
            + (" (embed needs GPUs: run it on EMR)" if name == "embed" else "")
        )
    return stages[name]


def job_definition(
    stage: pipeline.Stage,
    *,
    role_arn: str,
    script_uri: str,
    py_files_uri: str,
    temp_dir_uri: str,
) -> dict[str, Any]:
    """``glue.create_job`` keyword arguments for one stage (``update_job`` takes the same minus Name)."""
    worker_type, workers = WORKERS[stage.name]
    return {
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


def run_arguments(call: pipeline.StageCall) -> dict[str, str]:
    """A job run's ``Arguments``: the stage's argv as ``{"--option": "value"}``."""
    return dict(call.option_pairs())
