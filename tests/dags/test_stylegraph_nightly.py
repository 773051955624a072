"""The nightly DAG: loads with no import errors, runs the stages in pipeline order on the configured
engines, tears the EMR cluster down whatever happened, and passes each stage the pipeline's arguments for
the day that ended, as the DAG's own timetable dates its runs (scheduled and backfilled)."""
from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.models.backfill import _get_info_list
from airflow.serialization.serialized_objects import DagSerialization
from airflow.timetables.base import DagRunInfo, DataInterval, TimeRestriction

from dags import stylegraph_nightly as nightly
from glue import jobs as glue_jobs
from jobs import pipeline
from jobs.common.cli import JobError

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"
DAG_ID = "stylegraph_nightly"
CLUSTER_ID = "j-1ABCDEFGHIJK"
ENDPOINT = "https://graph.cluster-x.eu-west-1.neptune.amazonaws.com:8182"


UTC = dt.UTC


class TaskInstanceXcom:
    """The one thing the templates ask of the task instance: the create task's cluster id."""

    def xcom_pull(self, task_ids=None, **_):
        return {"create_cluster": CLUSTER_ID}.get(task_ids)


def context_for(info: DagRunInfo) -> dict:
    """The template context fields a run gets from its timetable's DagRunInfo."""
    return {
        "logical_date": info.logical_date,
        "ds": info.logical_date.strftime("%Y-%m-%d"),
        "data_interval_start": info.data_interval.start,
        "data_interval_end": info.data_interval.end,
        **BASE_CONTEXT,
    }


def scheduled_run(dag, fires_at: dt.datetime) -> DagRunInfo:
    """The run the scheduler creates to fire at ``fires_at``, from the serialized DAG's timetable."""
    timetable = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag)).timetable
    previous = DataInterval(fires_at - dt.timedelta(days=2), fires_at - dt.timedelta(days=1))
    info = timetable.next_dagrun_info(
        last_automated_data_interval=previous,
        restriction=TimeRestriction(earliest=dag.start_date, latest=None, catchup=True),
    )
    assert info.run_after == fires_at
    return info


BASE_CONTEXT = {
    "ti": TaskInstanceXcom(),
    "var": {
        "value": {
            "stylegraph_bucket": "shop-data",
            "stylegraph_region": "eu-west-1",
            "stylegraph_build": "abc123",
            "stylegraph_wheelhouse": "0123456789ab",
            "stylegraph_subnet_id": "subnet-1",
            "stylegraph_neptune_endpoint": ENDPOINT,
            "stylegraph_neptune_load_role_arn": "arn:aws:iam::123456789012:role/NeptuneLoad",
        }
    },
}


@pytest.fixture(scope="module")
def dag():
    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    assert bag.import_errors == {}
    assert sorted(bag.dags) == [DAG_ID]
    return bag.dags[DAG_ID]


@pytest.fixture(scope="module")
def context(dag) -> dict:
    """The context of the run that fires at 2024-04-01 03:00 UTC: it processes 2024-03-31."""
    return context_for(scheduled_run(dag, dt.datetime(2024, 4, 1, 3, tzinfo=UTC)))


@pytest.fixture
def render(context):
    def render_with(task, value):
        return task.render_template(value, context)

    return render_with


def stage_arguments(dag, context: dict) -> dict[str, list[str]]:
    """Each stage task's rendered job argv, however its operator carries it."""
    seen = {}
    for task in dag.tasks:
        name = type(task).__name__
        if name == "GlueJobOperator":
            rendered = task.render_template(task.script_args, context)
            seen[task.task_id] = [part for pair in rendered.items() for part in pair]
        elif name == "EmrAddStepsOperator":
            args = task.render_template(task.steps, context)[0]["HadoopJarStep"]["Args"]
            entry = next(i for i, arg in enumerate(args) if arg.endswith(".py"))
            seen[task.task_id] = args[entry + 1:]
        elif name == "PythonOperator":
            seen[task.task_id] = task.render_template(task.op_args, context)[0]
    return seen


