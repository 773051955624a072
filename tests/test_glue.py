"""Glue: the CLI end to end against a local AWS endpoint (moto server): scripts and zip uploaded, one
job per CPU stage created (then updated) with the right definition, a run started with the pipeline's
arguments and waited for, a failed run reported with Glue's message, the Glue Data Catalog database as an
optional job argument; and a Glue entry script running its job for real (awsglue's getResolvedOptions,
plain pyspark outside Glue), exporting that database into the driver's environment first."""
from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path

import boto3
import pytest

from emr.dist import build
from glue import cli as glue_cli
from glue import entry
from jobs.common.cli import EXIT_JOB_ERROR, JobError, run
from jobs.common.glue_catalog import DATABASE_ENV

ROOT = Path(__file__).resolve().parent.parent
RUN_DATE = "2024-03-31"
ROLE = "arn:aws:iam::123456789012:role/GlueJobs"
EXPECTED_JOBS = {
    # job name: (entry script, worker type, workers)
    "stylegraph-preprocess": ("preprocess_interactions.py", "G.1X", 10),
    "stylegraph-export": ("export_gremlin.py", "G.1X", 5),
    "stylegraph-validate": ("validate_gremlin_csv.py", "G.1X", 2),
}


@pytest.fixture(scope="module")
def dist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("glue") / "dist"
    build(out, wheel=False)
    return out


@pytest.fixture
def bucket(aws_env: str) -> str:
    name = f"stylegraph-glue-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def moto_update_job(self):
    """UpdateJob for the local endpoint (moto 5.2.5 does not implement it): what Glue does with a
    JobUpdate, replace the job's definition. Test-only; the CLI's update path is the production one."""
    from moto.core.responses import ActionResult

    job = self.glue_backend.get_job(self._get_param("JobName"))
    fields = {
        "Role": "role", "Description": "description", "Command": "command",
        "DefaultArguments": "default_arguments", "GlueVersion": "glue_version", "WorkerType": "worker_type",
        "NumberOfWorkers": "number_of_workers", "Timeout": "timeout", "MaxRetries": "max_retries",
        "ExecutionProperty": "execution_property",
    }
    for key, value in self._get_param("JobUpdate").items():
        setattr(job, fields[key], value)
    return ActionResult({"JobName": job.name})


@pytest.fixture
def clean_glue(aws_env: str, monkeypatch: pytest.MonkeyPatch):
    from moto.glue.responses import GlueResponse

    monkeypatch.setattr(GlueResponse, "update_job", moto_update_job, raising=False)
    glue = boto3.client("glue")
    for name in EXPECTED_JOBS:
        glue.delete_job(JobName=name)
    return glue


def deploy_args(bucket: str, dist_dir: Path, role: str = ROLE) -> list[str]:
    return ["deploy", "--bucket", bucket, "--prefix", "sg", "--role-arn", role, "--dist", str(dist_dir)]


def run_args(stage: str, bucket: str = "shop-data") -> list[str]:
    return [
        "run", "--stage", stage, "--input-root", f"s3://{bucket}/raw", "--work-root", f"s3://{bucket}/work",
        "--run-date", RUN_DATE, "--poll-seconds", "0.01",
    ]


