"""EMR cluster definitions as data: a CPU cluster, and the same with a GPU task group for embeddings.

:data:`CLUSTERS` holds the two definitions; :func:`job_flow` fills in what differs per account (log
bucket, subnet, roles, the bootstrap action's S3 URIs) and returns ``run_job_flow`` keyword arguments,
the same dict the DAG gives ``EmrCreateJobFlowOperator(job_flow_overrides=...)``.

GPU scheduling follows the EMR 7.x recipe, split by where each setting belongs. Cluster-wide (the
ResourceManager on the master must know the resource): ``yarn.resource-types = yarn.io/gpu`` and the
DominantResourceCalculator (``capacity-scheduler``) so YARN counts GPUs at all. On the GPU instance group
only (a NodeManager with the GPU plugin and no GPU does not start): YARN's GPU resource plugin
(``yarn-site``), the container executor's GPU module and cgroups (``container-executor``). Spark asks
for one GPU per executor shared by its task slots (``spark.task.resource.gpu.amount = 1 / executor
cores``) in the GPU steps only, GPUs discovered by EMR's script.

Nodes boot in a private subnet without internet egress: the bootstrap action (``emr/bootstrap.sh``)
installs Python packages from the wheelhouse ``make dist`` uploads next to the code (CPU nodes get the
CPU build of torch, GPU nodes the CUDA build), sized into :data:`ROOT_VOLUME_GB`. An idle cluster ends
itself after ``idle_timeout_minutes`` (``AutoTerminationPolicy``) even when nobody terminates it.

With ``glue_database``, every Spark driver on the cluster gets ``STYLEGRAPH_GLUE_DATABASE`` (the Glue Data
Catalog registration of :mod:`jobs.common.glue_catalog`) from the cluster's configuration, in both deploy
modes (:func:`glue_catalog_configurations`).
"""
from __future__ import annotations

import copy
from typing import Any

from jobs.common import worker_daemon
from jobs.common.glue_catalog import DATABASE_ENV, checked_database

RELEASE_LABEL = "emr-7.5.0"
APPLICATIONS = [{"Name": "Spark"}, {"Name": "Hadoop"}]
# EMR 7 runs Amazon Linux 2023, whose default python3 is 3.9: the jobs run on 3.11 (see bootstrap.sh).
PYTHON = "/usr/bin/python3.11"
GPU_DISCOVERY_SCRIPT = "/usr/lib/spark/scripts/gpu/getGpusResources.sh"
GPU_EXECUTOR_CORES = 4
CGROUP_ROOT = "/spark-rapids-cgroup"

CPU = "cpu"
GPU = "gpu"
# Root EBS volume of every node (GiB). The GPU nodes' packages take about 7 GB (torch's CUDA build and
# its NVIDIA libraries) on top of the AMI's 10 or so; the wheelhouse itself is downloaded to /mnt.
ROOT_VOLUME_GB = 40
# Minutes a cluster may sit without a step or YARN application before EMR terminates it (60 s to 7 days).
IDLE_TIMEOUT_MINUTES = 30.0

# Spark settings a GPU stage's spark-submit passes.
GPU_SPARK_CONF: dict[str, str] = {
    "spark.executor.cores": str(GPU_EXECUTOR_CORES),
    "spark.executor.resource.gpu.amount": "1",
    "spark.task.resource.gpu.amount": str(1 / GPU_EXECUTOR_CORES),
    "spark.executor.resource.gpu.discoveryScript": GPU_DISCOVERY_SCRIPT,
    # The embed job's Python workers fork from a daemon that has imported torch: once per executor, not
    # once per core. The bootstrap installs it on every node with the wheel; this step alone names it, so
    # other applications on the cluster keep PySpark's daemon.
    worker_daemon.DAEMON_CONF: worker_daemon.__name__,
}

PYTHON_CONFIGURATIONS: list[dict[str, Any]] = [
    {
        "Classification": "spark-env",
        "Configurations": [
            {
                "Classification": "export",
                "Properties": {"PYSPARK_PYTHON": PYTHON, "PYSPARK_DRIVER_PYTHON": PYTHON},
            }
        ],
        "Properties": {},
    },
    {
        "Classification": "spark-defaults",
        "Properties": {
            "spark.sql.session.timeZone": "UTC",
            "spark.sql.sources.partitionOverwriteMode": "dynamic",
            "spark.yarn.appMasterEnv.PYSPARK_PYTHON": PYTHON,
            "spark.executorEnv.PYSPARK_PYTHON": PYTHON,
        },
    },
]

