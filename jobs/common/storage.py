"""Paths are URIs (a local path, ``file://`` or ``s3://``); output is staged, then published.

Every job writes its output under ``<output>/_staging/<stage>/<run id>/`` first, checks it, and only
then calls :func:`publish` to swap each staged folder into its final place. On a local or HDFS-like
filesystem the swap is a rename of the old folder aside, a rename of the new one into place, and the
removal of the old one: a failed run never leaves a half-written output where readers look. On S3,
where nothing renames, the new objects are copied over and the old ones not overwritten are deleted
afterwards; readers see either the old or the new file set for each key, never a partial object.

The filesystem layer is pyarrow's (``pyarrow.fs``), the same on a laptop and on EMR/Glue nodes.
``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` point S3 at a local endpoint (moto) in tests.
"""
from __future__ import annotations

import json
import os
import posixpath
import uuid
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlparse

from pyarrow import fs as pafs

from jobs.common.cli import JobError

S3_SCHEMES = ("s3", "s3a", "s3n")


def _scheme(uri: str) -> str:
    return urlparse(uri).scheme.lower()


def is_remote(uri: str) -> bool:
    """True for object-store URIs (s3://, s3a://, s3n://)."""
    return _scheme(uri) in S3_SCHEMES


def join(uri: str, *parts: str) -> str:
    """Join URI segments with ``/`` whatever the scheme."""
    out = uri.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def spark_path(uri: str) -> str:
    """The path Spark should read or write: a local path becomes an absolute ``file://`` URI.

    On a cluster a bare path would mean HDFS; this suite's bare paths always mean local files.
    """
    scheme = _scheme(uri)
    if scheme in S3_SCHEMES:
        return "s3://" + uri.split("://", 1)[1] if scheme != "s3" else uri
    if scheme == "file":
        return uri
    if scheme:
        raise JobError(f"unsupported URI scheme {scheme!r} in {uri!r}: use a local path, file:// or s3://")
    return "file://" + os.path.abspath(uri)


def local_path(uri: str) -> str:
    """The local filesystem path of a local path or ``file://`` URI."""
    if _scheme(uri) == "file":
        return urlparse(uri).path
    if _scheme(uri):
        raise JobError(f"not a local path: {uri!r}")
    return os.path.abspath(uri)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and the path inside it for a URI."""
    scheme = _scheme(uri)
    if scheme in S3_SCHEMES:
        parsed = urlparse(uri)
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        kwargs: dict[str, Any] = {}
        if endpoint:
            endpoint_url = urlparse(endpoint)
            kwargs["endpoint_override"] = endpoint_url.netloc or endpoint
            kwargs["scheme"] = endpoint_url.scheme or "http"
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kwargs["region"] = region
        return pafs.S3FileSystem(**kwargs), f"{parsed.netloc}{parsed.path}".rstrip("/")
    return pafs.LocalFileSystem(), local_path(uri)


def exists(uri: str) -> bool:
    """True if a file or folder exists at the URI."""
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def list_files(uri: str, suffixes: Iterable[str] | None = None) -> list[str]:
    """Every file below a folder URI (recursively), as URIs, sorted; hidden and ``_`` files skipped."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    wanted = tuple(suffixes) if suffixes else None
    prefix = uri.rstrip("/")
    out = []
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
        if info.type != pafs.FileType.File:
            continue
        rel = posixpath.relpath(info.path, path)
        if any(part.startswith((".", "_")) for part in rel.split("/")):
            continue
        if wanted and not rel.endswith(wanted):
            continue
        out.append(f"{prefix}/{rel}")
    return sorted(out)


def all_files(uri: str) -> list[str]:
    """Every file below a folder URI (or the file itself), hidden and ``_`` files included, sorted."""
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return []
    if info.type == pafs.FileType.File:
        return [uri]
    prefix = uri.rstrip("/")
    return sorted(
        f"{prefix}/{posixpath.relpath(item.path, path)}"
        for item in fs.get_file_info(pafs.FileSelector(path, recursive=True))
        if item.type == pafs.FileType.File
    )


