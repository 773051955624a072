"""Start an Amazon Neptune bulk load of a Gremlin CSV export and wait for it: vertices, then edges.

    python -m jobs.neptune_load --source s3://bucket/style/gremlin/dt=D \
        --endpoint https://<cluster>:8182 --iam-role-arn arn:aws:iam::<account>:role/<loader role> \
        --region eu-west-1 [--parallelism HIGH] [--timeout 7200] [--dry-run]

``--source`` is the export folder: its ``vertices/`` prefix is loaded first, then its ``edges/`` prefix
with the vertex load as a dependency (both queued, so Neptune runs them in order). Each load is polled
with exponential backoff until a final state; LOAD_COMPLETED is success, every other final state fails the
run after logging the loader's error log (failed feeds and error records). Past ``--timeout`` seconds the
run stops with the load id, so someone can look at it. ``--dry-run`` prints the two requests as JSON.

No credentials in code: boto3 finds them the usual way (instance role on EMR, env, profile). The endpoint,
the loader's IAM role and the bucket's region come from the arguments or from ``NEPTUNE_ENDPOINT``,
``NEPTUNE_LOADER_ROLE_ARN`` and ``AWS_REGION``. Uses boto3's ``neptunedata`` client (``start_loader_job``:
POST /loader; ``get_loader_job_status``: GET /loader/{loadId}).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jobs.common import storage
from jobs.common.cli import JobError, job_parser, positive_int, run
from schemas import gremlin as G

LOG = logging.getLogger("stylegraph.neptune_load")

ENV_ENDPOINT = "NEPTUNE_ENDPOINT"
ENV_ROLE_ARN = "NEPTUNE_LOADER_ROLE_ARN"
ENV_REGIONS = ("AWS_REGION", "AWS_DEFAULT_REGION")
FORMAT_CSV = "csv"
MODE_AUTO = "AUTO"
MODES = ("AUTO", "NEW", "RESUME")
PARALLELISMS = ("LOW", "MEDIUM", "HIGH", "OVERSUBSCRIBE")
DEFAULT_PARALLELISM = "HIGH"
DEFAULT_TIMEOUT_S = 6 * 3600
DEFAULT_POLL_INITIAL_S = 2.0
DEFAULT_POLL_MAX_S = 60.0
DEFAULT_MAX_ATTEMPTS = 5  # botocore's own retries of throttling and 5xx answers per call
PLACEHOLDER_VERTEX_LOAD_ID = "<loadId of the vertex load>"

STATUS_COMPLETED = "LOAD_COMPLETED"
# States in which a load is still on its way; LOAD_COMPLETED is success, anything else is final failure
# (LOAD_FAILED, LOAD_CANCELLED_BY_USER, LOAD_CANCELLED_DUE_TO_ERRORS, LOAD_UNEXPECTED_ERROR,
# LOAD_S3_READ_ERROR, LOAD_S3_ACCESS_DENIED_ERROR, LOAD_COMMITTED_W_WRITE_CONFLICTS, LOAD_DATA_DEADLOCK,
# LOAD_DATA_FAILED_DUE_TO_FEED_MODIFIED_OR_DELETED, LOAD_FAILED_BECAUSE_DEPENDENCY_NOT_SATISFIED,
# LOAD_FAILED_INVALID_REQUEST...).
PENDING_STATUSES = frozenset({"LOAD_NOT_STARTED", "LOAD_IN_QUEUE", "LOAD_IN_PROGRESS"})


class LoadFailedError(JobError):
    """A load reached a final state other than LOAD_COMPLETED."""


class LoadTimeoutError(JobError):
    """A load was still pending when the overall timeout ran out."""


@dataclass(frozen=True)
class LoadSettings:
    """What every load request of a run shares."""

    iam_role_arn: str
    region: str
    parallelism: str = DEFAULT_PARALLELISM
    mode: str = MODE_AUTO
    fail_on_error: bool = True
    update_single_cardinality: bool = True


def loader_request(source: str, settings: LoadSettings, dependencies: Sequence[str] = ()) -> dict[str, Any]:
    """The ``start_loader_job`` keyword arguments for one prefix (queued, so dependencies are honoured)."""
    request: dict[str, Any] = {
        "source": source,
        "format": FORMAT_CSV,
        "s3BucketRegion": settings.region,
        "iamRoleArn": settings.iam_role_arn,
        "mode": settings.mode,
        "failOnError": settings.fail_on_error,
        "parallelism": settings.parallelism,
        "updateSingleCardinalityProperties": settings.update_single_cardinality,
        "queueRequest": True,
    }
    if dependencies:
        request["dependencies"] = list(dependencies)
    return request


def make_client(endpoint: str, region: str, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> Any:
    """A boto3 ``neptunedata`` client for a cluster endpoint (credentials: boto3's default chain)."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"total_max_attempts": max_attempts, "mode": "standard"}, connect_timeout=10, read_timeout=60
    )
    return boto3.client("neptunedata", endpoint_url=endpoint, region_name=region, config=config)


