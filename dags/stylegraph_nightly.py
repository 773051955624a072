"""The nightly stylegraph run: wait until yesterday's logs are complete, run every stage for that day, load
Neptune.

Which day. The schedule is a ``CronDataIntervalTimetable`` ("0 3 * * *", UTC): the run that fires at
D+1 03:00 covers the interval D 03:00 to D+1 03:00, and every stage gets ``--run-date`` = the date of the
interval's start (``{{ data_interval_start | run_day }}``, :data:`jobs.pipeline.AIRFLOW_RUN_DATE`): the day D
that ended. A backfill or a clear of D reruns exactly D's partition. (A plain cron string would give
Airflow 3's ``CronTriggerTimetable``, whose logical date is the firing moment: D+1, hours old.)

When the day is complete. ``wait_for_logs`` waits for the completion marker the log shipper writes last
(``<input_root>/interactions/dt=D/_SUCCESS``; ``logs_marker`` in the configuration), not for a first
object. It reschedules between pokes (no worker slot held); ``deferrable`` hands the wait to the
triggerer instead, which needs ``aiobotocore`` in the Airflow environment (not part of
requirements/airflow.txt: its botocore pin is older than the stack's).

Tasks come from :func:`jobs.pipeline.plan` (the same stage list and argv as ``make run`` and the EMR CLI).
Where each Spark stage runs (``glue`` or ``emr``; embed and similarity need torch, so only EMR) is
configuration: ``dags/stylegraph_nightly.json``, or the file named by ``$STYLEGRAPH_DAG_CONFIG``. The EMR
cluster (GPU task group when a GPU stage is on it) is created after the logs land and terminated whatever
happened (``trigger_rule="all_done"``); its idle auto-termination policy ends it even if this DAG cannot.
Every task has an ``execution_timeout``. Retries are Airflow's alone: the Glue jobs have ``MaxRetries=0``.

The Glue Data Catalog. ``glue_database`` (a literal database name, checked when the DAG is parsed; absent
or null: off) makes every publish register its partition in that database: the EMR cluster is created
with ``STYLEGRAPH_GLUE_DATABASE`` in its drivers' environment (:func:`emr.clusters.job_flow`) and each Glue
run gets the job argument ``--stylegraph-glue-database`` (:func:`glue.jobs.run_arguments`).

The Airflow environment needs the stylegraph wheel installed without dependencies
(``pip install --no-deps stylegraph-*.whl``) plus ``pyarrow==12.0.1`` (requirements/airflow.txt): the
DAG imports ``jobs.pipeline``, ``emr.*`` and ``glue.jobs``, none of which imports pyspark, and the
Neptune load task runs ``jobs.neptune_load`` on the worker.
"""
from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from airflow.providers.amazon.aws.operators.emr import (
    EmrAddStepsOperator,
    EmrCreateJobFlowOperator,
    EmrTerminateJobFlowOperator,
)
from airflow.providers.amazon.aws.operators.glue import GlueJobOperator
from airflow.providers.amazon.aws.sensors.s3 import S3KeySensor
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG, CronDataIntervalTimetable

from emr import clusters, steps
from glue import jobs as glue_jobs
from jobs import pipeline

CONFIG_ENV = "STYLEGRAPH_DAG_CONFIG"
DEFAULT_CONFIG = Path(__file__).with_suffix(".json")
GLUE = "glue"
EMR = "emr"
CREATE_CLUSTER = "create_cluster"
TERMINATE_CLUSTER = "terminate_cluster"
WAIT_FOR_LOGS = "wait_for_logs"
NEPTUNE_LOAD = "neptune_load"
JOB_FLOW_ID = "{{ ti.xcom_pull(task_ids='" + CREATE_CLUSTER + "') }}"
DEFAULT_SCHEDULE = "0 3 * * *"
DEFAULT_LOGS_MARKER = "_SUCCESS"
# Minutes a task may run before Airflow fails it (``execution_timeout_minutes`` overrides per task id).
# Glue's own timeout (glue.jobs.TIMEOUT_MINUTES) stops the job run first; a sensor's is per poke.
DEFAULT_TIMEOUT_MINUTES: dict[str, float] = {
    WAIT_FOR_LOGS: 10,
    CREATE_CLUSTER: 15,
    TERMINATE_CLUSTER: 15,
    "preprocess": 150,
    "embed": 240,
    "similarity": 120,
    "export": 150,
    "validate": 150,
    NEPTUNE_LOAD: 420,
}