# Cluster-wide: what the ResourceManager and the scheduler need to hand out GPUs.
GPU_CONFIGURATIONS: list[dict[str, Any]] = [
    {"Classification": "yarn-site", "Properties": {"yarn.resource-types": "yarn.io/gpu"}},
    {
        "Classification": "capacity-scheduler",
        "Properties": {
            "yarn.scheduler.capacity.resource-calculator":
                "org.apache.hadoop.yarn.util.resource.DominantResourceCalculator",
        },
    },
    # Only where GPUs are found: the amounts are asked per step (emr/steps.py), so CPU stages on the
    # same cluster do not wait for a GPU.
    {
        "Classification": "spark-defaults",
        "Properties": {"spark.executor.resource.gpu.discoveryScript": GPU_DISCOVERY_SCRIPT},
    },
]

# The GPU instance group only: its NodeManagers run the GPU plugin in cgroup-isolated containers.
GPU_NODE_CONFIGURATIONS: list[dict[str, Any]] = [
    {
        "Classification": "yarn-site",
        "Properties": {
            "yarn.nodemanager.resource-plugins": "yarn.io/gpu",
            "yarn.resource-types": "yarn.io/gpu",
            "yarn.nodemanager.resource-plugins.gpu.allowed-gpu-devices": "auto",
            "yarn.nodemanager.resource-plugins.gpu.path-to-discovery-executables": "/usr/bin",
            "yarn.nodemanager.linux-container-executor.cgroups.mount": "true",
            "yarn.nodemanager.linux-container-executor.cgroups.mount-path": CGROUP_ROOT,
            "yarn.nodemanager.linux-container-executor.cgroups.hierarchy": "yarn",
            "yarn.nodemanager.container-executor.class":
                "org.apache.hadoop.yarn.server.nodemanager.LinuxContainerExecutor",
        },
    },
    {
        "Classification": "container-executor",
        "Properties": {},
        "Configurations": [
            {"Classification": "gpu", "Properties": {"module.enabled": "true"}},
            {"Classification": "cgroups", "Properties": {"root": CGROUP_ROOT, "yarn-hierarchy": "yarn"}},
        ],
    },
]

CLUSTERS: dict[str, dict[str, Any]] = {
    CPU: {
        "instance_groups": [
            {"Name": "master", "InstanceRole": "MASTER", "InstanceType": "m5.xlarge", "InstanceCount": 1},
            {"Name": "core", "InstanceRole": "CORE", "InstanceType": "m5.2xlarge", "InstanceCount": 2},
        ],
        "configurations": PYTHON_CONFIGURATIONS,
    },
    GPU: {
        "instance_groups": [
            {"Name": "master", "InstanceRole": "MASTER", "InstanceType": "m5.xlarge", "InstanceCount": 1},
            {"Name": "core", "InstanceRole": "CORE", "InstanceType": "m5.2xlarge", "InstanceCount": 2},
            # g5.xlarge: 1 x A10G (24 GB), 4 vCPUs -> one executor of GPU_EXECUTOR_CORES task slots.
            {
                "Name": "gpu-task", "InstanceRole": "TASK", "InstanceType": "g5.xlarge", "InstanceCount": 2,
                "Configurations": GPU_NODE_CONFIGURATIONS,
            },
        ],
        "configurations": PYTHON_CONFIGURATIONS + GPU_CONFIGURATIONS,
    },
}


def glue_catalog_configurations(database: str) -> list[dict[str, Any]]:
    """The configuration that puts ``STYLEGRAPH_GLUE_DATABASE=<database>`` into every Spark driver's
    environment on the cluster, whichever the step's deploy mode.

    Client mode: ``spark-submit`` sources ``spark-env.sh`` (the ``spark-env`` classification's ``export``)
    on the master, and the driver is its child process. Cluster mode: the driver runs in the YARN
    application master, whose environment ``spark-env.sh`` does not reach; Spark sets it from
    ``spark.yarn.appMasterEnv.*`` (``spark-defaults``). The same two places as ``PYSPARK_PYTHON``.
    """
    name = checked_database(database)
    return [
        {
            "Classification": "spark-env",
            "Configurations": [{"Classification": "export", "Properties": {DATABASE_ENV: name}}],
            "Properties": {},
        },
        {"Classification": "spark-defaults", "Properties": {f"spark.yarn.appMasterEnv.{DATABASE_ENV}": name}},
    ]


