"""The nightly stylegraph run: wait for the day's logs, run every stage for ``{{ ds }}``, load Neptune.

Tasks come from :func:`jobs.pipeline.plan` (the same stage list and argv as ``make run`` and the EMR
CLI), rendered with ``run_date="{{ ds }}"`` so each run writes the partition of its logical date:
reruns and backfills replace that date only. Where each Spark stage runs (``glue`` or ``emr``; the
GPU embedding can only run on EMR) is configuration: ``dags/stylegraph_nightly.json``, or the file named
by ``$STYLEGRAPH_DAG_CONFIG``. The EMR cluster (GPU task group when a GPU stage is on it) is created
after the logs land and terminated whatever happened (``trigger_rule="all_done"``).

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
from airflow.sdk import DAG

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
            raise ValueError(f"stage {call.name} cannot run on Glue (it needs {call.stage.engine.upper()}s)")
        chosen[call.name] = engine
    return chosen


def artifacts(config: dict[str, Any]) -> steps.Artifacts:
    root = config["artifacts_root"].rstrip("/")
    return steps.Artifacts(
        zip_uri=f"{root}/stylegraph.zip",
        entry_prefix=f"{root}/entry",
        wheel_uri=f"{root}/{config['wheel_name']}",
        bootstrap_uri=f"{root}/emr/bootstrap.sh",
    )


def run_neptune_load(argv: list[str]) -> dict[str, Any]:
    """Start the Neptune bulk load of the day's export and wait for it (``jobs.neptune_load``)."""
    from jobs import neptune_load  # imported at run time: only the worker needs it

    return neptune_load.main(argv)


def build_dag(config: dict[str, Any]) -> DAG:
    """The nightly DAG for a configuration."""
    params = pipeline_params(config)
    calls = pipeline.plan(params, target=pipeline.PRODUCTION)
    where = engines(config, calls)
    built = artifacts(config)
    aws = {"aws_conn_id": config.get("aws_conn_id", "aws_default")}
    emr_calls = [call for call in calls if where.get(call.name) == EMR]
    default_args = {
        "owner": "stylegraph",
        "retries": int(config.get("retries", 2)),
        "retry_delay": dt.timedelta(minutes=float(config.get("retry_delay_minutes", 10))),
    }
    with DAG(
        dag_id=config.get("dag_id", "stylegraph_nightly"),
        schedule=config.get("schedule", "0 3 * * *"),
        start_date=dt.datetime.fromisoformat(config.get("start_date", "2024-03-01")).replace(tzinfo=dt.UTC),
        catchup=bool(config.get("catchup", False)),
        max_active_runs=int(config.get("max_active_runs", 1)),
        default_args=default_args,
        tags=["stylegraph"],
        doc_md=__doc__,
    ) as dag:
        wait_for_logs = S3KeySensor(
            task_id=WAIT_FOR_LOGS,
            bucket_key=f"{params.input_root.rstrip('/')}/interactions/dt={pipeline.AIRFLOW_RUN_DATE}/*",
            wildcard_match=True,
            mode="reschedule",
            poke_interval=float(config.get("logs_poke_seconds", 300)),
            timeout=float(config.get("logs_timeout_hours", 6)) * 3600,
            **aws,
        )
        create_cluster = terminate_cluster = None
        if emr_calls:
            kind = clusters.GPU if steps.needs_gpu(emr_calls) else clusters.CPU
            create_cluster = EmrCreateJobFlowOperator(
                task_id=CREATE_CLUSTER,
                job_flow_overrides=clusters.job_flow(
                    kind,
                    name=f"stylegraph {pipeline.AIRFLOW_RUN_DATE} ({kind})",
                    log_uri=config["emr_log_uri"],
                    bootstrap_uri=built.bootstrap_uri,
                    wheel_uri=built.wheel_uri,
                    subnet_id=config.get("emr_subnet_id"),
                ),
                region_name=config.get("region") or None,
                **aws,
            )
            terminate_cluster = EmrTerminateJobFlowOperator(
                task_id=TERMINATE_CLUSTER,
                job_flow_id=JOB_FLOW_ID,
                trigger_rule="all_done",
                region_name=config.get("region") or None,
                **aws,
            )
            wait_for_logs >> create_cluster >> terminate_cluster

        previous = wait_for_logs
        for call in calls:
            if call.stage.engine == pipeline.DRIVER:
                task = PythonOperator(
                    task_id=call.name, python_callable=run_neptune_load, op_args=[list(call.argv)]
                )
            elif where[call.name] == GLUE:
                task = GlueJobOperator(
                    task_id=call.name,
                    job_name=glue_jobs.job_name(call.stage),
                    script_args=glue_jobs.run_arguments(call),
                    wait_for_completion=True,
                    region_name=config.get("region") or None,
                    **aws,
                )
            else:
                task = EmrAddStepsOperator(
                    task_id=call.name,
                    job_flow_id=JOB_FLOW_ID,
                    steps=[steps.step(call, built)],
                    wait_for_completion=True,
                    waiter_delay=60,
                    waiter_max_attempts=360,
                    region_name=config.get("region") or None,
                    **aws,
                )
                create_cluster >> task >> terminate_cluster
            previous >> task
            previous = task
    return dag


dag = build_dag(load_config())