def run_dates(dag, context: dict) -> dict[str, str]:
    """The ``--run-date`` every stage gets, and the day the logs sensor waits for."""
    dates = {
        name: dict(zip(argv[::2], argv[1::2], strict=True))["--run-date"]
        for name, argv in stage_arguments(dag, context).items()
    }
    sensor = dag.get_task("wait_for_logs")
    key = sensor.render_template(sensor.bucket_key, context)
    dates["wait_for_logs"] = key.split("/dt=")[1].split("/")[0]
    return dates


STAGE_TASKS = ["embed", "export", "neptune_load", "preprocess", "similarity", "validate", "wait_for_logs"]


def test_the_run_that_fires_at_3am_processes_the_day_that_ended(dag):
    info = scheduled_run(dag, dt.datetime(2024, 3, 2, 3, tzinfo=UTC))
    assert info.data_interval == DataInterval(
        dt.datetime(2024, 3, 1, 3, tzinfo=UTC), dt.datetime(2024, 3, 2, 3, tzinfo=UTC)
    )
    assert run_dates(dag, context_for(info)) == dict.fromkeys(STAGE_TASKS, "2024-03-01")
    neptune = stage_arguments(dag, context_for(info))["neptune_load"]
    assert neptune[:2] == ["--source", "s3://shop-data/work/style/gremlin/dt=2024-03-01/"]


def test_a_run_without_a_data_interval_fails_at_once_instead_of_waiting_for_dt_none(dag):
    sensor = dag.get_task("wait_for_logs")
    context = {**BASE_CONTEXT, "data_interval_start": None, "logical_date": None}
    with pytest.raises(ValueError, match="this run has no data interval, so no day to process"):
        sensor.render_template(sensor.bucket_key, context)


def test_a_backfill_of_a_day_reruns_exactly_that_day(dag):
    serialized = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
    # What `airflow backfill create --from-date 2024-02-28 --to-date 2024-02-29` runs: Airflow's planner.
    infos = _get_info_list(
        from_date=dt.datetime(2024, 2, 28, tzinfo=UTC),
        to_date=dt.datetime(2024, 2, 29, tzinfo=UTC),
        reverse=False,
        dag=serialized,
    )
    assert len(infos) == 1
    assert run_dates(dag, context_for(infos[0])) == dict.fromkeys(STAGE_TASKS, "2024-02-28")


def test_tasks_and_order(dag):
    upstream = {task.task_id: sorted(task.upstream_task_ids) for task in dag.tasks}
    assert upstream == {
        "wait_for_logs": [],
        # The cluster boots when its first step is next: no GPU idles while preprocess runs on Glue.
        "create_cluster": ["preprocess"],
        "preprocess": ["wait_for_logs"],
        "embed": ["create_cluster", "preprocess"],
        "similarity": ["create_cluster", "embed"],
        "export": ["similarity"],
        "validate": ["export"],
        "neptune_load": ["validate"],
        "terminate_cluster": ["create_cluster", "embed", "similarity"],
    }
    types = {task.task_id: type(task).__name__ for task in dag.tasks}
    assert types == {
        "wait_for_logs": "S3KeySensor",
        "create_cluster": "EmrCreateJobFlowOperator",
        "preprocess": "GlueJobOperator",
        "embed": "EmrAddStepsOperator",
        "similarity": "EmrAddStepsOperator",
        "export": "GlueJobOperator",
        "validate": "GlueJobOperator",
        "neptune_load": "PythonOperator",
        "terminate_cluster": "EmrTerminateJobFlowOperator",
    }


