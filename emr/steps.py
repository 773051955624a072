"""EMR steps built from the pipeline definition: ``spark-submit`` through ``command-runner.jar``.

A stage's step runs ``dist/entry/<job>.py`` (uploaded to S3) with the project's zip on ``--py-files``
and exactly the argv :func:`jobs.pipeline.plan` gives the local runner; GPU stages (the embed job) add
:data:`emr.clusters.GPU_SPARK_CONF`: the Spark GPU resource settings and the worker daemon that imports
torch once per executor.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from emr.clusters import GPU_SPARK_CONF
from jobs import pipeline

COMMAND_RUNNER = "command-runner.jar"
# The default keeps the cluster for the next steps (and the DAG's teardown) but skips the rest of
# this run's steps: they depend on the failed one.
ACTION_ON_FAILURE = "CANCEL_AND_WAIT"
SPARK_STAGE_ENGINES = (pipeline.CPU, pipeline.GPU)


@dataclass(frozen=True)
class Artifacts:
    """Where ``make dist``'s output lives in S3 (see :func:`from_uploaded`)."""

    zip_uri: str
    entry_prefix: str
    wheel_uri: str = ""
    bootstrap_uri: str = ""
    wheelhouse_uri: str = ""

    def entry_uri(self, stage: pipeline.Stage) -> str:
        return f"{self.entry_prefix.rstrip('/')}/{stage.job_name}.py"


def from_uploaded(uploaded: Mapping[str, str], wheelhouse_uri: str = "") -> Artifacts:
    """Artifacts from :func:`emr.aws.upload_tree`'s ``relative path -> S3 URI`` map of ``dist/``."""
    wheels = [uri for rel, uri in uploaded.items() if rel.startswith("stylegraph-") and rel.endswith(".whl")]
    zip_uri = uploaded["stylegraph.zip"]
    return Artifacts(
        zip_uri=zip_uri,
        entry_prefix=zip_uri.rsplit("/", 1)[0] + "/entry",
        wheel_uri=wheels[0] if wheels else "",
        bootstrap_uri=uploaded.get("emr/bootstrap.sh", ""),
        wheelhouse_uri=wheelhouse_uri,
    )


def spark_submit_args(
    call: pipeline.StageCall, artifacts: Artifacts, *, deploy_mode: str = "cluster"
) -> list[str]:
    """The command-runner arguments of one stage: ``spark-submit ... entry/<job>.py <argv>``."""
    args = ["spark-submit", "--deploy-mode", deploy_mode, "--py-files", artifacts.zip_uri]
    if call.stage.engine == pipeline.GPU:
        for key, value in GPU_SPARK_CONF.items():
            args += ["--conf", f"{key}={value}"]
    return [*args, artifacts.entry_uri(call.stage), *call.argv]


def step(
    call: pipeline.StageCall, artifacts: Artifacts, *, action_on_failure: str = ACTION_ON_FAILURE
) -> dict[str, Any]:
    """One ``add_job_flow_steps`` step for a stage."""
    return {
        "Name": step_name(call),
        "ActionOnFailure": action_on_failure,
        "HadoopJarStep": {"Jar": COMMAND_RUNNER, "Args": spark_submit_args(call, artifacts)},
    }


def step_name(call: pipeline.StageCall) -> str:
    run_date = dict(call.option_pairs()).get("--run-date", "")
    return f"stylegraph {call.name} {run_date}".strip()


def spark_calls(
    params: pipeline.PipelineParams, stages: str | Iterable[str] | None = None
) -> list[pipeline.StageCall]:
    """The production plan's Spark stages (CPU and GPU; driver-side stages such as the Neptune load are
    not cluster steps)."""
    calls = pipeline.plan(params, target=pipeline.PRODUCTION, stages=stages)
    return [call for call in calls if call.stage.engine in SPARK_STAGE_ENGINES]


def pipeline_steps(
    params: pipeline.PipelineParams, artifacts: Artifacts, stages: str | Iterable[str] | None = None
) -> list[dict[str, Any]]:
    """Every Spark stage of the run as EMR steps, in pipeline order."""
    return [step(call, artifacts) for call in spark_calls(params, stages)]


def needs_gpu(calls: Iterable[pipeline.StageCall]) -> bool:
    return any(call.stage.engine == pipeline.GPU for call in calls)