def load_config(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The DAG's configuration (``$STYLEGRAPH_DAG_CONFIG``, else the JSON file beside this one)."""
    with open(path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG, encoding="utf-8") as handle:
        return json.load(handle)


def pipeline_params(config: dict[str, Any]) -> pipeline.PipelineParams:
    """The run's parameters with Airflow's logical date as the run date."""
    return pipeline.PipelineParams(
        input_root=config["input_root"],
        work_root=config["work_root"],
        run_date=pipeline.AIRFLOW_RUN_DATE,
        weights=config.get("weights"),
        top_k=int(config.get("top_k", pipeline.DEFAULT_TOP_K)),
        neptune_endpoint=config.get("neptune_endpoint", ""),
        neptune_iam_role_arn=config.get("neptune_iam_role_arn", ""),
        region=config.get("region", ""),
    )


def engines(config: dict[str, Any], calls: list[pipeline.StageCall]) -> dict[str, str]:
    """Where each Spark stage runs; refuses an unknown engine or a GPU stage on Glue."""
    chosen = {}
    for call in calls:
        if call.stage.engine == pipeline.DRIVER:
            continue
        engine = config.get("engines", {}).get(call.name, EMR)
        if engine not in (GLUE, EMR):
            raise ValueError(f"stage {call.name}: engine must be {GLUE!r} or {EMR!r}, got {engine!r}")
        if engine == GLUE and call.name not in glue_jobs.WORKERS:
            why = glue_jobs.NOT_ON_GLUE.get(call.name, "it has no Glue job")
            raise ValueError(f"stage {call.name} cannot run on Glue ({why})")
        chosen[call.name] = engine
    return chosen


def artifacts(config: dict[str, Any]) -> steps.Artifacts:
    root = config["artifacts_root"].rstrip("/")
    return steps.Artifacts(
        zip_uri=f"{root}/stylegraph.zip",
        entry_prefix=f"{root}/entry",
        wheel_uri=f"{root}/{config['wheel_name']}",
        bootstrap_uri=f"{root}/emr/bootstrap.sh",
        wheelhouse_uri=config["wheelhouse_uri"],
    )


def run_neptune_load(argv: list[str]) -> dict[str, Any]:
    """Start the Neptune bulk load of the day's export and wait for it (``jobs.neptune_load``)."""
    from jobs import neptune_load  # imported at run time: only the worker needs it

    return neptune_load.main(argv)


def run_day(data_interval_start: dt.datetime | None) -> str:
    """The ``run_day`` template filter: the date the run's data interval starts (the day it processes).

    Raises:
        ValueError: a run without a data interval (a manual trigger without a logical date), which would
            otherwise wait for ``dt=None``.
    """
    if data_interval_start is None:
        raise ValueError(
            "this run has no data interval, so no day to process: trigger it with a logical date "
            "(D+1 after 03:00 UTC processes D) or run a backfill"
        )
    return data_interval_start.strftime("%Y-%m-%d")


def timeout(config: dict[str, Any], task_id: str) -> dt.timedelta:
    minutes = {**DEFAULT_TIMEOUT_MINUTES, **config.get("execution_timeout_minutes", {})}
    return dt.timedelta(minutes=float(minutes.get(task_id, max(DEFAULT_TIMEOUT_MINUTES.values()))))


def waiter_attempts(config: dict[str, Any], task_id: str, poll_seconds: int) -> int:
    """Polls of a step's waiter that fit in the task's execution timeout."""
    return max(1, int(timeout(config, task_id).total_seconds()) // poll_seconds)


def logs_marker_key(config: dict[str, Any], run_date: str) -> str:
    """The object whose arrival says the day's interaction logs are complete."""
    marker = config.get("logs_marker", DEFAULT_LOGS_MARKER).strip("/")
    return f"{config['input_root'].rstrip('/')}/interactions/dt={run_date}/{marker}"


def build_dag(config: dict[str, Any]) -> DAG:
    """The nightly DAG for a configuration."""
    params = pipeline_params(config)
    calls = pipeline.plan(params, target=pipeline.PRODUCTION)
    where = engines(config, calls)
    built = artifacts(config)
    aws = {"aws_conn_id": config.get("aws_conn_id", "aws_default")}
    emr_calls = [call for call in calls if where.get(call.name) == EMR]
    glue_database = config.get("glue_database") or None
    default_args = {
        "owner": "stylegraph",
        "retries": int(config.get("retries", 2)),
        "retry_delay": dt.timedelta(minutes=float(config.get("retry_delay_minutes", 10))),
    }
    deferrable = bool(config.get("deferrable", False))
    emr_poll_seconds = int(config.get("emr_poll_seconds", 60))
    neptune_options = [str(option) for option in config.get("neptune_load_options", [])]
    with DAG(
        dag_id=config.get("dag_id", "stylegraph_nightly"),
        schedule=CronDataIntervalTimetable(config.get("schedule", DEFAULT_SCHEDULE), timezone="UTC"),
        start_date=dt.datetime.fromisoformat(config.get("start_date", "2024-03-01")).replace(tzinfo=dt.UTC),
        catchup=bool(config.get("catchup", False)),
        max_active_runs=int(config.get("max_active_runs", 1)),
        default_args=default_args,
        user_defined_filters={"run_day": run_day},
        tags=["stylegraph"],
        doc_md=__doc__,
    ) as dag:
        wait_for_logs = S3KeySensor(
            task_id=WAIT_FOR_LOGS,
            bucket_key=logs_marker_key(config, pipeline.AIRFLOW_RUN_DATE),
            wildcard_match=False,
            mode="reschedule",
            deferrable=deferrable,
            poke_interval=float(config.get("logs_poke_seconds", 300)),
            timeout=float(config.get("logs_timeout_hours", 6)) * 3600,
            execution_timeout=timeout(config, WAIT_FOR_LOGS),
            retries=0,  # its timeout is the whole wait: a retry would wait that long again
            **aws,
        )
        create_cluster = terminate_cluster = None
        if emr_calls:
            idle_minutes = float(config.get("emr_idle_minutes", clusters.IDLE_TIMEOUT_MINUTES))
            kind = clusters.GPU if steps.needs_gpu(emr_calls) else clusters.CPU
            create_cluster = EmrCreateJobFlowOperator(
                task_id=CREATE_CLUSTER,
                job_flow_overrides=clusters.job_flow(
                    kind,
                    name=f"stylegraph {pipeline.AIRFLOW_RUN_DATE} ({kind})",
                    log_uri=config["emr_log_uri"],
                    bootstrap_uri=built.bootstrap_uri,
                    wheel_uri=built.wheel_uri,
                    wheelhouse_uri=built.wheelhouse_uri,
                    subnet_id=config.get("emr_subnet_id"),
                    idle_timeout_minutes=idle_minutes,
                    glue_database=glue_database,
                ),
                region_name=config.get("region") or None,
                execution_timeout=timeout(config, CREATE_CLUSTER),
                **aws,
            )
            terminate_cluster = EmrTerminateJobFlowOperator(
                task_id=TERMINATE_CLUSTER,
                job_flow_id=JOB_FLOW_ID,
                trigger_rule="all_done",
                region_name=config.get("region") or None,
                execution_timeout=timeout(config, TERMINATE_CLUSTER),
                **aws,
            )
            create_cluster >> terminate_cluster

        previous = wait_for_logs
        is_cluster_wired = False
        for call in calls:
            if call.stage.engine == pipeline.DRIVER:
                task = PythonOperator(
                    task_id=call.name,
                    python_callable=run_neptune_load,
                    op_args=[[*call.argv, *neptune_options]],
                    execution_timeout=timeout(config, call.name),
                )
            elif where[call.name] == GLUE:
                task = GlueJobOperator(
                    task_id=call.name,
                    job_name=glue_jobs.job_name(call.stage),
                    script_args=glue_jobs.run_arguments(call, glue_database),
                    wait_for_completion=True,
                    deferrable=deferrable,
                    job_poll_interval=float(config.get("glue_poll_seconds", 30)),
                    region_name=config.get("region") or None,
                    execution_timeout=timeout(config, call.name),
                    **aws,
                )
            else:
                task = EmrAddStepsOperator(
                    task_id=call.name,
                    job_flow_id=JOB_FLOW_ID,
                    steps=[steps.step(call, built)],
                    wait_for_completion=True,
                    deferrable=deferrable,
                    waiter_delay=emr_poll_seconds,
                    waiter_max_attempts=waiter_attempts(config, call.name, emr_poll_seconds),
                    region_name=config.get("region") or None,
                    execution_timeout=timeout(config, call.name),
                    **aws,
                )
                if not is_cluster_wired:
                    # The cluster starts when its first step is next (steps queue while it boots): it
                    # never sits idle, billing, while an earlier stage runs elsewhere.
                    previous >> create_cluster
                    is_cluster_wired = True
                create_cluster >> task >> terminate_cluster
            previous >> task
            previous = task
    return dag


dag = build_dag(load_config())