def test_deploy_uploads_and_creates_then_updates_one_job_per_cpu_stage(
    bucket: str, dist_dir: Path, clean_glue
) -> None:
    result = glue_cli.main(deploy_args(bucket, dist_dir))
    glue, s3 = clean_glue, boto3.client("s3")
    assert result["jobs"] == {
        "preprocess": "stylegraph-preprocess", "export": "stylegraph-export",
        "validate": "stylegraph-validate",
    }
    zip_uri = result["artifacts"]["stylegraph.zip"]
    prefix = zip_uri.removeprefix(f"s3://{bucket}/").rsplit("/", 1)[0]
    assert prefix.startswith("sg/artifacts/")
    for name, (script, worker_type, workers) in EXPECTED_JOBS.items():
        job = glue.get_job(JobName=name)["Job"]
        script_uri = f"s3://{bucket}/{prefix}/glue/{script}"
        assert (job["GlueVersion"], job["WorkerType"], job["NumberOfWorkers"], job["Role"]) == (
            "5.0", worker_type, workers, ROLE
        )
        assert job["Command"] == {"Name": "glueetl", "ScriptLocation": script_uri, "PythonVersion": "3"}
        assert job["DefaultArguments"] == {
            "--extra-py-files": zip_uri,
            "--additional-python-modules":
                "pyarrow==12.0.1,numpy==1.26.4,numba==0.61.2,zlib-ng==1.1.0,pandas==2.3.3,great-expectations==1.24.*,Pillow>=10",
            "--TempDir": f"s3://{bucket}/sg/glue-temp/",
            "--enable-metrics": "true",
            "--enable-continuous-cloudwatch-log": "true",
            "--job-bookmark-option": "job-bookmark-disable",
        }
        uploaded = s3.get_object(Bucket=bucket, Key=f"{prefix}/glue/{script}")["Body"].read()
        assert uploaded == (ROOT / "glue" / "scripts" / script).read_bytes()

    other_role = "arn:aws:iam::123456789012:role/GlueJobsV2"
    glue_cli.main(deploy_args(bucket, dist_dir, role=other_role))
    assert {name: glue.get_job(JobName=name)["Job"]["Role"] for name in EXPECTED_JOBS} == dict.fromkeys(
        EXPECTED_JOBS, other_role
    )


def test_run_starts_the_job_with_the_pipeline_arguments_and_waits(
    bucket: str, dist_dir: Path, clean_glue
) -> None:
    glue_cli.main(deploy_args(bucket, dist_dir))
    result = glue_cli.main(run_args("export"))
    assert (result["job"], result["state"]) == ("stylegraph-export", "SUCCEEDED")
    job_run = clean_glue.get_job_run(JobName="stylegraph-export", RunId=result["run_id"])["JobRun"]
    job = clean_glue.get_job(JobName="stylegraph-export")["Job"]
    assert job["MaxRetries"] == 0  # the caller (CLI, Airflow) retries, watching the run it started
    defaults = job["DefaultArguments"]
    run_only = {key: value for key, value in job_run["Arguments"].items() if key not in defaults}
    assert run_only == {
        "--catalog": "s3://shop-data/raw/catalog/catalog.csv",
        "--edges": f"s3://shop-data/work/style/similarity/dt={RUN_DATE}",
        "--embeddings": f"s3://shop-data/work/style/embeddings/dt={RUN_DATE}",
        "--output": f"s3://shop-data/work/style/gremlin/dt={RUN_DATE}",
        "--compression": "gzip",
        "--metric": "cosine",
        "--run-date": RUN_DATE,
        "--report-dir": "s3://shop-data/work/_reports",
    }


def test_the_glue_database_is_a_default_argument_of_the_jobs_or_of_one_run(
    bucket: str, dist_dir: Path, clean_glue
) -> None:
    glue = clean_glue
    glue_cli.main([*deploy_args(bucket, dist_dir), "--glue-database", "shop_catalog"])
    for name in EXPECTED_JOBS:
        defaults = glue.get_job(JobName=name)["Job"]["DefaultArguments"]
        assert defaults["--stylegraph-glue-database"] == "shop_catalog"
    # A run gets the job's default; its own argument overrides it (Arguments over DefaultArguments).
    result = glue_cli.main(run_args("validate"))
    job_run = glue.get_job_run(JobName="stylegraph-validate", RunId=result["run_id"])["JobRun"]
    assert job_run["Arguments"]["--stylegraph-glue-database"] == "shop_catalog"
    result = glue_cli.main([*run_args("export"), "--glue-database", "other_catalog"])
    job_run = glue.get_job_run(JobName="stylegraph-export", RunId=result["run_id"])["JobRun"]
    assert job_run["Arguments"]["--stylegraph-glue-database"] == "other_catalog"
    # Deploying without it takes it off the jobs (update_job replaces the definition).
    glue_cli.main(deploy_args(bucket, dist_dir))
    assert not any(
        "--stylegraph-glue-database" in glue.get_job(JobName=name)["Job"]["DefaultArguments"]
        for name in EXPECTED_JOBS
    )
    with pytest.raises(JobError, match=r"^Glue database name 'shop catalog' \(STYLEGRAPH_GLUE_DATABASE\)"):
        glue_cli.main([*run_args("export"), "--glue-database", "shop catalog"])