def configured_glue_database(configurations: list[dict[str, Any]]) -> str | None:
    """The database a cluster's configuration (``describe_cluster``'s ``Configurations``) passes to its
    drivers in both deploy modes, as :func:`glue_catalog_configurations` writes it; None otherwise."""
    by_class = {item["Classification"]: item for item in configurations}
    exports = {
        item["Classification"]: item for item in by_class.get("spark-env", {}).get("Configurations", [])
    }
    client_mode = exports.get("export", {}).get("Properties", {}).get(DATABASE_ENV)
    cluster_mode = by_class.get("spark-defaults", {}).get("Properties", {}).get(
        f"spark.yarn.appMasterEnv.{DATABASE_ENV}"
    )
    return client_mode if client_mode and client_mode == cluster_mode else None


def _merge_configurations(configurations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per classification, nested ones too (EMR rejects duplicates): later properties win."""
    merged: dict[str, dict[str, Any]] = {}
    for item in copy.deepcopy(configurations):
        current = merged.get(item["Classification"])
        if current is None:
            merged[item["Classification"]] = item
            continue
        current.setdefault("Properties", {}).update(item.get("Properties", {}))
        nested = current.get("Configurations", []) + item.get("Configurations", [])
        if nested:
            current["Configurations"] = _merge_configurations(nested)
    return list(merged.values())


def job_flow(
    kind: str,
    *,
    name: str,
    log_uri: str,
    bootstrap_uri: str,
    wheel_uri: str,
    wheelhouse_uri: str,
    subnet_id: str | None = None,
    ec2_key_name: str | None = None,
    service_role: str = "EMR_DefaultRole",
    instance_profile: str = "EMR_EC2_DefaultRole",
    keep_alive: bool = True,
    idle_timeout_minutes: float = IDLE_TIMEOUT_MINUTES,
    tags: dict[str, str] | None = None,
    glue_database: str | None = None,
) -> dict[str, Any]:
    """``run_job_flow`` keyword arguments for the ``cpu`` or ``gpu`` cluster.

    The bootstrap action (``emr/bootstrap.sh``) gets the wheelhouse's and the wheel's URIs and installs
    the pinned stack and the project on every node from S3 only. ``glue_database`` (None: no catalog
    registration) goes into every driver's environment (:func:`glue_catalog_configurations`).
    """
    if kind not in CLUSTERS:
        raise ValueError(f"unknown cluster kind {kind!r}: choose from {sorted(CLUSTERS)}")
    spec = CLUSTERS[kind]
    configurations = spec["configurations"]
    if glue_database:
        configurations = configurations + glue_catalog_configurations(glue_database)
    groups = copy.deepcopy(spec["instance_groups"])
    for group in groups:
        if "Configurations" in group:
            group["Configurations"] = _merge_configurations(group["Configurations"])
    instances: dict[str, Any] = {
        "InstanceGroups": groups,
        "KeepJobFlowAliveWhenNoSteps": keep_alive,
        "TerminationProtected": False,
    }
    if subnet_id:
        instances["Ec2SubnetId"] = subnet_id
    if ec2_key_name:
        instances["Ec2KeyName"] = ec2_key_name
    return {
        "Name": name,
        "ReleaseLabel": RELEASE_LABEL,
        "LogUri": log_uri,
        "Applications": copy.deepcopy(APPLICATIONS),
        "Configurations": _merge_configurations(configurations),
        "Instances": instances,
        "EbsRootVolumeSize": ROOT_VOLUME_GB,
        "AutoTerminationPolicy": {"IdleTimeout": max(60, round(idle_timeout_minutes * 60))},
        "BootstrapActions": [
            {
                "Name": "install stylegraph",
                "ScriptBootstrapAction": {"Path": bootstrap_uri, "Args": [wheelhouse_uri, wheel_uri]},
            }
        ],
        "JobFlowRole": instance_profile,
        "ServiceRole": service_role,
        "VisibleToAllUsers": True,
        "Tags": [
            {"Key": key, "Value": value}
            for key, value in sorted({"project": "stylegraph", **(tags or {})}.items())
        ],
    }