def read_parquet(uri: str, columns: list[str] | None = None) -> Any:
    """Every Parquet file below ``uri`` (as ``list_files`` finds them), concatenated into one
    ``pyarrow.Table`` on this process: for small datasets (a job's own check results, rejects).
    Raises FileNotFoundError when there is none."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, _ = filesystem(uri)
    tables = [
        pq.read_table(filesystem(file_uri)[1], filesystem=fs, columns=columns)
        for file_uri in list_files(uri, suffixes=(".parquet",))
    ]
    if not tables:
        raise FileNotFoundError(f"no Parquet files under {uri}")
    return pa.concat_tables(tables, promote=True)


def parquet_rows(uri: str) -> int:
    """Rows in every Parquet file below ``uri``, from their footers (no data read); 0 when none."""
    import pyarrow.parquet as pq

    fs, _ = filesystem(uri)
    total = 0
    for file_uri in list_files(uri, suffixes=(".parquet",)):
        with fs.open_input_file(filesystem(file_uri)[1]) as handle:
            total += pq.ParquetFile(handle).metadata.num_rows
    return total


class AtomicFile:
    """A file written by a task that appears whole or not at all under its final name.

    Locally it is written under a hidden temporary name in the same folder and renamed by
    :meth:`commit`; on an object store (S3) the object appears when its upload completes, at
    :meth:`commit`. Task outputs use deterministic names, so a retried or speculative attempt replaces
    the file whole with the same bytes. ``stream`` is the pyarrow output stream (no compression).
    """

    def __init__(self, uri: str) -> None:
        self.fs, self.path = filesystem(uri)
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)
        self.name = posixpath.basename(self.path)
        self.target = self.path
        if self.is_local:
            folder = posixpath.dirname(self.path)
            self.fs.create_dir(folder, recursive=True)
            self.target = posixpath.join(folder, f".{self.name}.{uuid.uuid4().hex}.tmp")
        self.stream = self.fs.open_output_stream(self.target, compression=None)

    def commit(self) -> None:
        """Finish the file and put it in place."""
        self.stream.close()
        if self.is_local:
            self.fs.move(self.target, self.path)

    def abort(self) -> None:
        """Drop a file that will not be finished: its temporary name locally; on an object store,
        closing completes the upload, so the object is deleted again (a retry writes it whole)."""
        try:
            self.stream.close()
        finally:
            self.fs.delete_file(self.target)


def write_parquet(table: Any, uri: str) -> None:
    """A pyarrow table as one Parquet file at ``uri``, put in place whole (:class:`AtomicFile`)."""
    import pyarrow.parquet as pq

    output = AtomicFile(uri)
    try:
        pq.write_table(table, output.stream)
    except BaseException:
        output.abort()
        raise
    output.commit()


def remove(uri: str) -> None:
    """Delete a file or folder if it exists."""
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


def read_text(uri: str) -> str:
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as stream:
        return stream.read().decode("utf-8")


def write_text(uri: str, text: str) -> None:
    """Write a small text file so that readers never see half of it (temp file, then rename)."""
    fs, path = filesystem(uri)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with fs.open_output_stream(tmp) as stream:
            stream.write(text.encode("utf-8"))
        fs.move(tmp, path)
    else:  # an S3 PUT is atomic per object
        with fs.open_output_stream(path) as stream:
            stream.write(text.encode("utf-8"))


def read_json(uri: str) -> Any:
    return json.loads(read_text(uri))


def write_json(uri: str, obj: Any) -> None:
    write_text(uri, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def new_run_id() -> str:
    """A unique id for one run's staging area."""
    return uuid.uuid4().hex[:12]


def staging_uri(output_uri: str, stage: str, run_id: str) -> str:
    """Where a run of a stage writes before it publishes."""
    return join(output_uri, "_staging", stage, run_id)


def publish(staged_uri: str, final_uri: str) -> None:
    """Swap a staged folder into its final place, replacing what was there.

    Raises:
        JobError: when the staged folder does not exist (nothing to publish).
    """
    fs, staged = filesystem(staged_uri)
    _, final = filesystem(final_uri)
    if fs.get_file_info(staged).type != pafs.FileType.Directory:
        raise JobError(f"nothing staged at {staged_uri}")
    if isinstance(fs, pafs.LocalFileSystem):
        _publish_by_rename(fs, staged, final)
    else:
        _publish_by_copy(fs, staged, final)


def _publish_by_rename(fs: pafs.FileSystem, staged: str, final: str) -> None:
    fs.create_dir(posixpath.dirname(final), recursive=True)
    had_old = fs.get_file_info(final).type != pafs.FileType.NotFound
    aside = f"{final}.__replaced-{uuid.uuid4().hex[:8]}"
    if had_old:
        fs.move(final, aside)
    try:
        fs.move(staged, final)
    except Exception:
        if had_old:
            fs.move(aside, final)
        raise
    if had_old:
        fs.delete_dir(aside)


def _publish_by_copy(fs: pafs.FileSystem, staged: str, final: str) -> None:
    new_files = [
        info.path
        for info in fs.get_file_info(pafs.FileSelector(staged, recursive=True))
        if info.type == pafs.FileType.File
    ]
    old_files = set()
    if fs.get_file_info(final).type != pafs.FileType.NotFound:
        old_files = {
            info.path
            for info in fs.get_file_info(pafs.FileSelector(final, recursive=True))
            if info.type == pafs.FileType.File
        }
    written = set()
    for src in new_files:
        dst = posixpath.join(final, posixpath.relpath(src, staged))
        fs.copy_file(src, dst)
        written.add(dst)
    for stale in sorted(old_files - written):
        fs.delete_file(stale)
    fs.delete_dir(staged)
