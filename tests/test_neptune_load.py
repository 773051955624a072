"""jobs.neptune_load's loader calls: real boto3 ``neptunedata`` against a scripted local loader endpoint.

(The whole night, export to checked graph, is tested against the stand-in in
tests/test_neptune_nights.py.) The server (``http.server`` on 127.0.0.1, one per test) answers like
Neptune's ``/loader`` endpoint:
POST /loader -> ``{"status": "200 OK", "payload": {"loadId": ...}}``;
GET /loader/<id>?details=true&errors=true ->
``{"status": "200 OK", "payload": {"overallStatus": {...}, "failedFeeds": [...], "errors": {...}}}``. Each
test scripts the statuses a load goes through and asserts the exact requests boto3 sent.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from jobs import neptune_load
from jobs.common.cli import JobError
from tests.neptune_standin import JsonHandler

ROLE = "arn:aws:iam::123456789012:role/NeptuneLoadFromS3"
REGION = "eu-west-1"
SOURCE = "s3://shop-bucket/style/gremlin/dt=2024-03-31"


def overall(status: str, records: int = 0, uri: str = "s3://shop-bucket/x/") -> dict[str, Any]:
    return {
        "fullUri": uri,
        "runNumber": 1,
        "retryNumber": 0,
        "status": status,
        "totalTimeSpent": 3,
        "startTime": 1711843200,
        "totalRecords": records,
        "totalDuplicates": 0,
        "parsingErrors": 0,
        "datatypeMismatchErrors": 0,
        "insertErrors": 0,
    }


def payload(status: str, records: int = 0) -> dict[str, Any]:
    """A Get-Status payload with no failed feeds and no errors."""
    return {"overallStatus": overall(status, records)}


class FakeLoader:
    """Scripted loader state shared with the handler: load ids to hand out, statuses per load id."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.gets: list[tuple[str, dict[str, list[str]]]] = []
        self.load_ids: list[str] = []
        self.statuses: dict[str, list[dict[str, Any]]] = {}
        self.post_error: tuple[int, dict[str, Any]] | None = None
        self.lock = threading.Lock()

    def next_status(self, load_id: str) -> dict[str, Any]:
        script = self.statuses[load_id]
        return script.pop(0) if len(script) > 1 else script[0]  # the last answer repeats


def make_handler(state: FakeLoader) -> type[BaseHTTPRequestHandler]:
    class Handler(JsonHandler):

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length) or b"{}")
            with state.lock:
                state.posts.append({"path": self.path, "body": body})
                if state.post_error is not None:
                    code, error = state.post_error
                    self._send(code, error, error_type=error["code"])
                    return
                load_id = state.load_ids.pop(0)
            self._send(200, {"status": "200 OK", "payload": {"loadId": load_id}})

        def do_GET(self) -> None:  # noqa: N802
            url = urlparse(self.path)
            load_id = url.path.rsplit("/", 1)[-1]
            with state.lock:
                state.gets.append((url.path, parse_qs(url.query)))
                payload = state.next_status(load_id)
            self._send(200, {"status": "200 OK", "payload": payload})

    return Handler


@pytest.fixture()
def loader_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, FakeLoader]]:
    """A local loader endpoint and its state; dummy credentials for boto3 (this test only)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    for name in (neptune_load.ENV_ENDPOINT, neptune_load.ENV_ROLE_ARN, "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    state = FakeLoader()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", state
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def load(endpoint: str, *, max_attempts: int = 1, timeout_s: float = 60) -> dict[str, Any]:
    """The export's two prefixes loaded as the job loads them (vertices, then edges depending on them)."""
    client = neptune_load.make_client(endpoint, REGION, max_attempts=max_attempts)
    loader = neptune_load.NeptuneLoader(client, timeout_s=timeout_s, poll_initial_s=0.01, poll_max_s=0.02)
    settings = neptune_load.LoadSettings(iam_role_arn=ROLE, region=REGION)
    return loader.load_export(f"{SOURCE}/vertices/", f"{SOURCE}/edges/", settings)


def expected_body(source: str, dependencies: list[str] | None = None) -> dict[str, Any]:
    """The JSON body Neptune documents for POST /loader (note: the region goes on the wire as "region")."""
    body = {
        "source": source,
        "format": "csv",
        "region": REGION,
        "iamRoleArn": ROLE,
        "mode": "NEW",
        "failOnError": True,
        "parallelism": "HIGH",
        "updateSingleCardinalityProperties": True,
        "queueRequest": True,
    }
    if dependencies is not None:
        body["dependencies"] = dependencies
    return body


def test_vertices_then_edges_with_dependency_after_queue_and_progress(loader_endpoint):
    endpoint, state = loader_endpoint
    state.load_ids = ["v-load-1", "e-load-2"]
    state.statuses = {
        "v-load-1": [payload("LOAD_IN_QUEUE"), payload("LOAD_IN_PROGRESS"), payload("LOAD_COMPLETED", 4)],
        "e-load-2": [payload("LOAD_IN_QUEUE"), payload("LOAD_COMPLETED", 7)],
    }

    result = load(endpoint)

    assert state.posts == [
        {"path": "/loader", "body": expected_body(f"{SOURCE}/vertices/")},
        {"path": "/loader", "body": expected_body(f"{SOURCE}/edges/", dependencies=["v-load-1"])},
    ]
    query = {"details": ["true"], "errors": ["true"]}
    assert state.gets == [("/loader/v-load-1", query)] * 3 + [("/loader/e-load-2", query)] * 2
    assert result["vertices"] == {"loadId": "v-load-1", "overallStatus": overall("LOAD_COMPLETED", 4)}
    assert result["edges"] == {"loadId": "e-load-2", "overallStatus": overall("LOAD_COMPLETED", 7)}


