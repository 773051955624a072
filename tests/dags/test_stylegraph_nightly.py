"""The nightly DAG: loads with no import errors, runs the stages in pipeline order on the configured
engines, tears the EMR cluster down whatever happened, and passes each stage the pipeline's arguments."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag

from dags import stylegraph_nightly as nightly
from jobs import pipeline

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"
DAG_ID = "stylegraph_nightly"
CLUSTER_ID = "j-1ABCDEFGHIJK"
ENDPOINT = "https://graph.cluster-x.eu-west-1.neptune.amazonaws.com:8182"


class TaskInstanceXcom:
    """The one thing the templates ask of the task instance: the create task's cluster id."""

    def xcom_pull(self, task_ids=None, **_):
        return {"create_cluster": CLUSTER_ID}.get(task_ids)


CONTEXT = {
    "ds": "2024-03-31",
    "ti": TaskInstanceXcom(),
    "var": {
        "value": {
            "stylegraph_bucket": "shop-data",
            "stylegraph_region": "eu-west-1",
            "stylegraph_build": "abc123",
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


def render(task, value):
    return task.render_template(value, CONTEXT)


def test_tasks_and_order(dag):
    upstream = {task.task_id: sorted(task.upstream_task_ids) for task in dag.tasks}
    assert upstream == {
        "wait_for_logs": [],
        "create_cluster": ["wait_for_logs"],
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


def test_teardown_runs_whatever_happened_and_everything_retries(dag):
    terminate = dag.get_task("terminate_cluster")
    assert terminate.trigger_rule == "all_done"
    others = [task for task in dag.tasks if task.task_id != "terminate_cluster"]
    assert {task.trigger_rule for task in others} == {"all_success"}
    assert {task.task_id: task.retries for task in dag.tasks} == {task.task_id: 2 for task in dag.tasks}
    # The cluster id comes from the create task, and the run fails when a stage fails (the Neptune load,
    # a leaf, is then upstream_failed) even though the teardown itself succeeds.
    assert render(terminate, terminate.job_flow_id) == CLUSTER_ID
    assert sorted(task.task_id for task in dag.leaves) == ["neptune_load", "terminate_cluster"]


def test_logs_sensor_waits_for_the_logical_dates_partition(dag):
    sensor = dag.get_task("wait_for_logs")
    assert render(sensor, sensor.bucket_key) == "s3://shop-data/raw/interactions/dt=2024-03-31/*"
    assert sensor.wildcard_match is True
    assert sensor.mode == "reschedule"


def test_emr_steps_are_the_pipelines_argv_for_the_logical_date(dag):
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
        f"{artifacts}/entry/embed_images.py",
        "--catalog", "s3://shop-data/raw/catalog/catalog.csv",
        "--images-root", "s3://shop-data/raw/images",
        "--output", "s3://shop-data/work/style",
        "--model", "resnet152",
        "--weights", "s3://shop-data/models/resnet152.pt",
        "--batch-size", "16",
        "--run-date", "2024-03-31",
        "--report-dir", "s3://shop-data/work/_reports",
    ]
    similarity = dag.get_task("similarity")
    sim_args = render(similarity, similarity.steps)[0]["HadoopJarStep"]["Args"]
    assert "spark.executor.resource.gpu.amount=1" not in " ".join(sim_args)
    assert render(similarity, similarity.job_flow_id) == CLUSTER_ID


def test_every_task_passes_the_pipeline_definitions_arguments(dag):
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
    seen = {}
    for task in dag.tasks:
        if task.task_id not in expected:
            continue
        name = type(task).__name__
        if name == "GlueJobOperator":
            assert task.job_name == f"stylegraph-{task.task_id}"
            rendered = render(task, task.script_args)
            seen[task.task_id] = [part for pair in rendered.items() for part in pair]
        elif name == "EmrAddStepsOperator":
            args = render(task, task.steps)[0]["HadoopJarStep"]["Args"]
            entry = next(i for i, arg in enumerate(args) if arg.endswith(".py"))
            seen[task.task_id] = args[entry + 1:]
        else:
            seen[task.task_id] = render(task, task.op_args)[0]
    assert seen == expected
    assert seen["preprocess"] == [
        "--input", "s3://shop-data/raw/interactions", "--output", "s3://shop-data/work/ncf",
        "--lookback-days", "6", "--seed", "7",
        "--run-date", "2024-03-31", "--report-dir", "s3://shop-data/work/_reports",
    ]
    assert seen["neptune_load"][:2] == ["--source", "s3://shop-data/work/style/gremlin/dt=2024-03-31/"]


def test_the_neptune_load_task_runs_the_real_job_on_the_days_export(dag):
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


def test_the_cluster_is_the_gpu_definition(dag):
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
    assert classifications["yarn-site"]["Properties"]["yarn.resource-types"] == "yarn.io/gpu"
    assert overrides["BootstrapActions"][0]["ScriptBootstrapAction"] == {
        "Path": "s3://shop-data/stylegraph/artifacts/abc123/emr/bootstrap.sh",
        "Args": ["s3://shop-data/stylegraph/artifacts/abc123/stylegraph-0.1.0-py3-none-any.whl"],
    }
    assert overrides["Instances"]["Ec2SubnetId"] == "subnet-1"


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
    with pytest.raises(ValueError, match="stage embed cannot run on Glue"):
        nightly.build_dag(config)
    config["engines"]["embed"] = "dataproc"
    with pytest.raises(ValueError, match="engine must be 'glue' or 'emr'"):
        nightly.build_dag(config)