def test_teardown_runs_whatever_happened_and_retries_are_airflows_alone(dag, render):
    terminate = dag.get_task("terminate_cluster")
    assert terminate.trigger_rule == "all_done"
    others = [task for task in dag.tasks if task.task_id != "terminate_cluster"]
    assert {task.trigger_rule for task in others} == {"all_success"}
    # The sensor's timeout is the whole wait; a Glue task's retry is the only retry (MaxRetries=0).
    assert {task.task_id: task.retries for task in dag.tasks} == {
        task.task_id: 0 if task.task_id == "wait_for_logs" else 2 for task in dag.tasks
    }
    assert glue_jobs.MAX_RETRIES == 0
    timeouts = {task.task_id: task.execution_timeout for task in dag.tasks}
    assert all(isinstance(value, dt.timedelta) and value > dt.timedelta(0) for value in timeouts.values())
    assert timeouts["embed"] == dt.timedelta(hours=4)
    # A Glue task outlives Glue's own job timeout, so Glue reports a timeout rather than Airflow.
    assert timeouts["preprocess"] > dt.timedelta(minutes=glue_jobs.TIMEOUT_MINUTES)
    embed = dag.get_task("embed")
    assert embed.waiter_delay * embed.waiter_max_attempts <= timeouts["embed"].total_seconds()
    # The cluster id comes from the create task, and the run fails when a stage fails (the Neptune load,
    # a leaf, is then upstream_failed) even though the teardown itself succeeds.
    assert render(terminate, terminate.job_flow_id) == CLUSTER_ID
    assert sorted(task.task_id for task in dag.leaves) == ["neptune_load", "terminate_cluster"]


def test_logs_sensor_waits_for_the_days_completion_marker(dag, render):
    sensor = dag.get_task("wait_for_logs")
    assert render(sensor, sensor.bucket_key) == "s3://shop-data/raw/interactions/dt=2024-03-31/_SUCCESS"
    assert sensor.wildcard_match is False  # the marker, not the first object of a day still arriving
    assert (sensor.mode, sensor.deferrable) == ("reschedule", False)
    assert sensor.timeout == 6 * 3600
    config = copy.deepcopy(nightly.load_config())
    config.update(logs_marker="manifest.json", deferrable=True)
    other = nightly.build_dag(config).get_task("wait_for_logs")
    assert render(other, other.bucket_key).endswith("/dt=2024-03-31/manifest.json")
    assert other.deferrable is True


def test_emr_steps_are_the_pipelines_argv_for_the_day(dag, render):
    embed = dag.get_task("embed")
    steps = render(embed, embed.steps)
    assert len(steps) == 1
    args = steps[0]["HadoopJarStep"]["Args"]
    assert steps[0]["HadoopJarStep"]["Jar"] == "command-runner.jar"
    artifacts = "s3://shop-data/stylegraph/artifacts/abc123"
    assert args == [
        "spark-submit", "--deploy-mode", "cluster", "--py-files", f"{artifacts}/stylegraph.zip",
        "--conf", "spark.executor.cores=4",
        "--conf", "spark.executor.resource.gpu.amount=1",
        "--conf", "spark.task.resource.gpu.amount=0.25",
        "--conf",
        "spark.executor.resource.gpu.discoveryScript=/usr/lib/spark/scripts/gpu/getGpusResources.sh",
        "--conf", "spark.python.daemon.module=jobs.common.worker_daemon",
        f"{artifacts}/entry/embed_images.py",
        "--catalog", "s3://shop-data/raw/catalog/catalog.csv",
        "--images-root", "s3://shop-data/raw/images",
        "--output", "s3://shop-data/work/style",
        "--model", "resnet152",
        "--weights", "s3://shop-data/models/resnet152.pt",
        "--batch-size", "16",
        "--device", "cuda",
        "--run-date", "2024-03-31",
        "--report-dir", "s3://shop-data/work/_reports",
    ]
    similarity = dag.get_task("similarity")
    sim_args = render(similarity, similarity.steps)[0]["HadoopJarStep"]["Args"]
    assert "spark.executor.resource.gpu.amount=1" not in " ".join(sim_args)
    assert render(similarity, similarity.job_flow_id) == CLUSTER_ID