def test_a_failed_run_exits_2_with_glues_error_message(
    bucket: str, dist_dir: Path, clean_glue, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """moto's job runs always succeed; this test-only hook makes the local endpoint report the export
    job's run FAILED with an error message, as Glue does. The CLI's code path is the production one."""
    from moto.glue.models import FakeJobRun

    error = "AnalysisException: Path does not exist: s3://shop-data/work/style/similarity/dt=2024-03-31"
    as_dict = FakeJobRun.as_dict

    def failing_as_dict(self: FakeJobRun) -> dict:
        described = as_dict(self)
        if self.job_name == "stylegraph-export":
            described.update(JobRunState="FAILED", ErrorMessage=error)
        return described

    monkeypatch.setattr(FakeJobRun, "as_dict", failing_as_dict)
    glue_cli.main(deploy_args(bucket, dist_dir))
    with pytest.raises(JobError) as failure:
        glue_cli.main(run_args("export"))
    assert str(failure.value).startswith("Glue job stylegraph-export run jr_")
    assert str(failure.value).endswith(f" ended FAILED: {error}")
    assert run(glue_cli.main, run_args("export")) == EXIT_JOB_ERROR
    assert f"ended FAILED: {error}" in caplog.text


def test_refusals_name_the_problem(bucket: str, dist_dir: Path, aws_env: str, monkeypatch, tmp_path) -> None:
    with pytest.raises(JobError, match=r"stage 'embed' does not run on Glue: .* \(embed: it needs GPUs"):
        glue_cli.main(run_args("embed"))
    with pytest.raises(JobError, match=r"stage 'similarity' does not run on Glue: .*torch.*run it on EMR\)$"):
        glue_cli.main(run_args("similarity"))
    with pytest.raises(JobError, match=r"unknown stage\(s\) 'simlarity'"):
        glue_cli.main(run_args("simlarity"))
    args = run_args("export")
    args[args.index(RUN_DATE)] = "31/03/2024"
    with pytest.raises(JobError, match="run date must be YYYY-MM-DD, got '31/03/2024'"):
        glue_cli.main(args)
    with pytest.raises(JobError, match=r"^S3 bucket 'stylegraph-glue-missing' does not exist"):
        glue_cli.main(deploy_args("stylegraph-glue-missing", dist_dir))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    with pytest.raises(JobError, match=r"^no AWS region"):
        glue_cli.main(deploy_args(bucket, dist_dir))


def test_entry_turns_glue_arguments_into_the_jobs_argv() -> None:
    argv = [
        "script.py", "--JOB_NAME", "stylegraph-validate", "--TempDir", "s3://t/", "--airflow_task_uuid", "u1",
        "--vertices", "s3://b/x/vertices", "--edges", "s3://b/x/edges",
        "--run-date", RUN_DATE, "--report-dir", "s3://b/r",
    ]
    stage = entry.pipeline.STAGES_BY_NAME["validate"]
    resolved = entry._resolve(argv, entry.option_names(stage))
    assert entry.job_argv(stage, resolved) == [
        "--vertices", "s3://b/x/vertices", "--edges", "s3://b/x/edges",
        "--run-date", RUN_DATE, "--report-dir", "s3://b/r",
    ]
    with pytest.raises(JobError, match="Glue job arguments: .*--edges"):
        entry._resolve([a for a in argv if a not in ("--edges", "s3://b/x/edges")], entry.option_names(stage))


@pytest.fixture(params=["awsglue", "argparse"])
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Resolve with awsglue's getResolvedOptions (as in Glue), or without the awsglue package (its import
    fails, as on a laptop without it)."""
    if request.param == "argparse":
        monkeypatch.setitem(sys.modules, "awsglue.utils", None)
    return request.param


def test_entry_resolves_the_glue_database_only_when_given(resolver: str) -> None:
    argv = [
        "script.py", "--JOB_NAME", "stylegraph-validate", "--TempDir", "s3://t/",
        "--vertices", "s3://b/x/vertices", "--edges", "s3://b/x/edges",
        "--run-date", RUN_DATE, "--report-dir", "s3://b/r",
    ]
    stage = entry.pipeline.STAGES_BY_NAME["validate"]
    without = entry._resolve(argv, entry.option_names(stage))
    assert without.get("stylegraph_glue_database") is None
    flag = "--stylegraph-glue-database"
    for given in ([flag, "shop_catalog"], [f"{flag}=shop_catalog"]):
        resolved = entry._resolve([*argv, *given], entry.option_names(stage))
        assert resolved["stylegraph_glue_database"] == "shop_catalog"
        assert entry.job_argv(stage, resolved) == entry.job_argv(stage, without)  # not a job option


def write_export(root: Path, edges: list[str]) -> None:
    """A tiny Gremlin CSV export: three vertices (one name with a comma and quotes) and the given edges."""
    (root / "vertices").mkdir(parents=True)
    (root / "edges").mkdir(parents=True)
    (root / "vertices" / "part-0.csv").write_text(
        "~id,~label,name:String,brand:String\n"
        "a,product,Runner,Nike\n"
        'b,product,"Boot, ""Original""",Muck\n'
        "c,product,Clog,\n",
        encoding="utf-8",
    )
    (root / "edges" / "part-0.csv").write_text(
        "~id,~from,~to,~label,score:Double\n" + "".join(line + "\n" for line in edges), encoding="utf-8"
    )