def test_failed_load_logs_the_error_log_and_fails(loader_endpoint, caplog):
    endpoint, state = loader_endpoint
    state.load_ids = ["v-load-1", "e-load-2"]
    failed = {
        "overallStatus": {**overall("LOAD_FAILED", 10), "parsingErrors": 1},
        "failedFeeds": [{**overall("LOAD_FAILED", 10, uri="s3://shop-bucket/x/vertices/part-00000.csv.gz")}],
        "errors": {
            "startIndex": 1,
            "endIndex": 1,
            "loadId": "v-load-1",
            "errorLogs": [
                {
                    "errorCode": "PARSING_ERROR",
                    "errorMessage": "Invalid quoting",
                    "fileName": "s3://shop-bucket/x/vertices/part-00000.csv.gz",
                    "recordNum": 42,
                }
            ],
        },
    }
    state.statuses = {
        "v-load-1": [payload("LOAD_IN_PROGRESS"), failed],
        "e-load-2": [payload("LOAD_IN_QUEUE")],
    }

    with caplog.at_level(logging.ERROR, logger="stylegraph.neptune_load"), pytest.raises(JobError) as err:
        load(endpoint)

    assert str(err.value) == "load v-load-1 ended LOAD_FAILED (source s3://shop-bucket/x/)"
    assert [record.getMessage() for record in caplog.records] == [
        "load v-load-1 LOAD_FAILED: records 10, parsing errors 1, datatype mismatches 0, insert errors 0",
        "failed feed s3://shop-bucket/x/vertices/part-00000.csv.gz: LOAD_FAILED",
        "s3://shop-bucket/x/vertices/part-00000.csv.gz record 42: PARSING_ERROR Invalid quoting",
    ]
    assert [path for path, _ in state.gets] == ["/loader/v-load-1", "/loader/v-load-1"]


def test_edge_load_failing_its_dependency_fails_the_run(loader_endpoint):
    endpoint, state = loader_endpoint
    state.load_ids = ["v-load-1", "e-load-2"]
    state.statuses = {
        "v-load-1": [payload("LOAD_COMPLETED", 4)],
        "e-load-2": [payload("LOAD_FAILED_BECAUSE_DEPENDENCY_NOT_SATISFIED")],
    }
    with pytest.raises(
        neptune_load.LoadFailedError, match="e-load-2 ended LOAD_FAILED_BECAUSE_DEPENDENCY_NOT_SATISFIED"
    ):
        load(endpoint)


def test_http_500_is_a_clear_error_after_the_configured_attempts(loader_endpoint):
    endpoint, state = loader_endpoint
    state.post_error = (
        500,
        {
            "code": "InternalFailureException",
            "requestId": "req-1",
            "detailedMessage": "loader crashed",
            "message": "loader crashed",
        },
    )

    with pytest.raises(JobError) as err:
        load(endpoint, max_attempts=2)

    assert str(err.value) == (
        f"starting the load of {SOURCE}/vertices/: HTTP 500 InternalFailureException: loader crashed"
    )
    assert len(state.posts) == 2  # botocore retried the 5xx once, as configured
    assert state.gets == []


def test_never_finishing_load_hits_the_timeout_with_its_load_id(loader_endpoint):
    endpoint, state = loader_endpoint
    state.load_ids = ["v-load-1", "e-load-2"]
    state.statuses = {"v-load-1": [payload("LOAD_IN_PROGRESS")], "e-load-2": [payload("LOAD_IN_QUEUE")]}

    with pytest.raises(neptune_load.LoadTimeoutError) as err:
        load(endpoint, timeout_s=1)

    assert str(err.value).startswith("load v-load-1 still LOAD_IN_PROGRESS after the 1s timeout")
    assert "GET <endpoint>/loader/v-load-1" in str(err.value)
    assert len(state.gets) >= 2 and {path for path, _ in state.gets} == {"/loader/v-load-1"}


def test_backoff_doubles_up_to_the_cap():
    sleeps: list[float] = []
    statuses = iter(["LOAD_IN_QUEUE"] * 5 + ["LOAD_COMPLETED"])

    class Client:
        def get_loader_job_status(self, **kwargs):
            assert kwargs == {"loadId": "x", "details": True, "errors": True}
            return {"status": "200 OK", "payload": payload(next(statuses))}

    loader = neptune_load.NeptuneLoader(
        Client(), poll_initial_s=1.0, poll_max_s=5.0, sleep=sleeps.append, clock=lambda: 0.0
    )
    final = loader.wait("x", deadline=100.0)
    assert final == payload("LOAD_COMPLETED")
    assert sleeps == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_missing_settings_are_named(loader_endpoint):
    with pytest.raises(JobError, match="missing --endpoint, --iam-role-arn, --region"):
        neptune_load.main(["--source", SOURCE])
