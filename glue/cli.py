"""Deploy the CPU stages as AWS Glue jobs, and start a stage's run and wait for it.

    python -m glue.cli deploy --bucket my-bucket --role-arn arn:aws:iam::123456789012:role/GlueJobs
    python -m glue.cli run --stage preprocess --input-root s3://my-bucket/raw \\
        --work-root s3://my-bucket/work --run-date 2024-03-31

``deploy`` uploads ``make dist``'s artifacts (the project zip and the entry scripts) and creates each
job, or updates it when it exists. ``run`` starts one run with the stage's arguments from
:mod:`jobs.pipeline` and polls it; a failed run exits 2 with the job's name, the run id, its state and
Glue's error message. ``--glue-database NAME`` on ``deploy`` makes every run of the jobs register its
published partitions in that Glue database (the job's default arguments); on ``run``, that run only.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

from botocore.exceptions import ClientError

from emr import aws
from glue import jobs as glue_jobs
from jobs import pipeline
from jobs.common import cli
from jobs.common.cli import JobError
from jobs.common.glue_catalog import checked_database

LOG = logging.getLogger("stylegraph.glue")

RUN_DONE = "SUCCEEDED"
RUN_FAILED = {"FAILED", "ERROR", "TIMEOUT", "STOPPED", "EXPIRED"}


def build_parser() -> argparse.ArgumentParser:
    parser = cli._Parser(prog="glue.cli", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    deploy = sub.add_parser("deploy", help="upload artifacts, create or update the jobs")
    deploy.add_argument("--bucket", required=True)
    deploy.add_argument("--prefix", default="stylegraph")
    deploy.add_argument("--role-arn", required=True, help="the IAM role Glue runs the jobs as")
    deploy.add_argument("--stages", default=None, help="comma-separated subset (default: every CPU stage)")
    deploy.add_argument("--dist", default="dist")
    deploy.add_argument("--region", default=None)
    deploy.add_argument(
        "--glue-database", type=checked_database, default=None,
        help="every run registers published partitions in this Glue database",
    )
    run_cmd = sub.add_parser("run", help="start one stage's job run and wait for it")
    run_cmd.add_argument("--stage", required=True)
    run_cmd.add_argument("--input-root", required=True)
    run_cmd.add_argument("--work-root", required=True)
    run_cmd.add_argument("--reports-root", default=None)
    run_cmd.add_argument("--run-date", required=True, type=cli.run_date)
    run_cmd.add_argument("--top-k", type=int, default=pipeline.DEFAULT_TOP_K)
    run_cmd.add_argument("--region", default=None)
    run_cmd.add_argument("--no-wait", action="store_true")
    run_cmd.add_argument(
        "--glue-database", type=checked_database, default=None,
        help="this run registers published partitions in this Glue database",
    )
    run_cmd.add_argument("--poll-seconds", type=float, default=30.0)
    run_cmd.add_argument("--timeout-minutes", type=float, default=float(glue_jobs.TIMEOUT_MINUTES + 10))
    return parser


def _stages(value: str | None) -> list[pipeline.Stage]:
    if not value:
        return list(glue_jobs.GLUE_STAGES)
    names = [name.strip() for name in value.split(",") if name.strip()]
    pipeline.parse_stages(names, pipeline.PRODUCTION)  # unknown names: the pipeline's own message
    return [glue_jobs.glue_stage(name) for name in names]


def command_deploy(args: argparse.Namespace) -> dict[str, Any]:
    stages = _stages(args.stages)
    try:
        with open(f"{args.dist}/manifest.json", encoding="utf-8") as handle:
            manifest = json.load(handle)
    except FileNotFoundError:
        raise JobError(f"no build artifacts at {args.dist}/manifest.json: run `make dist` first") from None
    session = aws.checked_session(args.region)
    s3 = session.client("s3")
    glue = session.client("glue")
    aws.check_bucket(s3, args.bucket)
    prefix = aws.artifacts_prefix(args.prefix, manifest)
    uploaded = aws.upload_tree(s3, args.dist, args.bucket, prefix, exclude=(aws.WHEELHOUSE_DIR,))
    deployed = {}
    for stage in stages:
        script = f"glue/{stage.job_name}.py"
        if script not in uploaded:
            raise JobError(f"dist has no Glue script {script}: rebuild with `make dist`")
        definition = glue_jobs.job_definition(
            stage,
            role_arn=args.role_arn,
            script_uri=uploaded[script],
            py_files_uri=uploaded["stylegraph.zip"],
            temp_dir_uri=f"s3://{args.bucket}/{args.prefix.strip('/')}/glue-temp/",
            glue_database=args.glue_database,
        )
        name = definition["Name"]
        try:
            if _job_exists(glue, name):
                job_update = {key: value for key, value in definition.items() if key not in {"Name", "Tags"}}
                glue.update_job(JobName=name, JobUpdate=job_update)
                LOG.info("Glue job %s updated", name)
            else:
                glue.create_job(**definition)
                LOG.info("Glue job %s created", name)
        except ClientError as err:
            raise JobError(f"Glue job {name}: {aws.error_text(err)}") from None
        deployed[stage.name] = name
    return {"jobs": deployed, "artifacts": uploaded}


def _job_exists(glue: Any, name: str) -> bool:
    try:
        glue.get_job(JobName=name)
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") == "EntityNotFoundException":
            return False
        raise
    return True


def wait_for_run(glue: Any, name: str, run_id: str, *, poll_seconds: float, timeout_seconds: float) -> dict:
    """Poll a job run until it ends; anything but SUCCEEDED raises JobError with Glue's message."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        job_run = glue.get_job_run(JobName=name, RunId=run_id)["JobRun"]
        state = job_run["JobRunState"]
        if state == RUN_DONE:
            LOG.info("Glue job %s run %s succeeded", name, run_id)
            return job_run
        if state in RUN_FAILED:
            message = job_run.get("ErrorMessage") or "no error message from Glue"
            raise JobError(f"Glue job {name} run {run_id} ended {state}: {message}")
        if time.monotonic() > deadline:
            raise JobError(f"Glue job {name} run {run_id} still {state} after the timeout")
        time.sleep(poll_seconds)


def command_run(args: argparse.Namespace) -> dict[str, Any]:
    pipeline.parse_stages([args.stage], pipeline.PRODUCTION)  # an unknown name: the pipeline's message
    stage = glue_jobs.glue_stage(args.stage)
    params = pipeline.PipelineParams(
        input_root=args.input_root,
        work_root=args.work_root,
        run_date=args.run_date.isoformat(),
        reports_root=args.reports_root,
        top_k=args.top_k,
    )
    call = pipeline.plan(params, target=pipeline.PRODUCTION, stages=[stage.name])[0]
    session = aws.checked_session(args.region)
    glue = session.client("glue")
    name = glue_jobs.job_name(stage)
    try:
        arguments = glue_jobs.run_arguments(call, args.glue_database)
        run_id = glue.start_job_run(JobName=name, Arguments=arguments)["JobRunId"]
    except ClientError as err:
        raise JobError(f"starting Glue job {name}: {aws.error_text(err)}") from None
    LOG.info("Glue job %s run %s started", name, run_id)
    if args.no_wait:
        return {"job": name, "run_id": run_id}
    job_run = wait_for_run(
        glue, name, run_id, poll_seconds=args.poll_seconds, timeout_seconds=args.timeout_minutes * 60
    )
    return {"job": name, "run_id": run_id, "state": job_run["JobRunState"]}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    with aws.unreachable_endpoint_is_a_job_error():
        if args.command == "deploy":
            return command_deploy(args)
        return command_run(args)


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
