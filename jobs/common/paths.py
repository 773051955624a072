"""The partition path: ``<root>/<dataset>/dt=<run date>``, formatted here alone.

Pure string functions, no imports beyond the standard library: the pipeline definition (imported by the
Airflow environment, without pyarrow or pyspark) and :mod:`jobs.common.storage` both use them.
"""
from __future__ import annotations

import datetime as dt
from urllib.parse import urlparse

PARTITION_KEY = "dt"


def join(uri: str, *parts: str) -> str:
    """Join URI segments with ``/`` whatever the scheme (empty segments are left out)."""
    out = uri.rstrip("/")
    for part in parts:
        if part.strip("/"):
            out = f"{out}/{part.strip('/')}"
    return out


def partition_name(run_date: dt.date | str) -> str:
    """``dt=<run date>``: the name of one run date's partition folder."""
    return f"{PARTITION_KEY}={run_date}"


def partition_uri(root: str, dataset: str, run_date: dt.date | str) -> str:
    """``<root>/<dataset>/dt=<run date>``: one run date's partition of a dataset (``dataset`` may be a
    path such as ``rejects/embed``, or empty for a folder of partitions)."""
    return join(root, dataset, partition_name(run_date))


def report_uri(reports_root: str, stage: str, run_date: dt.date | str, suffix: str = "json") -> str:
    """``<reports root>/<stage>/dt=<run date>.<suffix>``: a stage's run report (quality results use
    ``quality.json``)."""
    return join(reports_root, stage, f"{partition_name(run_date)}.{suffix}")


def canonical_s3(uri: str) -> str:
    """One spelling of an S3 URI for comparing and keying: ``s3://bucket/key`` (any of s3, s3a, s3n),
    without a trailing slash."""
    parsed = urlparse(uri)
    return f"s3://{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/")