def _client_error_message(err: Exception) -> str:
    response = getattr(err, "response", None) or {}
    error = response.get("Error", {})
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    detail = error.get("Message") or response.get("detailedMessage") or str(err)
    return f"HTTP {status} {error.get('Code', type(err).__name__)}: {detail}"


class NeptuneLoader:
    """Starts loads and waits for them. ``sleep`` and ``clock`` are injectable so tests need no waiting."""

    def __init__(
        self,
        client: Any,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        poll_initial_s: float = DEFAULT_POLL_INITIAL_S,
        poll_max_s: float = DEFAULT_POLL_MAX_S,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.timeout_s = timeout_s
        self.poll_initial_s = poll_initial_s
        self.poll_max_s = poll_max_s
        self.sleep = sleep
        self.clock = clock

    def _call(self, what: str, method: Callable[..., Mapping[str, Any]], **kwargs: Any) -> Mapping[str, Any]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return method(**kwargs)
        except ClientError as err:
            raise JobError(f"{what}: {_client_error_message(err)}") from err
        except BotoCoreError as err:
            raise JobError(f"{what}: {err}") from err

    def start(self, request: Mapping[str, Any]) -> str:
        """Start one load; returns its load id."""
        response = self._call(
            f"starting the load of {request['source']}", self.client.start_loader_job, **request
        )
        load_id = (response.get("payload") or {}).get("loadId")
        if not load_id:
            raise JobError(f"starting the load of {request['source']}: no loadId in {dict(response)}")
        LOG.info(
            "load %s started for %s (dependencies %s)",
            load_id,
            request["source"],
            request.get("dependencies", []),
        )
        return load_id

    def status(self, load_id: str) -> dict[str, Any]:
        """The status payload of a load, with details and the error log."""
        response = self._call(
            f"load {load_id}", self.client.get_loader_job_status, loadId=load_id, details=True, errors=True
        )
        return dict(response.get("payload") or {})

    def wait(self, load_id: str, deadline: float) -> dict[str, Any]:
        """Poll until a final state (exponential backoff, capped); the final payload on LOAD_COMPLETED.

        Raises:
            LoadFailedError: any other final state (after logging the loader's error log).
            LoadTimeoutError: still pending at ``deadline`` (a ``clock()`` value).
        """
        delay = self.poll_initial_s
        last = "unknown"
        while True:
            payload = self.status(load_id)
            overall = payload.get("overallStatus") or {}
            last = overall.get("status", "unknown")
            if last == STATUS_COMPLETED:
                LOG.info(
                    "load %s completed: %d records in %ss",
                    load_id,
                    overall.get("totalRecords", 0),
                    overall.get("totalTimeSpent", "?"),
                )
                return payload
            if last not in PENDING_STATUSES:
                log_errors(load_id, payload)
                raise LoadFailedError(f"load {load_id} ended {last} (source {overall.get('fullUri', '?')})")
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise LoadTimeoutError(
                    f"load {load_id} still {last} after the {self.timeout_s:g}s timeout; it may still be "
                    f"running: GET <endpoint>/loader/{load_id}?details=true&errors=true"
                )
            LOG.info("load %s %s; next check in %.1fs", load_id, last, min(delay, remaining))
            self.sleep(min(delay, remaining))
            delay = min(delay * 2, self.poll_max_s)

    def load_export(self, vertices_source: str, edges_source: str, settings: LoadSettings) -> dict[str, Any]:
        """Vertices first, then edges depending on them; waits for both. Returns load ids and statuses."""
        deadline = self.clock() + self.timeout_s
        vertex_id = self.start(loader_request(vertices_source, settings))
        edge_id = self.start(loader_request(edges_source, settings, dependencies=[vertex_id]))
        vertex_payload = self.wait(vertex_id, deadline)
        edge_payload = self.wait(edge_id, deadline)
        return {
            "vertices": {"loadId": vertex_id, "overallStatus": vertex_payload.get("overallStatus", {})},
            "edges": {"loadId": edge_id, "overallStatus": edge_payload.get("overallStatus", {})},
        }


def log_errors(load_id: str, payload: Mapping[str, Any]) -> list[str]:
    """Log (and return) the loader's account of a failed load: overall counts, failed feeds, error records."""
    lines = []
    overall = payload.get("overallStatus") or {}
    lines.append(
        f"load {load_id} {overall.get('status')}: records {overall.get('totalRecords')}, "
        f"parsing errors {overall.get('parsingErrors')}, "
        f"datatype mismatches {overall.get('datatypeMismatchErrors')}, "
        f"insert errors {overall.get('insertErrors')}"
    )
    for feed in payload.get("failedFeeds") or []:
        lines.append(f"failed feed {feed.get('fullUri')}: {feed.get('status')}")
    for entry in (payload.get("errors") or {}).get("errorLogs") or []:
        lines.append(
            f"{entry.get('fileName')} record {entry.get('recordNum')}: {entry.get('errorCode')} "
            f"{entry.get('errorMessage')}"
        )
    for line in lines:
        LOG.error("%s", line)
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = job_parser("neptune_load", "Bulk-load a Gremlin CSV export into Amazon Neptune.")
    parser.add_argument("--source", required=True, help="the export folder (s3://...): vertices/ and edges/")
    parser.add_argument("--vertices-source", default=None, help="vertex prefix (default <source>/vertices/)")
    parser.add_argument("--edges-source", default=None, help="edge prefix (default <source>/edges/)")
    parser.add_argument(
        "--endpoint",
        default=os.environ.get(ENV_ENDPOINT),
        help=f"https://<cluster>:8182 (default ${ENV_ENDPOINT})",
    )
    parser.add_argument(
        "--iam-role-arn",
        default=os.environ.get(ENV_ROLE_ARN),
        help=f"role the loader assumes to read S3 (default ${ENV_ROLE_ARN})",
    )
    region = next((os.environ[name] for name in ENV_REGIONS if os.environ.get(name)), None)
    parser.add_argument("--region", default=region, help="the bucket's region (default $AWS_REGION)")
    parser.add_argument("--parallelism", default=DEFAULT_PARALLELISM, choices=PARALLELISMS)
    parser.add_argument("--mode", default=MODE_AUTO, choices=MODES)
    parser.add_argument(
        "--no-fail-on-error",
        dest="fail_on_error",
        action="store_false",
        help="let the loader go on past bad records (default: stop at the first)",
    )
    parser.add_argument(
        "--no-update-single-cardinality",
        dest="update_single_cardinality",
        action="store_false",
        help="refuse to replace single-cardinality values already in the graph",
    )
    parser.add_argument(
        "--timeout",
        type=positive_int,
        default=DEFAULT_TIMEOUT_S,
        help="overall seconds to wait for both loads",
    )
    parser.add_argument("--poll-initial", type=float, default=DEFAULT_POLL_INITIAL_S)
    parser.add_argument("--poll-max", type=float, default=DEFAULT_POLL_MAX_S)
    parser.add_argument(
        "--max-attempts",
        type=positive_int,
        default=DEFAULT_MAX_ATTEMPTS,
        help="attempts per HTTP call (botocore retries throttling and 5xx answers)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the requests as JSON, call nothing")
    return parser.parse_args(argv)


def current_version(source: str) -> str:
    """The export's current version (``storage.resolve``: its ``_CURRENT`` pointer). Where this machine
    cannot read the bucket (the loader reads it with its own role), the source as given: its
    ``vertices/``/``edges/`` prefixes then hold no file of a versioned export, so the load finds nothing
    rather than a mix of versions."""
    try:
        return storage.resolve(source)
    except OSError as err:
        LOG.warning("cannot read the pointer under %s (%s): loading the source as given", source, err)
        return source


def prefix(source: str, folder: str) -> str:
    return storage.join(source, folder) + "/"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Load an export; returns the load ids and final statuses (or the requests, with ``--dry-run``)."""
    args = parse_args(argv)
    missing = [
        flag
        for flag, value in (("--iam-role-arn", args.iam_role_arn), ("--region", args.region))
        if not value
    ]
    if not args.dry_run and not args.endpoint:
        missing.insert(0, "--endpoint")
    if missing:
        raise JobError(f"missing {', '.join(missing)} (or {ENV_ENDPOINT}, {ENV_ROLE_ARN}, AWS_REGION)")
    if not storage.is_remote(args.source) and not args.dry_run:
        raise JobError(f"--source must be an s3:// URI the loader can read, got {args.source!r}")
    settings = LoadSettings(
        iam_role_arn=args.iam_role_arn,
        region=args.region,
        parallelism=args.parallelism,
        mode=args.mode,
        fail_on_error=args.fail_on_error,
        update_single_cardinality=args.update_single_cardinality,
    )
    source = args.source if args.dry_run else current_version(args.source)
    vertices_source = args.vertices_source or prefix(source, G.VERTICES_DIR)
    edges_source = args.edges_source or prefix(source, G.EDGES_DIR)
    if args.dry_run:
        requests = {
            "endpoint": args.endpoint,
            "vertices": loader_request(vertices_source, settings),
            "edges": loader_request(edges_source, settings, dependencies=[PLACEHOLDER_VERTEX_LOAD_ID]),
        }
        sys.stdout.write(json.dumps(requests, indent=2) + "\n")  # the CLI's output, not a log line
        return {"dry_run": True, **requests}
    client = make_client(args.endpoint, args.region, max_attempts=args.max_attempts)
    loader = NeptuneLoader(
        client, timeout_s=args.timeout, poll_initial_s=args.poll_initial, poll_max_s=args.poll_max
    )
    result = loader.load_export(vertices_source, edges_source, settings)
    return {"dry_run": False, "endpoint": args.endpoint, **result}


if __name__ == "__main__":
    raise SystemExit(run(main))