def test_a_glue_entry_script_runs_its_job_outside_glue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good, bad, reports = tmp_path / "good", tmp_path / "bad", tmp_path / "reports"
    write_export(good, ["a-b,a,b,similar,0.93", "b-a,b,a,similar,0.93"])
    write_export(bad, ["a-b,a,b,similar,0.93", "a-z,a,z,similar,0.5"])

    def glue_argv(export: Path) -> list[str]:
        return [
            "glue/scripts/validate_gremlin_csv.py", "--JOB_NAME", "stylegraph-validate",
            "--job-bookmark-option", "job-bookmark-disable", "--TempDir", "s3://t/",
            "--vertices", str(export / "vertices"), "--edges", str(export / "edges"),
            "--run-date", RUN_DATE, "--report-dir", str(reports),
        ]

    report = entry.run_glue_stage("validate", glue_argv(good))
    written = json.loads((reports / "validate" / f"dt={RUN_DATE}.json").read_text())
    assert (written["stage"], written["run_date"], written["ok"]) == ("validate", RUN_DATE, True)
    assert written["funnel"]["rows_in"] == 5 and written["funnel"]["rows_out"] == 5
    assert report["funnel"] == written["funnel"]

    # The script itself, as Glue would call it: a problem is exit code 2 (the run fails), no commit.
    monkeypatch.setattr("sys.argv", glue_argv(bad))
    assert entry.main_for("validate") == EXIT_JOB_ERROR


def test_a_glue_entry_script_exports_the_glue_database_before_its_job_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DATABASE_ENV, "")  # restored after the test, whatever the entry sets
    export, reports = tmp_path / "export", tmp_path / "reports"
    write_export(export, ["a-b,a,b,similar,0.93", "b-a,b,a,similar,0.93"])
    argv = [
        "glue/scripts/validate_gremlin_csv.py", "--JOB_NAME", "stylegraph-validate",
        "--vertices", str(export / "vertices"), "--edges", str(export / "edges"),
        "--run-date", RUN_DATE, "--report-dir", str(reports), "--stylegraph-glue-database", "shop_catalog",
    ]
    report = entry.run_glue_stage("validate", argv)
    assert report["ok"] is True
    # The process environment the job ran in, where jobs.common.glue_catalog reads it at each publish.
    assert os.environ[DATABASE_ENV] == "shop_catalog"

    monkeypatch.setattr("sys.argv", [*argv[:-1], "Shop Catalog"])
    assert entry.main_for("validate") == EXIT_JOB_ERROR


def test_the_modules_glue_installs_are_the_projects_pins() -> None:
    from glue import jobs as glue_jobs

    pins = {line.strip() for line in (ROOT / "requirements" / "base.txt").read_text().splitlines()}
    assert set(glue_jobs.ADDITIONAL_PYTHON_MODULES) <= pins
    modules = glue_jobs.ADDITIONAL_PYTHON_MODULES
    assert not any(module.startswith(("torch", "petastorm")) for module in modules)
