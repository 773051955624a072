"""Make the Neptune graph equal tonight's Gremlin CSV export: load what changed, remove what went, check.

    python -m jobs.neptune_load --source s3://bucket/style/gremlin/dt=D \
        --endpoint https://<cluster>:8182 --iam-role-arn arn:aws:iam::<account>:role/<loader role> \
        --region eu-west-1 [--batch-size 500] [--rate 0] [--full] [--dry-run]

``--source`` is the export folder. Its ``manifest.json`` says what tonight changes against the export the
graph holds (``diff``, written by the export job against the loaded marker ``<gremlin root>/_LOADED.json``):

1. the rows to load (``diff/vertices/``, then ``diff/edges/`` with the vertex load as a dependency;
   ``vertices/`` and ``edges/`` whole on a full load), each load ``mode=NEW`` with
   ``updateSingleCardinalityProperties``, polled with backoff until a final state (LOAD_COMPLETED is
   success; any other final state fails after logging the loader's error log);
2. the properties to clear (a blank field never clears a value in the loader), then the edges and the
   vertices to remove, in batches of ``--batch-size`` ids through the data API
   (:mod:`jobs.common.neptune_data`), at most ``--rate`` requests a second, throttling and
   concurrent-modification errors retried with backoff;
3. vertices and edges counted by label through the data API and compared with the manifest: a mismatch
   fails with the numbers;
4. only then ``_LOADED.json`` is written naming the export (and the in-progress marker ``_LOADING.json``,
   written before step 1, is removed). A failure at any step leaves ``_LOADED.json`` as it was.

Every step is idempotent (loads upsert, removing an absent id is no error), so a night that failed
half-way is simply run again. A source that ``_LOADED.json`` already names is only checked. ``--full``
loads the whole export and removes nothing (recovery; the count check then says whether the graph holds
anything else). ``--dry-run`` prints the plan and the load requests as JSON and calls nothing.

No credentials in code: boto3 finds them the usual way (instance role on EMR, env, profile). The endpoint,
the loader's IAM role and the bucket's region come from the arguments or from ``NEPTUNE_ENDPOINT``,
``NEPTUNE_LOADER_ROLE_ARN`` and ``AWS_REGION``. Neptune's loader reads S3 only; a local ``--source`` is
for a local stand-in.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import itertools
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from jobs.common import graph_marker as gm
from jobs.common import neptune_data as nd
from jobs.common import storage
from jobs.common.cli import JobError, job_parser, positive_int, run
from schemas import gremlin

LOG = logging.getLogger("stylegraph.neptune_load")

ENV_ENDPOINT = "NEPTUNE_ENDPOINT"
ENV_ROLE_ARN = "NEPTUNE_LOADER_ROLE_ARN"
ENV_REGIONS = ("AWS_REGION", "AWS_DEFAULT_REGION")
FORMAT_CSV = "csv"
MODE_NEW = "NEW"  # a fresh load each night: AUTO would resume an old failed load of the same source
MODES = ("AUTO", "NEW", "RESUME")
PARALLELISMS = ("LOW", "MEDIUM", "HIGH", "OVERSUBSCRIBE")
DEFAULT_PARALLELISM = "HIGH"
DEFAULT_TIMEOUT_S = 6 * 3600
DEFAULT_POLL_INITIAL_S = 2.0
DEFAULT_POLL_MAX_S = 60.0
DEFAULT_MAX_ATTEMPTS = 5  # botocore's own retries of throttling and 5xx answers per loader call
# Ids per removal request. An edge id is about 50 bytes, so a request is about 25 KB of Gremlin and one
# short transaction: small enough that a conflict with another writer retries little work, large enough
# that a night with 5% of 50,000 top-10 products changed (about 30,000 removals, bench/neptune_diff.py)
# is about 60 requests.
DEFAULT_BATCH_SIZE = 500
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
    mode: str = MODE_NEW
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

    def load_export(
        self, vertices_source: str | None, edges_source: str | None, settings: LoadSettings
    ) -> dict[str, Any]:
        """Vertices first, then edges depending on them; waits for both. Returns load ids and statuses.

        A source that is None has nothing to load and is skipped (the edges then depend on nothing).
        """
        deadline = self.clock() + self.timeout_s
        vertex_id = self.start(loader_request(vertices_source, settings)) if vertices_source else None
        edge_id = None
        if edges_source:
            dependencies = [vertex_id] if vertex_id else []
            edge_id = self.start(loader_request(edges_source, settings, dependencies=dependencies))
        result: dict[str, Any] = {}
        for kind, load_id in (("vertices", vertex_id), ("edges", edge_id)):
            if load_id is None:
                result[kind] = None
                continue
            payload = self.wait(load_id, deadline)
            result[kind] = {"loadId": load_id, "overallStatus": payload.get("overallStatus", {})}
        return result


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


class GraphMismatchError(JobError):
    """After the night, the graph's counts by label are not the export's."""


@dataclass(frozen=True)
class NightPlan:
    """What one night does to the graph, from the export's manifest and the markers."""

    export: gm.ExportRef
    is_full_load: bool
    is_loaded: bool  # the loaded marker already names this export: only the check runs
    vertices_source: str | None  # prefix to load (None: nothing)
    edges_source: str | None
    remove_files: dict[str, list[str]] = field(default_factory=dict)  # "vertices"/"edges" -> CSV URIs
    clear_files: dict[str, list[str]] = field(default_factory=dict)
    expected: dict[str, dict[str, int]] = field(default_factory=dict)  # kind -> label -> count
    counts: dict[str, Any] | None = None  # the diff's counts from the manifest

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "export": self.export.as_dict()}


