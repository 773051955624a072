"""One whole nightly run, in process (``dag.test()``), against the local AWS endpoint (moto server): the
run dated by the DAG's timetable for the night of 2024-03-02 03:00 UTC waits for the logs' completion
marker, runs the Glue jobs and the EMR steps (moto completes them through ``tests.moto_emr``) with
``--run-date 2024-03-01`` and the configured Glue Data Catalog database, tears the cluster down and hands
the Neptune load its requests (``--dry-run`` through ``neptune_load_options``: there is no local Neptune),
every task after the ones it depends on."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import boto3
import pytest
from airflow.dag_processing.dagbag import DagBag

from dags import stylegraph_nightly as nightly
from emr import clusters as emr_clusters
from glue import jobs as glue_jobs
from tests import moto_emr

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"
REGION = "us-east-1"
BUCKET = "shop-data"
GLUE_DATABASE = "shop_catalog"
FIRES_AT = dt.datetime(2024, 3, 2, 3, tzinfo=dt.UTC)
DAY = "2024-03-01"
VARIABLES = {
    "stylegraph_bucket": BUCKET,
    "stylegraph_region": REGION,
    "stylegraph_build": "abc123",
    "stylegraph_wheelhouse": "0123456789ab",
    "stylegraph_subnet_id": "subnet-1",
    "stylegraph_neptune_endpoint": "https://graph.cluster-x.us-east-1.neptune.amazonaws.com:8182",
    "stylegraph_neptune_load_role_arn": "arn:aws:iam::123456789012:role/NeptuneLoad",
}


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """The moto server, Airflow's connection and variables pointing at it, and the DAG's configuration."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for key, value in {
        "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION,
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(
            {"conn_type": "aws", "extra": {"region_name": REGION, "endpoint_url": endpoint}}
        ),
        **{f"AIRFLOW_VAR_{name.upper()}": value for name, value in VARIABLES.items()},
    }.items():
        monkeypatch.setenv(key, value)
    config = nightly.load_config(nightly.DEFAULT_CONFIG)
    config.update(
        emr_poll_seconds=1, glue_poll_seconds=0.2, logs_poke_seconds=1, neptune_load_options=["--dry-run"],
        glue_database=GLUE_DATABASE,
    )
    config_path = tmp_path / "nightly.json"
    config_path.write_text(json.dumps(config))
    monkeypatch.setenv(nightly.CONFIG_ENV, str(config_path))
    moto_emr.accept_instance_group_configurations(monkeypatch)
    yield
    server.stop()


@pytest.fixture
def airflow_db():
    """A fresh metadata database (SQLite in the tests' Airflow home)."""
    from airflow.utils import db

    db.resetdb(skip_init=False)


def test_one_night_runs_every_stage_for_the_day_that_ended(aws, airflow_db) -> None:
    s3, glue, emr = boto3.client("s3"), boto3.client("glue"), boto3.client("emr")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key=f"raw/interactions/dt={DAY}/part-0.json", Body=b"{}\n")
    s3.put_object(Bucket=BUCKET, Key=f"raw/interactions/dt={DAY}/_SUCCESS", Body=b"")
    # The export's manifest, as the export stage (a Glue run here, which moto does not execute) writes it:
    # the Neptune task plans its loads from it.
    s3.put_object(Bucket=BUCKET, Key=f"work/style/gremlin/dt={DAY}/manifest.json", Body=json.dumps({
        "run_date": DAY, "vertex_label": "product", "edge_label": "similar",
        "files": [{"path": "vertices/part-00000-c000.csv.gz", "rows": 3},
                  {"path": "edges/part-00000-c000.csv.gz", "rows": 6}],
        "totals": {"vertices": {"rows": 3}, "edges": {"rows": 6}},
    }).encode())
    for stage in glue_jobs.GLUE_STAGES:
        glue.create_job(**glue_jobs.job_definition(
            stage, role_arn="arn:aws:iam::123456789012:role/Glue", script_uri=f"s3://{BUCKET}/s.py",
            py_files_uri=f"s3://{BUCKET}/stylegraph.zip", temp_dir_uri=f"s3://{BUCKET}/tmp/",
        ))

    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    assert bag.import_errors == {}
    dag = bag.dags["stylegraph_nightly"]
    with moto_emr.emr_runs_steps(REGION):
        run = dag.test(logical_date=FIRES_AT)

    instances = {ti.task_id: ti for ti in run.get_task_instances()}
    assert {task_id: ti.state for task_id, ti in instances.items()} == {
        task.task_id: "success" for task in dag.tasks
    }
    assert run.data_interval_start.date().isoformat() == DAY
    # Each task started after every task it depends on had ended.
    for task in dag.tasks:
        for upstream in task.upstream_task_ids:
            before, after = instances[upstream], instances[task.task_id]
            assert before.end_date <= after.start_date, (upstream, task.task_id)

    # Glue: one run of each job, with the pipeline's arguments for the day.
    for stage in glue_jobs.GLUE_STAGES:
        job_runs = glue.get_job_runs(JobName=glue_jobs.job_name(stage))["JobRuns"]
        assert len(job_runs) == 1
        assert job_runs[0]["Arguments"]["--run-date"] == DAY
        assert job_runs[0]["Arguments"]["--stylegraph-glue-database"] == GLUE_DATABASE
    export_run = glue.get_job_runs(JobName="stylegraph-export")["JobRuns"][0]["Arguments"]
    assert export_run["--edges"] == f"s3://{BUCKET}/work/style/similarity/dt={DAY}"

    # EMR: the GPU cluster, its two steps completed for the day, then terminated.
    (cluster,) = emr.list_clusters()["Clusters"]
    assert cluster["Name"] == f"stylegraph {DAY} (gpu)"
    described = emr.describe_cluster(ClusterId=cluster["Id"])["Cluster"]
    assert described["Status"]["State"] == "TERMINATED"
    assert emr_clusters.configured_glue_database(described["Configurations"]) == GLUE_DATABASE
    emr_steps = list(reversed(emr.list_steps(ClusterId=cluster["Id"])["Steps"]))
    assert [(step["Name"], step["Status"]["State"]) for step in emr_steps] == [
        (f"stylegraph embed {DAY}", "COMPLETED"), (f"stylegraph similarity {DAY}", "COMPLETED"),
    ]
    embed_args = emr_steps[0]["Config"]["Args"]
    assert embed_args[embed_args.index("--run-date") + 1] == DAY
    assert embed_args[embed_args.index("--device") + 1] == "cuda"
    assert embed_args[embed_args.index("--weights") + 1] == f"s3://{BUCKET}/models/resnet152.pt"

    # Neptune: the load of the day's export, as the real job would request it.
    requests = instances["neptune_load"].xcom_pull(task_ids="neptune_load")
    export = f"s3://{BUCKET}/work/style/gremlin/dt={DAY}"
    assert (requests["vertices"]["source"], requests["edges"]["source"]) == (
        f"{export}/vertices/", f"{export}/edges/"
    )
