"""What the EMR and Glue CLIs share: an AWS session that is checked first, the bucket check, uploads.

Every failure a person can fix (no region, no credentials, a bucket that does not exist, access denied)
becomes a :class:`~jobs.common.cli.JobError` whose message names the resource, before anything is created.
``AWS_ENDPOINT_URL`` (honoured by boto3 itself) points every client at a local endpoint in tests.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
)

from jobs.common.cli import JobError

LOG = logging.getLogger("stylegraph.aws")

MISSING_BUCKET_CODES = {"404", "NoSuchBucket", "NotFound"}
DENIED_CODES = {"403", "AccessDenied", "Forbidden"}


def checked_session(region: str | None = None) -> boto3.session.Session:
    """A boto3 session with a region and credentials, or a JobError saying which is missing."""
    # botocore reads AWS_DEFAULT_REGION and profiles; AWS_REGION is the name the SDKs share (and pyarrow's).
    session = boto3.session.Session(region_name=region or os.environ.get("AWS_REGION") or None)
    if not session.region_name:
        raise JobError(
            "no AWS region: pass --region or set AWS_REGION (or AWS_DEFAULT_REGION, or a profile's region)"
        )
    try:
        credentials = session.get_credentials()
    except BotoCoreError as err:
        raise JobError(f"AWS credentials could not be loaded: {err}") from None
    if credentials is None:
        raise JobError(
            "no AWS credentials: set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
            "or run where an instance or task role is available"
        )
    return session


@contextmanager
def unreachable_endpoint_is_a_job_error() -> Iterator[None]:
    """An AWS endpoint that cannot be reached (no network, a wrong ``AWS_ENDPOINT_URL``) becomes one
    JobError line naming it, not a traceback."""
    try:
        yield
    except (EndpointConnectionError, ConnectTimeoutError) as err:
        endpoint = err.kwargs.get("endpoint_url", "?")
        raise JobError(f"cannot reach the AWS endpoint {endpoint}: check the network and region") from None


def error_text(err: ClientError) -> str:
    """``Code: message`` of a botocore ClientError."""
    error = err.response.get("Error", {})
    return f"{error.get('Code', 'error')}: {error.get('Message', str(err))}"


def check_bucket(s3: Any, bucket: str) -> None:
    """Raise a JobError naming the bucket when it does not exist or cannot be reached."""
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as err:
        code = str(err.response.get("Error", {}).get("Code", ""))
        if code in MISSING_BUCKET_CODES:
            raise JobError(
                f"S3 bucket {bucket!r} does not exist (create it, or pass another --bucket)"
            ) from None
        if code in DENIED_CODES:
            raise JobError(f"access denied to S3 bucket {bucket!r}: check the credentials' policy") from None
        raise JobError(f"S3 bucket {bucket!r}: {error_text(err)}") from None
    except NoCredentialsError:
        raise JobError("no AWS credentials for S3") from None


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def _size_in_s3(s3: Any, bucket: str, key: str) -> int | None:
    try:
        return int(s3.head_object(Bucket=bucket, Key=key)["ContentLength"])
    except ClientError:
        return None


def upload_tree(
    s3: Any,
    local_dir: str | os.PathLike[str],
    bucket: str,
    prefix: str,
    *,
    exclude: tuple[str, ...] = (),
    skip_existing: bool = False,
) -> dict[str, str]:
    """Upload every file below ``local_dir`` to ``s3://bucket/prefix/<relative path>``.

    Args:
        exclude: relative-path prefixes (``wheelhouse/``) not to upload.
        skip_existing: leave an object that is already there with the same size (content-named
            folders such as the wheelhouse).

    Returns:
        relative path -> S3 URI, for every file uploaded or already there.
    """
    root = Path(local_dir)
    if not root.is_dir():
        raise JobError(f"no build artifacts at {root}: run `make dist` first")
    uploaded: dict[str, str] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        if relative.startswith(exclude):
            continue
        key = f"{prefix.strip('/')}/{relative}"
        if skip_existing and _size_in_s3(s3, bucket, key) == path.stat().st_size:
            uploaded[relative] = s3_uri(bucket, key)
            continue
        try:
            s3.upload_file(str(path), bucket, key)
        except ClientError as err:
            raise JobError(f"upload of {path} to {s3_uri(bucket, key)} failed: {error_text(err)}") from None
        uploaded[relative] = s3_uri(bucket, key)
    LOG.info("uploaded %d artifacts to %s", len(uploaded), s3_uri(bucket, prefix.strip("/")))
    return uploaded


WHEELHOUSE_DIR = "wheelhouse"


def upload_wheelhouse(
    s3: Any, dist: str | os.PathLike[str], bucket: str, prefix: str, manifest: Mapping[str, Any]
) -> str:
    """Upload ``dist/wheelhouse/`` to ``<prefix>/wheelhouse/<digest>/`` once; returns that folder's URI.

    Raises:
        JobError: a node kind without wheels (``make dist`` without ``--wheelhouse``).
    """
    local = Path(dist) / WHEELHOUSE_DIR
    kinds = sorted(p for p in local.iterdir() if p.is_dir()) if local.is_dir() else []
    empty = [kind.name for kind in kinds if not any(kind.glob("*.whl"))]
    if not kinds or empty:
        raise JobError(
            f"{local} has no wheels for {', '.join(empty) or 'any node kind'}: EMR nodes install from it "
            "(they have no internet access); run `make dist`"
        )
    target = f"{prefix.strip('/')}/{WHEELHOUSE_DIR}/{manifest['wheelhouse']}"
    upload_tree(s3, local, bucket, target, skip_existing=True)
    return s3_uri(bucket, target)


def artifacts_prefix(prefix: str, manifest: Mapping[str, Any]) -> str:
    """``<prefix>/artifacts/<zip sha256[:12]>``: each build of the code gets its own S3 folder."""
    digest = manifest["artifacts"]["stylegraph.zip"]["sha256"][:12]
    return f"{prefix.strip('/')}/artifacts/{digest}"