def expected_counts(manifest: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """Elements per label the graph must hold after loading this export (labels with none left out)."""
    totals = manifest["totals"]
    expected = {
        gremlin.VERTICES_DIR: {manifest["vertex_label"]: int(totals[gremlin.VERTICES_DIR]["rows"])},
        gremlin.EDGES_DIR: {manifest["edge_label"]: int(totals[gremlin.EDGES_DIR]["rows"])},
    }
    return {kind: {label: n for label, n in counts.items() if n} for kind, counts in expected.items()}


def plan_night(
    source: str,
    manifest: Mapping[str, Any],
    ref: gm.ExportRef,
    *,
    loaded: gm.ExportRef | None,
    attempts: Sequence[gm.ExportRef],
    is_full: bool,
) -> NightPlan:
    """Decide what tonight loads, clears and removes.

    Raises:
        JobError: the export's diff is not against what the graph holds (the loaded marker, and every
            unfinished load since): the export must be run again, or ``--full`` used.
    """
    expected = expected_counts(manifest)
    if ref.is_same(loaded):
        return NightPlan(ref, False, True, None, None, expected=expected)
    diff = manifest.get("diff") or {"is_full_load": True, "bases": []}
    rows = {item["path"]: int(item["rows"]) for item in manifest["files"] + diff.get("files", [])}
    if is_full or diff["is_full_load"]:
        return NightPlan(
            ref,
            True,
            False,
            _prefix_with_rows(source, rows, gremlin.VERTICES_DIR),
            _prefix_with_rows(source, rows, gremlin.EDGES_DIR),
            expected=expected,
        )
    _check_diff_bases(source, ref, diff["bases"], loaded=loaded, attempts=attempts)
    kinds = (gremlin.VERTICES_DIR, gremlin.EDGES_DIR)
    return NightPlan(
        ref,
        False,
        False,
        _prefix_with_rows(source, rows, storage.join(gremlin.DIFF_DIR, gremlin.VERTICES_DIR)),
        _prefix_with_rows(source, rows, storage.join(gremlin.DIFF_DIR, gremlin.EDGES_DIR)),
        remove_files={
            k: _files_under(source, rows, storage.join(gremlin.DIFF_DIR, gremlin.DIFF_REMOVE_DIR, k))
            for k in kinds
        },
        clear_files={
            k: _files_under(source, rows, storage.join(gremlin.DIFF_DIR, gremlin.DIFF_CLEAR_DIR, k))
            for k in kinds
        },
        expected=expected,
        counts=diff.get("counts"),
    )


def _prefix_with_rows(source: str, rows: Mapping[str, int], folder: str) -> str | None:
    """The loader prefix of an export folder, or None when its files (``rows``: path -> rows) hold none."""
    has_rows = sum(n for path, n in rows.items() if path.startswith(folder + "/"))
    return prefix(source, folder) if has_rows else None


def _files_under(source: str, rows: Mapping[str, int], folder: str) -> list[str]:
    """The URIs of the export's files under a folder, sorted."""
    return sorted(storage.join(source, path) for path in rows if path.startswith(folder + "/"))


def _check_diff_bases(
    source: str,
    ref: gm.ExportRef,
    bases: Sequence[Mapping[str, Any]],
    *,
    loaded: gm.ExportRef | None,
    attempts: Sequence[gm.ExportRef],
) -> None:
    """Refuse a diff that is not against everything the graph may hold: the loaded export and every
    unfinished load since (other than this export's own)."""
    base_refs = [gm.ExportRef(b["export"], b["run_date"], b["manifest_sha256"]) for b in bases]
    holds = [loaded, *(item for item in attempts if not item.is_same(ref) and not item.is_same(loaded))]
    uncovered = [item for item in holds if not any(base.is_same(item) for base in base_refs)]
    if uncovered:
        names = ", ".join("nothing loaded" if item is None else item.export for item in uncovered)
        raise JobError(
            f"{storage.join(source, gremlin.MANIFEST_NAME)}: its diff is against "
            f"{[base.export for base in base_refs]} but the graph may hold {names}: run the export for "
            f"{ref.run_date} again (it diffs against the markers), or load it with --full"
        )


def read_rows(file_uri: str) -> Iterator[list[str]]:
    """The data rows of one (possibly gzip or bzip2) RFC 4180 CSV file, streamed; the header skipped."""
    fs, path = storage.filesystem(file_uri)
    compression = "gzip" if path.endswith(".gz") else "bz2" if path.endswith(".bz2") else None
    with fs.open_input_stream(path, compression=compression) as stream:
        reader = csv.reader(io.TextIOWrapper(stream, encoding="utf-8", newline=""), strict=True)
        next(reader, None)
        yield from reader


def batched(items: Iterator[str], size: int) -> Iterator[list[str]]:
    while batch := list(itertools.islice(items, size)):
        yield batch


def id_batches(files: Sequence[str], size: int) -> Iterator[list[str]]:
    """The ids of removal files (first column), in batches of ``size``."""
    return batched((row[0] for uri in files for row in read_rows(uri)), size)


def clear_batches(files: Sequence[str], size: int) -> Iterator[tuple[str, list[str]]]:
    """``(property key, ids)`` batches of clear files: one key per batch, ``size`` ids at most."""
    by_key: dict[str, list[str]] = {}
    for uri in files:
        for element_id, key in read_rows(uri):
            by_key.setdefault(key, []).append(element_id)
    for key in sorted(by_key):
        for batch in batched(iter(by_key[key]), size):
            yield key, batch


def apply_changes(api: nd.DataApi, plan: NightPlan, batch_size: int) -> dict[str, int]:
    """Clear properties, then remove edges, then vertices; returns the ids sent per step."""
    done = {}
    for kind, letter in ((gremlin.VERTICES_DIR, nd.VERTEX), (gremlin.EDGES_DIR, nd.EDGE)):
        done[f"{kind}_cleared"] = api.clear(letter, clear_batches(plan.clear_files.get(kind, []), batch_size))
    for kind, letter in ((gremlin.EDGES_DIR, nd.EDGE), (gremlin.VERTICES_DIR, nd.VERTEX)):
        done[f"{kind}_removed"] = api.drop(letter, id_batches(plan.remove_files.get(kind, []), batch_size))
    LOG.info("changes applied: %s in %d requests (%d retried)", done, api.requests, api.retries)
    return done


def check_counts(api: nd.DataApi, expected: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    """Count the graph by label and compare with ``expected``.

    Raises:
        GraphMismatchError: any label's count differs (all of them named, with both numbers).
    """
    found = {
        gremlin.VERTICES_DIR: api.count_by_label(nd.VERTEX),
        gremlin.EDGES_DIR: api.count_by_label(nd.EDGE),
    }
    problems = [
        f"{kind} {label!r}: graph {found[kind].get(label, 0)}, export {expected[kind].get(label, 0)}"
        for kind in (gremlin.VERTICES_DIR, gremlin.EDGES_DIR)
        for label in sorted(set(found[kind]) | set(expected[kind]))
        if found[kind].get(label, 0) != expected[kind].get(label, 0)
    ]
    if problems:
        raise GraphMismatchError("the graph does not match the export: " + "; ".join(problems))
    LOG.info("graph counts match the export: %s", found)
    return found


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = job_parser("neptune_load", "Make the Neptune graph equal a Gremlin CSV export, and check it.")
    _add_target_args(parser)
    _add_load_args(parser)
    _add_data_api_args(parser)
    _add_polling_args(parser)
    parser.add_argument("--dry-run", action="store_true", help="print the plan as JSON, call nothing")
    return parser.parse_args(argv)


def _add_target_args(parser: argparse.ArgumentParser) -> None:
    """Which export goes into which cluster: source, markers, endpoint, loader role and region."""
    parser.add_argument("--source", required=True, help="the export folder (s3://...) with its manifest.json")
    parser.add_argument(
        "--loaded-marker",
        default=None,
        help="the marker naming the export the graph holds "
        f"(default <source>/../{gremlin.LOADED_MARKER_NAME})",
    )
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


def _add_load_args(parser: argparse.ArgumentParser) -> None:
    """How the bulk loader loads, and whether the whole export is loaded."""
    parser.add_argument("--parallelism", default=DEFAULT_PARALLELISM, choices=PARALLELISMS)
    parser.add_argument("--mode", default=MODE_NEW, choices=MODES, help="loader mode (default NEW)")
    parser.add_argument(
        "--no-fail-on-error",
        dest="fail_on_error",
        action="store_false",
        help="let the loader go on past bad records (default: stop at the first)",
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="load the whole export and remove nothing, whatever the diff says (recovery)",
    )


def _add_data_api_args(parser: argparse.ArgumentParser) -> None:
    """How clears and removals go through the data API: batch size, rate and retries."""
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=DEFAULT_BATCH_SIZE,
        help=f"ids per removal or clear request (default {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument(
        "--rate", type=float, default=0.0, help="data API requests per second at most (default 0: no limit)"
    )
    parser.add_argument(
        "--max-retries",
        type=positive_int,
        default=nd.Pacing.max_retries,
        help="retries of a throttled or conflicting data API request",
    )
    parser.add_argument("--backoff-initial", type=float, default=nd.Pacing.backoff_initial_s)
    parser.add_argument("--backoff-max", type=float, default=nd.Pacing.backoff_max_s)


def _add_polling_args(parser: argparse.ArgumentParser) -> None:
    """How long and how often the loads are polled, and how often a loader call is tried."""
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
        help="attempts per loader HTTP call (botocore retries throttling and 5xx answers)",
    )


