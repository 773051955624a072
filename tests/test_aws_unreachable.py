"""The EMR and Glue CLIs with an AWS endpoint nothing answers: exit 2 and one line naming it."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

from emr import cli as emr_cli
from emr.dist import build
from glue import cli as glue_cli
from jobs.common.cli import JobError


@pytest.fixture(scope="module")
def dist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("unreachable") / "dist"
    build(out)
    return out


@pytest.fixture
def dead_endpoint(monkeypatch: pytest.MonkeyPatch) -> str:
    """A local port with nothing listening (bound, then closed), and credentials that look real."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    for name, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return endpoint


def test_emr_and_glue_name_the_endpoint_they_cannot_reach(dead_endpoint: str, dist_dir: Path) -> None:
    calls = {
        "emr run": (emr_cli.main, [
            "run", "--bucket", "b", "--prefix", "sg", "--input-root", "s3://b/raw", "--work-root", "s3://b/w",
            "--run-date", "2024-03-31", "--weights", "s3://b/models/resnet152.pt", "--dist", str(dist_dir)]),
        "glue deploy": (glue_cli.main, [
            "deploy", "--bucket", "b", "--prefix", "sg", "--role-arn", "arn:aws:iam::123456789012:role/g",
            "--dist", str(dist_dir)]),
        "glue run": (glue_cli.main, [
            "run", "--stage", "export", "--input-root", "s3://b/raw", "--work-root", "s3://b/w",
            "--run-date", "2024-03-31"]),
    }
    for name, (main, argv) in calls.items():
        with pytest.raises(JobError, match=f"cannot reach the AWS endpoint {dead_endpoint}") as refused:
            main(argv)
        assert "\n" not in str(refused.value), name
