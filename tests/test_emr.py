"""The EMR CLI end to end against a local AWS endpoint (moto server): artifacts uploaded, the GPU
cluster created with YARN GPU scheduling, the pipeline's steps added with the right arguments, a failed
step reported with its details, the Glue Data Catalog database put into every driver's environment, and
clear refusals (missing bucket, region, credentials, bad input)."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import boto3
import pytest

from emr import cli as emr_cli
from emr import clusters
from emr.dist import build
from jobs.common.cli import EXIT_JOB_ERROR, JobError, run
from tests import moto_emr
from tests.moto_emr import accept_instance_group_configurations

RUN_DATE = "2024-03-31"
REGION = "us-east-1"


WHEELS = {"cpu": "torch-2.14.1+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
          "gpu": "torch-2.14.1-cp311-cp311-manylinux_2_28_x86_64.whl"}


@pytest.fixture(scope="module")
def dist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """make dist's output, with one stand-in wheel per node kind where ``--wheelhouse`` would download
    the real ones (GBs)."""
    out = tmp_path_factory.mktemp("emr") / "dist"
    build(out)
    for kind, name in WHEELS.items():
        (out / "wheelhouse" / kind / name).write_bytes(f"{kind} wheel".encode())
    return out


@pytest.fixture
def bucket(aws_env: str) -> str:
    name = f"stylegraph-emr-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture(autouse=True)
def emr_group_configurations(monkeypatch: pytest.MonkeyPatch) -> None:
    accept_instance_group_configurations(monkeypatch)


def emr_runs_steps(fail_stage: str | None = None, reason: str = ""):
    return moto_emr.emr_runs_steps(REGION, fail_stage, reason)


def run_args(bucket: str, dist_dir: Path, *extra: str) -> list[str]:
    return [
        "run", "--bucket", bucket, "--prefix", "sg",
        "--input-root", f"s3://{bucket}/raw", "--work-root", f"s3://{bucket}/work",
        "--run-date", RUN_DATE, "--weights", f"s3://{bucket}/models/resnet152.pt",
        "--dist", str(dist_dir), "--poll-seconds", "0.02", *extra,
    ]


def all_keys(bucket: str) -> list[str]:
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def test_run_uploads_creates_the_gpu_cluster_adds_the_steps_and_terminates(
    bucket: str, dist_dir: Path
) -> None:
    with emr_runs_steps():
        result = emr_cli.main(run_args(bucket, dist_dir))
    emr = boto3.client("emr")
    s3 = boto3.client("s3")
    cluster_id = result["cluster_id"]

    dist_files = sorted(p.relative_to(dist_dir).as_posix() for p in dist_dir.rglob("*") if p.is_file())
    build_prefix = next(key for key in all_keys(bucket) if key.endswith("/stylegraph.zip")).rsplit("/", 1)[0]
    assert build_prefix.startswith("sg/artifacts/")
    digest = json.loads((dist_dir / "manifest.json").read_text())["wheelhouse"]
    wheelhouse = f"sg/wheelhouse/{digest}"
    assert all_keys(bucket) == sorted(
        f"{wheelhouse}/{rel.removeprefix('wheelhouse/')}" if rel.startswith("wheelhouse/")
        else f"{build_prefix}/{rel}"
        for rel in dist_files
    )
    uploaded_zip = s3.get_object(Bucket=bucket, Key=f"{build_prefix}/stylegraph.zip")["Body"].read()
    assert uploaded_zip == (dist_dir / "stylegraph.zip").read_bytes()
    base = f"s3://{bucket}/{build_prefix}"

    cluster = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
    assert cluster["ReleaseLabel"].startswith("emr-7.")
    assert cluster["Status"]["State"] == "TERMINATED"
    configurations = {item["Classification"]: item for item in cluster["Configurations"]}
    assert configurations["capacity-scheduler"]["Properties"] == {
        "yarn.scheduler.capacity.resource-calculator":
            "org.apache.hadoop.yarn.util.resource.DominantResourceCalculator",
    }
    yarn = configurations["yarn-site"]["Properties"]
    assert yarn["yarn.resource-types"] == "yarn.io/gpu"
    # The GPU NodeManager settings only on the GPU group: a core node with the GPU plugin would not start.
    assert "yarn.nodemanager.resource-plugins" not in yarn
    assert "container-executor" not in configurations
    assert "STYLEGRAPH_GLUE_DATABASE" not in json.dumps(cluster["Configurations"])  # no --glue-database
    listed = emr.list_instance_groups(ClusterId=cluster_id)["InstanceGroups"]
    groups = sorted((g["InstanceGroupType"], g["InstanceType"], g["RequestedInstanceCount"]) for g in listed)
    assert groups == [("CORE", "m5.2xlarge", 2), ("MASTER", "m5.xlarge", 1), ("TASK", "g5.xlarge", 2)]
    group_configurations = {
        g["InstanceGroupType"]: {c["Classification"]: c for c in g.get("Configurations", [])} for g in listed
    }
    assert set(group_configurations["TASK"]) == {"yarn-site", "container-executor"}
    assert group_configurations["TASK"]["yarn-site"]["Properties"]["yarn.nodemanager.resource-plugins"] == (
        "yarn.io/gpu"
    )
    gpu_module = group_configurations["TASK"]["container-executor"]["Configurations"][0]
    assert gpu_module == {"Classification": "gpu", "Properties": {"module.enabled": "true"}}
    assert group_configurations["CORE"] == group_configurations["MASTER"] == {}
    assert cluster["EbsRootVolumeSize"] == 40
    actions = emr.list_bootstrap_actions(ClusterId=cluster_id)["BootstrapActions"]
    assert [(a["ScriptPath"], a["Args"]) for a in actions] == [
        (f"{base}/emr/bootstrap.sh",
         [f"s3://{bucket}/{wheelhouse}", f"{base}/stylegraph-0.1.0-py3-none-any.whl"])
    ]
    uploaded_wheel = s3.get_object(Bucket=bucket, Key=f"{wheelhouse}/gpu/{WHEELS['gpu']}")["Body"].read()
    assert uploaded_wheel == b"gpu wheel"

    steps = list(reversed(emr.list_steps(ClusterId=cluster_id)["Steps"]))  # EMR lists newest first
    assert [(s["Name"], s["Status"]["State"]) for s in steps] == [
        (f"stylegraph {name} {RUN_DATE}", "COMPLETED")
        for name in ("preprocess", "embed", "similarity", "export", "validate")
    ]
    assert {s["Config"]["Jar"] for s in steps} == {"command-runner.jar"}
    assert steps[0]["Config"]["Args"] == [
        "spark-submit", "--deploy-mode", "cluster", "--py-files", f"{base}/stylegraph.zip",
        f"{base}/entry/preprocess_interactions.py",
        "--input", f"s3://{bucket}/raw/interactions", "--output", f"s3://{bucket}/work/ncf",
        "--lookback-days", "6", "--seed", "7",
        "--run-date", RUN_DATE, "--report-dir", f"s3://{bucket}/work/_reports",
    ]
    embed_args = steps[1]["Config"]["Args"]
    assert embed_args[:16] == [
        "spark-submit", "--deploy-mode", "cluster", "--py-files", f"{base}/stylegraph.zip",
        "--conf", "spark.executor.cores=4",
        "--conf", "spark.executor.resource.gpu.amount=1",
        "--conf", "spark.task.resource.gpu.amount=0.25",
        "--conf",
        "spark.executor.resource.gpu.discoveryScript=/usr/lib/spark/scripts/gpu/getGpusResources.sh",
        # Its Python workers fork from a daemon that has imported torch (installed with the wheel).
        "--conf", "spark.python.daemon.module=jobs.common.worker_daemon",
        f"{base}/entry/embed_images.py",
    ]
    assert embed_args[embed_args.index("--weights") + 1] == f"s3://{bucket}/models/resnet152.pt"
    assert f"s3://{bucket}/work/style/gremlin/dt={RUN_DATE}/vertices" in steps[4]["Config"]["Args"]


def test_a_failed_step_exits_2_naming_it_and_the_cluster_is_still_terminated(
    bucket: str, dist_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reason = "Container killed by YARN for exceeding memory limits (java.lang.OutOfMemoryError)"
    with emr_runs_steps(fail_stage="similarity", reason=reason), pytest.raises(JobError) as failure:
        emr_cli.main(run_args(bucket, dist_dir))
    message = str(failure.value)
    assert message.startswith(f"EMR step 'stylegraph similarity {RUN_DATE}' (s-")
    assert message.endswith(f"ended FAILED: {reason}")
    emr = boto3.client("emr")
    cluster_id = message.split(" on cluster ")[1].split(" ")[0]
    assert emr.describe_cluster(ClusterId=cluster_id)["Cluster"]["Status"]["State"] == "TERMINATED"
    states = [s["Status"]["State"] for s in reversed(emr.list_steps(ClusterId=cluster_id)["Steps"])]
    assert states == ["COMPLETED", "COMPLETED", "FAILED", "CANCELLED", "CANCELLED"]

    with emr_runs_steps(fail_stage="preprocess", reason="boom"):
        assert run(emr_cli.main, run_args(bucket, dist_dir)) == EXIT_JOB_ERROR
    assert "ended FAILED: boom" in caplog.text


def test_an_existing_cluster_gets_the_steps_and_is_left_running(bucket: str, dist_dir: Path) -> None:
    emr = boto3.client("emr")
    cluster_id = emr.run_job_flow(
        Name="shared",
        ReleaseLabel="emr-7.5.0",
        JobFlowRole="EMR_EC2_DefaultRole",
        ServiceRole="EMR_DefaultRole",
        Instances={
            "MasterInstanceType": "m5.xlarge", "InstanceCount": 1, "KeepJobFlowAliveWhenNoSteps": True
        },
    )["JobFlowId"]
    with emr_runs_steps():
        args = run_args(bucket, dist_dir, "--cluster-id", cluster_id, "--stages", "similarity")
        result = emr_cli.main(args)
    assert (result["cluster_id"], result["created"]) == (cluster_id, False)
    assert emr.describe_cluster(ClusterId=cluster_id)["Cluster"]["Status"]["State"] != "TERMINATED"
    steps = emr.list_steps(ClusterId=cluster_id)["Steps"]
    assert [(s["Name"], s["Status"]["State"]) for s in steps] == [
        (f"stylegraph similarity {RUN_DATE}", "COMPLETED")
    ]


def test_the_glue_database_reaches_the_driver_in_both_deploy_modes(bucket: str, dist_dir: Path) -> None:
    emr = boto3.client("emr")
    args = run_args(bucket, dist_dir, "--stages", "similarity", "--glue-database", "shop_catalog")
    with emr_runs_steps():
        cluster_id = emr_cli.main([*args, "--keep-cluster"])["cluster_id"]
    cluster = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
    configurations = {item["Classification"]: item for item in cluster["Configurations"]}
    assert len(configurations) == len(cluster["Configurations"])  # one entry per classification
    # Client mode: spark-submit sources spark-env.sh on the master and the driver inherits its exports
    # (one export entry, next to PYSPARK_PYTHON's).
    assert configurations["spark-env"]["Configurations"] == [{
        "Classification": "export",
        "Properties": {
            "PYSPARK_PYTHON": "/usr/bin/python3.11",
            "PYSPARK_DRIVER_PYTHON": "/usr/bin/python3.11",
            "STYLEGRAPH_GLUE_DATABASE": "shop_catalog",
        },
    }]
    # Cluster mode: the driver runs in the YARN application master, whose environment comes from here.
    defaults = configurations["spark-defaults"]["Properties"]
    assert defaults["spark.yarn.appMasterEnv.STYLEGRAPH_GLUE_DATABASE"] == "shop_catalog"
    assert defaults["spark.yarn.appMasterEnv.PYSPARK_PYTHON"] == "/usr/bin/python3.11"
    # Other applications on the cluster keep PySpark's own worker daemon: only the embed step names ours.
    assert "spark.python.daemon.module" not in defaults
    assert clusters.configured_glue_database(cluster["Configurations"]) == "shop_catalog"

    # A running cluster's configuration is what its drivers get: reusing it with the same database works,
    # with another one (or one created without it) is refused before any step is added (the short timeout
    # ends a run that would wrongly go on to wait for its step).
    with emr_runs_steps():
        emr_cli.main([*args, "--cluster-id", cluster_id])
    assert len(emr.list_steps(ClusterId=cluster_id)["Steps"]) == 2
    other = run_args(bucket, dist_dir, "--stages", "similarity", "--glue-database", "other_catalog")
    with pytest.raises(JobError, match=(
        rf"^EMR cluster {cluster_id} does not pass STYLEGRAPH_GLUE_DATABASE=other_catalog to its drivers "
        r"\(it has shop_catalog\): run without --cluster-id"
    )):
        emr_cli.main([*other, "--cluster-id", cluster_id, "--timeout-minutes", "0.01"])
    plain = emr.run_job_flow(
        Name="plain", ReleaseLabel="emr-7.5.0",
        JobFlowRole="EMR_EC2_DefaultRole", ServiceRole="EMR_DefaultRole",
        Instances={
            "MasterInstanceType": "m5.xlarge", "InstanceCount": 1, "KeepJobFlowAliveWhenNoSteps": True
        },
    )["JobFlowId"]
    with pytest.raises(JobError, match=r"not pass STYLEGRAPH_GLUE_DATABASE=shop_catalog .*\(it has none\)"):
        emr_cli.main([*args, "--cluster-id", plain, "--timeout-minutes", "0.01"])
    assert len(emr.list_steps(ClusterId=cluster_id)["Steps"]) == 2
    assert emr.list_steps(ClusterId=plain)["Steps"] == []
    emr.terminate_job_flows(JobFlowIds=[cluster_id, plain])


def test_a_dist_without_the_wheelhouse_is_refused_before_a_cluster_is_created(
    bucket: str, tmp_path: Path
) -> None:
    build(tmp_path / "dist", wheel=False)  # make dist without --wheelhouse: requirements, no wheels
    emr = boto3.client("emr")
    before = len(emr.list_clusters()["Clusters"])
    with pytest.raises(JobError, match=r"/dist/wheelhouse has no wheels for cpu, gpu: EMR nodes install"):
        emr_cli.main(run_args(bucket, tmp_path / "dist"))
    assert len(emr.list_clusters()["Clusters"]) == before


def test_the_plan_has_an_idle_auto_termination_policy_and_a_sized_root_volume(
    dist_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """(moto keeps no AutoTerminationPolicy: the definition is checked as the CLI prints it.)"""
    args = ["plan", *run_args("shop-artifacts", dist_dir)[1:]]
    plan = emr_cli.main(args)
    assert json.loads(capsys.readouterr().out) == plan
    cluster = plan["cluster"]
    assert cluster["AutoTerminationPolicy"] == {"IdleTimeout": 1800}
    assert cluster["EbsRootVolumeSize"] == 40
    assert emr_cli.main([*args, "--idle-minutes", "45"])["cluster"]["AutoTerminationPolicy"] == {
        "IdleTimeout": 2700
    }
    embed = next(step for step in plan["steps"] if step["Name"].startswith("stylegraph embed "))
    embed_args = embed["HadoopJarStep"]["Args"]
    assert embed_args[embed_args.index("--device") + 1] == "cuda"
    similarity = next(step for step in plan["steps"] if " similarity " in step["Name"])
    assert "--device" not in similarity["HadoopJarStep"]["Args"]


def test_a_run_that_embeds_without_real_weights_is_refused_before_anything_is_created(
    bucket: str, dist_dir: Path
) -> None:
    emr = boto3.client("emr")
    before = len(emr.list_clusters()["Clusters"])
    args = run_args(bucket, dist_dir)
    weights = args.index("--weights")
    without = args[:weights] + args[weights + 2:]
    with pytest.raises(JobError, match=r"^production runs need real embedding weights"):
        emr_cli.main(without)
    with pytest.raises(JobError, match=r"^production runs refuse --weights random:7"):
        emr_cli.main([*without, "--weights", "random:7"])
    assert run(emr_cli.main, ["plan", *without[1:]]) == EXIT_JOB_ERROR
    assert len(emr.list_clusters()["Clusters"]) == before
    assert all_keys(bucket) == []


def test_a_missing_bucket_is_named_and_nothing_is_created(aws_env: str, dist_dir: Path) -> None:
    emr = boto3.client("emr")
    before = len(emr.list_clusters()["Clusters"])
    with pytest.raises(JobError, match=r"^S3 bucket 'stylegraph-no-such-bucket' does not exist"):
        emr_cli.main(run_args("stylegraph-no-such-bucket", dist_dir))
    assert len(emr.list_clusters()["Clusters"]) == before


def test_missing_region_and_missing_credentials_are_clear(
    aws_env: str, dist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask an instance metadata service
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    with pytest.raises(JobError, match=r"^no AWS region: pass --region or set AWS_REGION"):
        emr_cli.main(run_args("any-bucket", dist_dir))
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(JobError, match=r"^no AWS credentials: set AWS_PROFILE"):
        emr_cli.main(run_args("any-bucket", dist_dir))


def test_unknown_stage_and_bad_date_are_refused_before_anything_is_created(
    bucket: str, dist_dir: Path
) -> None:
    emr = boto3.client("emr")
    before = len(emr.list_clusters()["Clusters"])
    with pytest.raises(JobError, match=r"unknown stage\(s\) 'embedd': choose from preprocess, embed,"):
        emr_cli.main(run_args(bucket, dist_dir, "--stages", "preprocess,embedd"))
    args = run_args(bucket, dist_dir)
    args[args.index(RUN_DATE)] = "2024-3-31"
    with pytest.raises(JobError, match="run date must be YYYY-MM-DD, got '2024-3-31'"):
        emr_cli.main(args)
    with pytest.raises(JobError, match=r"no build artifacts at .*nowhere/manifest.json: run `make dist`"):
        emr_cli.main(run_args(bucket, dist_dir.parent / "nowhere"))
    with pytest.raises(JobError, match=(
        r"^Glue database name 'Shop-Catalog' \(STYLEGRAPH_GLUE_DATABASE\): use 1 to 255 lowercase letters"
    )):
        emr_cli.main(run_args(bucket, dist_dir, "--glue-database", "Shop-Catalog"))
    assert len(emr.list_clusters()["Clusters"]) == before
    assert all_keys(bucket) == []