def current_version(source: str) -> str:
    """The export's current version (``storage.resolve``: on S3, its ``_CURRENT`` pointer).

    Raises:
        JobError: the pointer cannot be read (no access, no endpoint), named.
    """
    try:
        return storage.resolve(source)
    except OSError as err:
        raise JobError(f"--source {source}: cannot read its pointer ({err})") from err


def read_manifest(version: str) -> tuple[dict[str, Any], str]:
    """The export manifest of a version and the sha-256 of its bytes (what the markers record).

    Raises:
        JobError: no manifest, or one that is not an export's (named).
    """
    uri = storage.join(version, gremlin.MANIFEST_NAME)
    try:
        text = storage.read_text(uri)
    except FileNotFoundError as err:
        raise JobError(f"{uri}: no {gremlin.MANIFEST_NAME} (not an export folder)") from err
    except OSError as err:
        raise JobError(f"{uri}: cannot be read ({err})") from err
    try:
        manifest = json.loads(text)
        expected_counts(manifest)
        str(manifest["run_date"])
    except (ValueError, KeyError, TypeError) as err:
        raise JobError(f"{uri}: not an export manifest ({type(err).__name__}: {err})") from err
    return manifest, hashlib.sha256(text.encode("utf-8")).hexdigest()


def prefix(source: str, folder: str) -> str:
    return storage.join(source, folder) + "/"


