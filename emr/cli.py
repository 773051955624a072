"""Run the pipeline on Amazon EMR: upload ``make dist``'s artifacts, get a cluster, add steps, wait.

    python -m emr.cli run --bucket my-bucket --input-root s3://my-bucket/raw \\
        --work-root s3://my-bucket/work --run-date 2024-03-31 --weights s3://my-bucket/models/resnet152.pt

A run that embeds needs real weights (``random:*`` is refused) and runs the embedding with
``--device cuda``: a GPU node whose torch sees no GPU fails the step instead of embedding on CPU.

Without ``--cluster-id`` it creates the cluster (GPU task group when the embedding stage is part of the
run) and terminates it at the end, whatever happened (``--keep-cluster`` to keep it). Each step is
polled until it ends; a failed step makes the command exit 2 with the step's name, id, state and
failure details. ``--glue-database NAME`` creates the cluster with ``STYLEGRAPH_GLUE_DATABASE=NAME`` in
every driver's environment (the Glue Data Catalog registration); a cluster given by ``--cluster-id``
must have been created with it. ``plan`` prints the steps and the cluster definition as JSON without
calling AWS.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

from botocore.exceptions import ClientError

from emr import aws, clusters, steps
from jobs import pipeline
from jobs.common import cli
from jobs.common.cli import JobError
from jobs.common.glue_catalog import DATABASE_ENV, checked_database

LOG = logging.getLogger("stylegraph.emr")

STEP_DONE = "COMPLETED"
STEP_FAILED = {"FAILED", "CANCELLED", "INTERRUPTED"}
CLUSTER_USABLE = {"STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING"}
CLUSTER_GONE = {"TERMINATING", "TERMINATED", "TERMINATED_WITH_ERRORS"}


def build_parser() -> argparse.ArgumentParser:
    parser = cli._Parser(prog="emr.cli", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "plan"):
        cmd = sub.add_parser(name)
        cmd.add_argument("--bucket", required=True, help="artifacts and logs bucket")
        cmd.add_argument("--prefix", default="stylegraph", help="key prefix inside the bucket")
        cmd.add_argument("--input-root", required=True, help="s3:// root: interactions/, catalog/, images/")
        cmd.add_argument("--work-root", required=True, help="s3:// root every output goes below")
        cmd.add_argument("--reports-root", default=None, help="default <work-root>/_reports")
        cmd.add_argument("--run-date", required=True, type=cli.run_date, help="YYYY-MM-DD")
        cmd.add_argument("--stages", default=None, help="comma-separated subset of the Spark stages")
        cmd.add_argument(
            "--weights", default=None,
            help="embedding weights: imagenet or a state_dict path or s3:// URI (required when embedding)",
        )
        cmd.add_argument("--top-k", type=int, default=pipeline.DEFAULT_TOP_K)
        cmd.add_argument("--dist", default="dist", help="make dist's output folder")
        cmd.add_argument("--cluster-id", default=None, help="use this running cluster")
        cmd.add_argument(
            "--glue-database", type=checked_database, default=None,
            help=f"register published partitions in this Glue database ({DATABASE_ENV} on the cluster)",
        )
        cmd.add_argument("--region", default=None)
        cmd.add_argument("--subnet-id", default=None)
        cmd.add_argument("--service-role", default="EMR_DefaultRole")
        cmd.add_argument("--instance-profile", default="EMR_EC2_DefaultRole")
        cmd.add_argument("--keep-cluster", action="store_true", help="keep a cluster created here")
        cmd.add_argument(
            "--idle-minutes", type=float, default=clusters.IDLE_TIMEOUT_MINUTES,
            help="a created cluster terminates itself after this long without work",
        )
        cmd.add_argument("--poll-seconds", type=float, default=30.0)
        cmd.add_argument("--timeout-minutes", type=float, default=360.0)
    return parser


def params_from_args(args: argparse.Namespace) -> pipeline.PipelineParams:
    return pipeline.PipelineParams(
        input_root=args.input_root,
        work_root=args.work_root,
        run_date=args.run_date.isoformat(),
        reports_root=args.reports_root,
        weights=args.weights,
        top_k=args.top_k,
    )


def _read_manifest(dist: str) -> dict[str, Any]:
    try:
        with open(f"{dist}/manifest.json", encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise JobError(f"no build artifacts at {dist}/manifest.json: run `make dist` first") from None


def _cluster_definition(args: argparse.Namespace, kind: str, artifacts: steps.Artifacts) -> dict[str, Any]:
    return clusters.job_flow(
        kind,
        name=f"stylegraph {args.run_date.isoformat()} ({kind})",
        log_uri=f"s3://{args.bucket}/{args.prefix.strip('/')}/emr-logs/",
        bootstrap_uri=artifacts.bootstrap_uri,
        wheel_uri=artifacts.wheel_uri,
        wheelhouse_uri=artifacts.wheelhouse_uri,
        subnet_id=args.subnet_id,
        idle_timeout_minutes=args.idle_minutes,
        service_role=args.service_role,
        instance_profile=args.instance_profile,
        keep_alive=True,
        glue_database=args.glue_database,
    )


def _check_cluster(emr: Any, cluster_id: str, glue_database: str | None) -> None:
    """The cluster can take steps and, with ``glue_database``, passes that database to its drivers (a
    running cluster's configuration cannot be changed by a step)."""
    try:
        cluster = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
    except ClientError as err:
        raise JobError(f"EMR cluster {cluster_id}: {aws.error_text(err)}") from None
    state = cluster["Status"]["State"]
    if state not in CLUSTER_USABLE:
        raise JobError(f"EMR cluster {cluster_id} is {state}: it cannot take steps")
    configured = clusters.configured_glue_database(cluster.get("Configurations", []))
    if glue_database and configured != glue_database:
        raise JobError(
            f"EMR cluster {cluster_id} does not pass {DATABASE_ENV}={glue_database} to its drivers "
            f"(it has {configured or 'none'}): run without --cluster-id to create a cluster that does"
        )
    if configured:
        LOG.info("EMR cluster %s registers partitions in the Glue database %s", cluster_id, configured)


def _failure_text(step: dict[str, Any]) -> str:
    status = step.get("Status", {})
    details = status.get("FailureDetails") or {}
    reason = (status.get("StateChangeReason") or {}).get("Message")
    parts = [details.get("Reason"), details.get("Message"), reason]
    text = "; ".join(part for part in parts if part) or "no failure details"
    if details.get("LogFile"):
        text += f" (log: {details['LogFile']})"
    return text


def wait_for_steps(
    emr: Any, cluster_id: str, step_ids: Sequence[str], *, poll_seconds: float, timeout_seconds: float
) -> None:
    """Poll each step in order until it completes; a failed step or a dead cluster raises JobError."""
    deadline = time.monotonic() + timeout_seconds
    for step_id in step_ids:
        while True:
            step = emr.describe_step(ClusterId=cluster_id, StepId=step_id)["Step"]
            state = step["Status"]["State"]
            if state == STEP_DONE:
                LOG.info("EMR step %r (%s) completed", step["Name"], step_id)
                break
            if state in STEP_FAILED:
                raise JobError(
                    f"EMR step {step['Name']!r} ({step_id}) on cluster {cluster_id} ended {state}: "
                    f"{_failure_text(step)}"
                )
            cluster = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]["Status"]
            if cluster["State"] in CLUSTER_GONE:
                reason = (cluster.get("StateChangeReason") or {}).get("Message", "no reason given")
                raise JobError(
                    f"EMR cluster {cluster_id} is {cluster['State']} while step {step['Name']!r} "
                    f"was {state}: {reason}"
                )
            if time.monotonic() > deadline:
                raise JobError(f"EMR step {step['Name']!r} ({step_id}) still {state} after the timeout")
            time.sleep(poll_seconds)


