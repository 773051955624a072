"""One SparkSession for the whole test session (local[2], few shuffle partitions, UI off)."""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# Spark's Python workers must be this interpreter (the venv's), whatever is first on PATH.
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    from jobs.common.spark import get_spark

    session = get_spark("stylegraph-tests", master="local[2]", conf={"spark.sql.shuffle.partitions": "4"})
    yield session
    session.stop()


@pytest.fixture(scope="session")
def aws_endpoint() -> Iterator[str]:
    """A local AWS endpoint (moto in server mode on 127.0.0.1), started once and stopped at the end.

    Tests that talk to AWS use it through ``aws_env``; production code paths stay the same (boto3 and
    pyarrow honour the endpoint variables).
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(aws_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point boto3 and pyarrow at the local endpoint with dummy credentials, for one test."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return aws_endpoint


@pytest.fixture(autouse=True)
def _fresh_read_pins() -> Iterator[None]:
    """Each test reads published folders as a new process would (storage pins versions per process)."""
    yield
    storage = sys.modules.get("jobs.common.storage")
    if storage is not None:
        storage.forget_read_pins()