def refuse_rollback(source: str, ref: gm.ExportRef, loaded: gm.ExportRef) -> None:
    """A backfill of an older day must not roll the graph back: the night applies removals too."""
    if ref.run_date < loaded.run_date:
        raise JobError(
            f"--source {source} is the export of {ref.run_date}, older than the one the graph holds "
            f"({loaded.run_date}, {loaded.export}): refusing to roll the graph back (--full loads it anyway)"
        )


def dry_run_requests(plan: NightPlan, settings: LoadSettings) -> dict[str, Any]:
    """The plan and the loader requests a night would send (a dry run prints them)."""
    return {
        "plan": plan.as_dict(),
        "vertices": loader_request(plan.vertices_source, settings) if plan.vertices_source else None,
        "edges": loader_request(
            plan.edges_source,
            settings,
            dependencies=[PLACEHOLDER_VERTEX_LOAD_ID] if plan.vertices_source else [],
        )
        if plan.edges_source
        else None,
    }


def require_targets(*, endpoint: str | None, iam_role_arn: str | None, region: str | None,
                    is_dry_run: bool) -> None:
    """Refuse a run without a loader role and region, or (unless a dry run) without an endpoint."""
    missing = [flag for flag, value in (("--iam-role-arn", iam_role_arn), ("--region", region)) if not value]
    if not is_dry_run and not endpoint:
        missing.insert(0, "--endpoint")
    if missing:
        raise JobError(f"missing {', '.join(missing)} (or {ENV_ENDPOINT}, {ENV_ROLE_ARN}, AWS_REGION)")