def command_plan(args: argparse.Namespace) -> dict[str, Any]:
    """The steps and the cluster definition, with placeholder artifact URIs: no AWS call."""
    params = params_from_args(args)
    calls = steps.spark_calls(params, args.stages)
    base = f"s3://{args.bucket}/{args.prefix.strip('/')}/artifacts/<build>"
    artifacts = steps.Artifacts(
        zip_uri=f"{base}/stylegraph.zip",
        entry_prefix=f"{base}/entry",
        wheel_uri=f"{base}/stylegraph-<version>-py3-none-any.whl",
        bootstrap_uri=f"{base}/emr/bootstrap.sh",
        wheelhouse_uri=f"s3://{args.bucket}/{args.prefix.strip('/')}/wheelhouse/<requirements digest>",
    )
    kind = clusters.GPU if steps.needs_gpu(calls) else clusters.CPU
    plan = {
        "cluster": _cluster_definition(args, kind, artifacts),
        "steps": [steps.step(call, artifacts) for call in calls],
    }
    print(json.dumps(plan, indent=2))  # noqa: T201 - the command's output
    return plan


def command_run(args: argparse.Namespace) -> dict[str, Any]:
    """Upload, create or reuse a cluster, add the steps, wait; terminate a cluster created here."""
    params = params_from_args(args)
    calls = steps.spark_calls(params, args.stages)  # unknown stages are refused before any AWS call
    if not calls:
        raise JobError("no Spark stage to run on EMR")
    manifest = _read_manifest(args.dist)
    missing = [call.stage.module for call in calls if call.stage.job_name not in manifest.get("jobs", [])]
    if missing:
        raise JobError(f"{args.dist} has no entry script for {', '.join(missing)}: rebuild with `make dist`")
    session = aws.checked_session(args.region)
    s3 = session.client("s3")
    emr = session.client("emr")
    aws.check_bucket(s3, args.bucket)
    if args.cluster_id:
        _check_cluster(emr, args.cluster_id, args.glue_database)
    wheelhouse_uri = aws.upload_wheelhouse(s3, args.dist, args.bucket, args.prefix, manifest)
    uploaded = aws.upload_tree(
        s3, args.dist, args.bucket, aws.artifacts_prefix(args.prefix, manifest), exclude=(aws.WHEELHOUSE_DIR,)
    )
    artifacts = steps.from_uploaded(uploaded, wheelhouse_uri)

    created = False
    step_ids: list[str] = []
    cluster_id = args.cluster_id
    if cluster_id is None:
        kind = clusters.GPU if steps.needs_gpu(calls) else clusters.CPU
        try:
            cluster_id = emr.run_job_flow(**_cluster_definition(args, kind, artifacts))["JobFlowId"]
        except ClientError as err:
            raise JobError(f"creating the {kind} EMR cluster failed: {aws.error_text(err)}") from None
        created = True
        LOG.info("EMR cluster %s created (%s)", cluster_id, kind)
    try:
        response = emr.add_job_flow_steps(
            JobFlowId=cluster_id, Steps=[steps.step(call, artifacts) for call in calls]
        )
        step_ids = response["StepIds"]
        names = ", ".join(call.name for call in calls)
        LOG.info("added %d steps to %s: %s", len(step_ids), cluster_id, names)
        wait_for_steps(
            emr, cluster_id, step_ids,
            poll_seconds=args.poll_seconds, timeout_seconds=args.timeout_minutes * 60,
        )
    finally:
        if created and not args.keep_cluster:
            emr.terminate_job_flows(JobFlowIds=[cluster_id])
            LOG.info("EMR cluster %s terminating", cluster_id)
    return {"cluster_id": cluster_id, "step_ids": step_ids, "artifacts": uploaded, "created": created}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    with aws.unreachable_endpoint_is_a_job_error():
        if args.command == "plan":
            return command_plan(args)
        return command_run(args)


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