def test_every_task_passes_the_pipeline_definitions_arguments(dag, context):
    config = nightly.load_config()
    params = nightly.pipeline_params(config).replace(
        run_date="2024-03-31",
        input_root="s3://shop-data/raw",
        work_root="s3://shop-data/work",
        weights="s3://shop-data/models/resnet152.pt",
        neptune_endpoint=ENDPOINT,
        neptune_iam_role_arn="arn:aws:iam::123456789012:role/NeptuneLoad",
        region="eu-west-1",
    )
    expected = {call.name: list(call.argv) for call in pipeline.plan(params, target=pipeline.PRODUCTION)}
    seen = stage_arguments(dag, context)
    assert {task.job_name for task in dag.tasks if type(task).__name__ == "GlueJobOperator"} == {
        "stylegraph-preprocess", "stylegraph-export", "stylegraph-validate"
    }
    assert seen == expected
    assert seen["preprocess"] == [
        "--input", "s3://shop-data/raw/interactions", "--output", "s3://shop-data/work/ncf",
        "--lookback-days", "6", "--seed", "7",
        "--run-date", "2024-03-31", "--report-dir", "s3://shop-data/work/_reports",
    ]
    assert seen["neptune_load"][:2] == ["--source", "s3://shop-data/work/style/gremlin/dt=2024-03-31/"]


@pytest.fixture
def days_export_on_s3(monkeypatch):
    """The day's export manifest (what the Neptune job plans from) on a local moto S3 server."""
    import json

    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    import urllib.request

    # Moto's backends live in this process: start from an empty account, whatever an earlier test made.
    urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST"))
    for key, value in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "eu-west-1",
                       "AWS_DEFAULT_REGION": "eu-west-1"}.items():
        monkeypatch.setenv(key, value)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="shop-data", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    s3.put_object(Bucket="shop-data", Key="work/style/gremlin/dt=2024-03-31/manifest.json", Body=json.dumps({
        "run_date": "2024-03-31", "vertex_label": "product", "edge_label": "similar",
        "files": [{"path": "vertices/part-00000-c000.csv.gz", "rows": 3},
                  {"path": "edges/part-00000-c000.csv.gz", "rows": 6}],
        "totals": {"vertices": {"rows": 3}, "edges": {"rows": 6}},
    }).encode())
    yield
    server.stop()


def test_the_neptune_load_task_runs_the_real_job_on_the_days_export(dag, render, days_export_on_s3):
    task = dag.get_task("neptune_load")
    argv = render(task, task.op_args)[0]
    requests = task.python_callable([*argv, "--dry-run"])  # the job prints its requests, calls nothing
    export = "s3://shop-data/work/style/gremlin/dt=2024-03-31"
    assert requests["endpoint"].startswith(ENDPOINT)
    assert (requests["vertices"]["source"], requests["edges"]["source"]) == (
        f"{export}/vertices/", f"{export}/edges/"
    )
    assert requests["vertices"]["iamRoleArn"] == "arn:aws:iam::123456789012:role/NeptuneLoad"
    assert requests["edges"]["s3BucketRegion"] == "eu-west-1"


def test_the_cluster_is_the_gpu_definition(dag, render):
    create = dag.get_task("create_cluster")
    overrides = render(create, create.job_flow_overrides)
    assert overrides["ReleaseLabel"].startswith("emr-7.")
    groups = {item["InstanceRole"]: item["InstanceType"] for item in overrides["Instances"]["InstanceGroups"]}
    assert groups["TASK"].startswith(("g5.", "g4dn."))
    classifications = {item["Classification"]: item for item in overrides["Configurations"]}
    assert classifications["capacity-scheduler"]["Properties"] == {
        "yarn.scheduler.capacity.resource-calculator":
            "org.apache.hadoop.yarn.util.resource.DominantResourceCalculator"
    }
    assert classifications["yarn-site"]["Properties"] == {"yarn.resource-types": "yarn.io/gpu"}
    task_group = next(g for g in overrides["Instances"]["InstanceGroups"] if g["InstanceRole"] == "TASK")
    node_settings = {item["Classification"]: item for item in task_group["Configurations"]}
    assert node_settings["yarn-site"]["Properties"]["yarn.nodemanager.resource-plugins"] == "yarn.io/gpu"
    assert "container-executor" in node_settings and "container-executor" not in classifications
    assert overrides["BootstrapActions"][0]["ScriptBootstrapAction"] == {
        "Path": "s3://shop-data/stylegraph/artifacts/abc123/emr/bootstrap.sh",
        "Args": [
            "s3://shop-data/stylegraph/wheelhouse/0123456789ab",
            "s3://shop-data/stylegraph/artifacts/abc123/stylegraph-0.1.0-py3-none-any.whl",
        ],
    }
    assert overrides["Instances"]["Ec2SubnetId"] == "subnet-1"
    assert overrides["AutoTerminationPolicy"] == {"IdleTimeout": 30 * 60}
    assert overrides["Name"] == "stylegraph 2024-03-31 (gpu)"