def run_night(
    plan: NightPlan,
    loader: NeptuneLoader,
    api: nd.DataApi,
    settings: LoadSettings,
    *,
    batch_size: int,
    loaded_uri: str,
) -> dict[str, Any]:
    """Load, clear and remove what the plan says (nothing when already loaded), check the counts, and
    only then name the export in the loaded marker; returns the loads, the changes and the counts."""
    ref = plan.export
    loading_uri = gm.loading_marker_uri(loaded_uri)
    loads: dict[str, Any] = {"vertices": None, "edges": None}
    changes: dict[str, int] = {}
    if not plan.is_loaded:
        gm.add_attempt(loading_uri, ref)
        loads = loader.load_export(plan.vertices_source, plan.edges_source, settings)
        changes = apply_changes(api, plan, batch_size)
    counts = check_counts(api, plan.expected)
    if not plan.is_loaded:
        gm.write_marker(loaded_uri, ref, counts=counts)
        storage.remove(loading_uri)
        LOG.info("%s now names %s", loaded_uri, ref.export)
    return {
        **loads,
        "changes": changes,
        "data_api_requests": api.requests,
        "data_api_retries": api.retries,
        "counts": counts,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Make the graph equal the export; returns the plan, the loads, the changes and the counts."""
    args = parse_args(argv)
    require_targets(
        endpoint=args.endpoint, iam_role_arn=args.iam_role_arn, region=args.region, is_dry_run=args.dry_run
    )
    source = args.source.rstrip("/")
    # The files of the export's current version (on S3, behind its _CURRENT pointer); the markers name
    # the export folder itself.
    version = current_version(source)
    manifest, manifest_sha256 = read_manifest(version)
    # The hash of the manifest read here, not of a second read that a concurrent publish could change.
    ref = gm.ExportRef(export=source, run_date=str(manifest["run_date"]), manifest_sha256=manifest_sha256)
    loaded_uri = args.loaded_marker or gm.loaded_marker_uri(source)
    loaded = gm.read_marker(loaded_uri)
    if loaded is not None and not args.full:
        refuse_rollback(source, ref, loaded)
    attempts = gm.read_attempts(gm.loading_marker_uri(loaded_uri))
    plan = plan_night(version, manifest, ref, loaded=loaded, attempts=attempts, is_full=args.full)
    settings = LoadSettings(
        iam_role_arn=args.iam_role_arn,
        region=args.region,
        parallelism=args.parallelism,
        mode=args.mode,
        fail_on_error=args.fail_on_error,
    )
    if args.dry_run:
        requests = {"endpoint": args.endpoint, **dry_run_requests(plan, settings)}
        sys.stdout.write(json.dumps(requests, indent=2) + "\n")  # the CLI's output, not a log line
        return {"dry_run": True, **requests}
    LOG.info(
        "night %s: %s (diff %s)",
        ref.run_date,
        "already loaded: checking only" if plan.is_loaded else "full load" if plan.is_full_load else "diff",
        plan.counts,
    )
    loader = NeptuneLoader(
        make_client(args.endpoint, args.region, max_attempts=args.max_attempts),
        timeout_s=args.timeout,
        poll_initial_s=args.poll_initial,
        poll_max_s=args.poll_max,
    )
    # The data API's retries are DataApi's own (ThrottlingException is an HTTP 500 there), so botocore
    # makes one attempt per request.
    pacing = nd.Pacing(
        rate=args.rate,
        max_retries=args.max_retries,
        backoff_initial_s=args.backoff_initial,
        backoff_max_s=args.backoff_max,
    )
    api = nd.DataApi(make_client(args.endpoint, args.region, max_attempts=1), pacing)
    night = run_night(plan, loader, api, settings, batch_size=args.batch_size, loaded_uri=loaded_uri)
    return {"dry_run": False, "endpoint": args.endpoint, "plan": plan.as_dict(), **night,
            "loaded_marker": loaded_uri}


if __name__ == "__main__":
    raise SystemExit(run(main))