def test_engines_are_configuration():
    config = copy.deepcopy(nightly.load_config())
    config["engines"] = {name: "emr" for name in config["engines"]}
    all_emr = nightly.build_dag(config)
    kinds = {task.task_id: type(task).__name__ for task in all_emr.tasks}
    assert [task_id for task_id, kind in kinds.items() if kind == "GlueJobOperator"] == []
    assert sorted(all_emr.get_task("terminate_cluster").upstream_task_ids) == [
        "create_cluster", "embed", "export", "preprocess", "similarity", "validate",
    ]
    config["engines"]["embed"] = "glue"
    with pytest.raises(ValueError, match=r"stage embed cannot run on Glue \(it needs GPUs"):
        nightly.build_dag(config)
    config["engines"]["embed"] = "emr"
    config["engines"]["similarity"] = "glue"
    with pytest.raises(
        ValueError, match=r"stage similarity cannot run on Glue \(its tasks need threadpoolctl"
    ):
        nightly.build_dag(config)
    config["engines"]["similarity"] = "emr"
    config["engines"]["embed"] = "dataproc"
    with pytest.raises(ValueError, match="engine must be 'glue' or 'emr'"):
        nightly.build_dag(config)


def test_the_glue_database_reaches_the_emr_cluster_and_the_glue_runs(dag, render):
    config = copy.deepcopy(nightly.load_config())
    assert config["glue_database"] is None  # off by default: nothing passes it
    create = dag.get_task("create_cluster")
    assert "STYLEGRAPH_GLUE_DATABASE" not in str(render(create, create.job_flow_overrides))
    glue_tasks = [task for task in dag.tasks if type(task).__name__ == "GlueJobOperator"]
    assert not any("--stylegraph-glue-database" in task.script_args for task in glue_tasks)

    config["glue_database"] = "shop_catalog"
    with_db = nightly.build_dag(config)
    create = with_db.get_task("create_cluster")
    classifications = {
        item["Classification"]: item for item in render(create, create.job_flow_overrides)["Configurations"]
    }
    (export,) = classifications["spark-env"]["Configurations"]
    assert export["Properties"]["STYLEGRAPH_GLUE_DATABASE"] == "shop_catalog"
    assert classifications["spark-defaults"]["Properties"][
        "spark.yarn.appMasterEnv.STYLEGRAPH_GLUE_DATABASE"
    ] == "shop_catalog"
    glue_tasks = [task for task in with_db.tasks if type(task).__name__ == "GlueJobOperator"]
    assert sorted(task.task_id for task in glue_tasks) == ["export", "preprocess", "validate"]
    for task in glue_tasks:
        assert render(task, task.script_args)["--stylegraph-glue-database"] == "shop_catalog"

    config["glue_database"] = "{{ var.value.stylegraph_glue_database }}"
    with pytest.raises(JobError, match=r"^Glue database name '\{\{ var.value"):
        nightly.build_dag(config)


def test_the_dag_refuses_to_embed_without_real_weights():
    config = copy.deepcopy(nightly.load_config())
    config.pop("weights")
    with pytest.raises(JobError, match=r"^production runs need real embedding weights"):
        nightly.build_dag(config)
    config["weights"] = "random:7"
    with pytest.raises(JobError, match=r"^production runs refuse --weights random:7"):
        nightly.build_dag(config)
