"""Paths are URIs (a local path, ``file://`` or ``s3://``); this module owns the storage layout and
the publish.

Layout (formatted here and, for the partition and report paths, in :mod:`jobs.common.paths`, which
has no heavy imports so that the pipeline definition can use it too):

- a dataset partition: ``<root>/<dataset>/dt=<run date>`` (:func:`partition_uri`);
- a run's staging area: ``<root>/_staging/<stage>/<run id>/`` (:func:`start_staging`);
- run reports: ``<reports root>/<stage>/dt=<run date>.json`` (``jobs.common.report``), the reports
  root defaulting to ``<root>/_reports`` (:data:`REPORTS_DIR`);
- the owner marker ``_STYLEGRAPH_OWNER`` (:data:`OWNER_MARKER`, ``jobs.common.outputs``).

Names starting with ``_`` or ``.`` are hidden: Spark and :func:`list_files` skip them, so nothing set
aside there is ever read as data.

Publish (:func:`publish`) puts a staged folder in place so that a reader sees the old folder or the
new one, whole, at every instant, whatever kills the run:

- Locally, the staged and the final folder are swapped in one ``renameat2(RENAME_EXCHANGE)`` call (a
  plain rename when there is no final folder yet); the old version lands in the run's hidden staging
  folder and is deleted. Where the kernel has no exchange, the old folder is renamed aside into the
  staging folder with a journal first; the next run of the stage puts it back if the new one never
  arrived (:func:`start_staging`).
- On S3, where nothing renames, the new files are copied under a hidden version prefix
  ``<final>/_v-<run id>/`` and the small pointer object ``<final>/_CURRENT`` (JSON: the version and its
  file list) is replaced in one PUT. Readers resolve a folder through the pointer (:func:`resolve`,
  :func:`read_path`, :func:`list_files`), the version pinned per process (a folder read twice in one
  run is the same version both times); with a Glue database configured, the catalog partition is then
  pointed at the new version (:mod:`jobs.common.glue_catalog`). Versions replaced more than
  :data:`VERSION_GRACE_SECONDS` ago are deleted by a later publish of the same folder, never the
  current one nor the one the catalog partition names.

The filesystem layer is pyarrow's (``pyarrow.fs``), the same on a laptop and on EMR/Glue nodes.
``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` point S3 at a local endpoint (moto) in tests.
"""
from __future__ import annotations

import ctypes
import datetime as dt
import errno
import json
import logging
import os
import posixpath
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlparse

from pyarrow import fs as pafs

from jobs.common import glue_catalog
from jobs.common.cli import JobError
from jobs.common.paths import PARTITION_KEY, canonical_s3, join
from jobs.common.paths import partition_name as partition_name  # the one partition path, re-exported
from jobs.common.paths import partition_uri as partition_uri

LOG = logging.getLogger("stylegraph.storage")

S3_SCHEMES = ("s3", "s3a", "s3n")
STAGING_DIR = "_staging"
REPORTS_DIR = "_reports"
OWNER_MARKER = "_STYLEGRAPH_OWNER"
POINTER_NAME = "_CURRENT"
VERSION_PREFIX = "_v-"
RUN_FILE = "_RUN.json"
# A staging folder whose run is gone (same host, process ended) is removed by the next run of its stage
# at once; one from another host (a cluster node) when its run started more than this long ago.
STAGING_GRACE_SECONDS = 6 * 3600
# A replaced S3 version stays readable this long after the pointer moved on (for readers that resolved
# the pointer just before), then a later publish of the folder deletes it.
VERSION_GRACE_SECONDS = 3600


def _scheme(uri: str) -> str:
    return urlparse(uri).scheme.lower()


def is_remote(uri: str) -> bool:
    """True for object-store URIs (s3://, s3a://, s3n://)."""
    return _scheme(uri) in S3_SCHEMES


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
    """True if a file or folder exists at the URI (a published S3 folder through its pointer)."""
    fs, path = filesystem(resolve(uri))
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _is_hidden(rel: str) -> bool:
    return any(part.startswith((".", "_")) for part in rel.split("/"))


def list_files(uri: str, suffixes: Iterable[str] | None = None) -> list[str]:
    """Every file below a folder URI (recursively), as URIs, sorted; hidden and ``_`` files skipped.

    A folder published on S3 counts through its pointer: the current version's files only (as
    ``<folder>/_v-<id>/<file>`` URIs), never an older or a half-copied one.
    """
    uri = resolve(uri)
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    wanted = tuple(suffixes) if suffixes else None
    prefix = uri.rstrip("/")
    rels = [
        posixpath.relpath(info.path, path)
        for info in fs.get_file_info(pafs.FileSelector(path, recursive=True))
        if info.type == pafs.FileType.File
    ]
    pointed = [
        posixpath.dirname(rel) for rel in rels
        if posixpath.basename(rel) == POINTER_NAME and not _is_hidden(posixpath.dirname(rel))
    ]
    found = [rel for rel in rels if not _is_hidden(rel) and not any(rel.startswith(f"{d}/") for d in pointed)]
    for folder in pointed:  # files beside a pointer belong to an older layout: the pointer wins
        pointer = current_pointer(join(prefix, folder))
        if pointer is not None:
            version = f"{folder}/{VERSION_PREFIX}{pointer['version']}"
            found += [f"{version}/{rel}" for rel in pointer["files"] if not _is_hidden(rel)]
    return sorted(f"{prefix}/{rel}" for rel in found if not wanted or rel.endswith(wanted))


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
    return sum(parquet_file_rows(uri).values())


def parquet_file_rows(uri: str) -> dict[str, int]:
    """Rows of each Parquet file below ``uri`` by URI, from their footers (no data read)."""
    import pyarrow.parquet as pq

    fs, _ = filesystem(uri)
    rows = {}
    for file_uri in list_files(uri, suffixes=(".parquet",)):
        with fs.open_input_file(filesystem(file_uri)[1]) as handle:
            rows[file_uri] = pq.ParquetFile(handle).metadata.num_rows
    return rows


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


def compression_problem(uri: str) -> str | None:
    """Why a ``.gz``/``.bz2`` file cannot be decompressed to its end (truncated, corrupt), or None.

    Reads the whole file: for the error path of a job that failed reading, and small files (catalogs).
    """
    import bz2
    import gzip

    opener = {".gz": gzip.GzipFile, ".bz2": bz2.BZ2File}.get(posixpath.splitext(uri)[1].lower())
    if opener is None:
        return None
    fs, path = filesystem(resolve(uri))
    try:
        with fs.open_input_stream(path, compression=None) as raw, opener(fileobj=raw) as stream:
            while stream.read(1 << 20):
                pass
    except EOFError:
        return "truncated compressed file (it ends before its end-of-stream marker)"
    except (OSError, ValueError) as err:  # gzip.BadGzipFile, zlib.error, bz2's "Invalid data stream"
        return f"corrupt compressed file ({err})"
    return None


def read_text(uri: str) -> str:
    fs, path = filesystem(resolve(uri))
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


# ------------------------------------------------------------------------------------------ layout


def new_run_id() -> str:
    """A unique, time-ordered id for one run: ``<UTC start, YYYYmmddTHHMMSS>-<12 hex digits>``."""
    return f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}"


def staging_uri(output_uri: str, stage: str, run_id: str) -> str:
    """Where a run of a stage writes before it publishes: ``<output>/_staging/<stage>/<run id>``."""
    return join(output_uri, STAGING_DIR, stage, run_id)


# -------------------------------------------------------------------------- fault injection (tests)

# Called with the name of each publish step just before it runs; a test sets it to raise at one of
# them (a simulated kill) and checks what readers see. None in production.
_fault_hook: Callable[[str], None] | None = None


def set_fault_hook(hook: Callable[[str], None] | None) -> Callable[[str], None] | None:
    """Install ``hook`` (called with each publish step's name before the step); returns the previous one."""
    global _fault_hook
    previous, _fault_hook = _fault_hook, hook
    return previous


def _step(name: str) -> None:
    if _fault_hook is not None:
        _fault_hook(name)


# ---------------------------------------------------------------------------------- staging runs

# Runs of this process still in progress (a run of this host whose process is gone is dead at once).
_LIVE_RUNS: set[str] = set()


def start_staging(output_uri: str, stage: str) -> tuple[str, str]:
    """Begin a run of ``stage`` under ``output_uri``: clean what dead runs of the stage left, then
    create this run's staging folder with a ``_RUN.json`` naming its owner (host, process, start).

    A run is dead when its host is this one and its process is gone (or, for this very process, it is
    no longer in progress), or when it started more than :data:`STAGING_GRACE_SECONDS` ago. Before
    its folder is removed, any folder a dead run had set aside while publishing without an atomic
    exchange is put back where its replacement never arrived.

    Returns:
        (run id, staging folder URI).
    """
    recover_staging(output_uri, stage)
    run_id = new_run_id()
    staged = staging_uri(output_uri, stage, run_id)
    write_json(join(staged, RUN_FILE), {
        "host": socket.gethostname(), "pid": os.getpid(), "run_id": run_id, "started_at": time.time(),
    })
    _LIVE_RUNS.add(run_id)
    return run_id, staged


def finish_staging(staged_uri: str) -> None:
    """Remove a run's staging folder (whatever it holds: set-aside old versions included) and the
    empty ``_staging/<stage>`` and ``_staging`` folders above it."""
    remove(staged_uri)
    _LIVE_RUNS.discard(posixpath.basename(staged_uri.rstrip("/")))
    stage_dir = posixpath.dirname(staged_uri.rstrip("/"))
    for folder in (stage_dir, posixpath.dirname(stage_dir)):
        fs, path = filesystem(folder)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory and not fs.get_file_info(pafs.FileSelector(path)):
            fs.delete_dir(path)


def _is_dead(owner: dict[str, Any], now: float) -> bool:
    if owner.get("host") == socket.gethostname():
        pid = int(owner.get("pid", 0))
        if pid == os.getpid():
            return owner.get("run_id") not in _LIVE_RUNS
        try:
            if pid > 0:
                os.kill(pid, 0)  # signal 0: is it there?
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, someone else's
            pass
    return now - float(owner["started_at"]) > STAGING_GRACE_SECONDS


def _newest_write(fs: pafs.FileSystem, path: str, info: pafs.FileInfo) -> float | None:
    """When anything below a folder was last written (its newest file; the folder's own time when it
    holds no file and has one), or None when nothing says (an S3 prefix has no time of its own)."""
    times = [item.mtime.timestamp() for item in _files_under(fs, path) if item.mtime is not None]
    if not times and info.mtime is not None:
        times.append(info.mtime.timestamp())
    return max(times) if times else None


def recover_staging(output_uri: str, stage: str, *, now: float | None = None) -> list[str]:
    """Clean the staging folders of dead runs of ``stage`` (see :func:`start_staging`); returns them.

    A run folder without ``_RUN.json`` (left by an older version of the suite) is dead once nothing in
    it was written for :data:`STAGING_GRACE_SECONDS`."""
    now = time.time() if now is None else now
    stage_dir = join(output_uri, STAGING_DIR, stage)
    fs, path = filesystem(stage_dir)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    cleaned = []
    for info in fs.get_file_info(pafs.FileSelector(path)):
        if info.type != pafs.FileType.Directory:
            continue
        run_uri = join(stage_dir, info.base_name)
        try:
            owner = read_json(join(run_uri, RUN_FILE))
        except (OSError, ValueError):
            owner = None
        if isinstance(owner, dict) and "started_at" in owner:
            if not _is_dead(owner, now):
                continue
        else:
            written = _newest_write(fs, info.path, info)
            if written is not None and now - written <= STAGING_GRACE_SECONDS:
                continue
            LOG.warning(
                "%s has no readable %s (an older version's run) and nothing in it was written for %d s: "
                "its run is dead", run_uri, RUN_FILE, STAGING_GRACE_SECONDS,
            )
        _restore_set_aside(run_uri)
        LOG.warning("removing the staging folder of a dead run: %s", run_uri)
        remove(run_uri)
        cleaned.append(run_uri)
    return cleaned


# ------------------------------------------------------------------------------------------ publish


def publish(staged_uri: str, final_uri: str, *, owner: str | None = None) -> None:
    """Put a staged folder in place of ``final_uri``; a reader sees the old or the new folder, whole.

    Args:
        staged_uri: a folder under the run's staging area (same filesystem and bucket as the final).
        final_uri: the folder to replace (created when missing).
        owner: for an output folder replaced whole (the export, the report): the stage name written
            to ``<final>/_STYLEGRAPH_OWNER``, by which a later run knows the folder is its own.

    Raises:
        JobError: when the staged folder does not exist (nothing to publish).
    """
    fs, staged = filesystem(staged_uri)
    _, final = filesystem(final_uri)
    if fs.get_file_info(staged).type != pafs.FileType.Directory:
        raise JobError(f"nothing staged at {staged_uri}")
    if isinstance(fs, pafs.LocalFileSystem):
        if owner:
            write_text(join(staged_uri, OWNER_MARKER), owner + "\n")
        _publish_local(staged, final)
    else:
        if owner:
            write_text(join(final_uri, OWNER_MARKER), owner + "\n")
        _publish_versioned(fs, staged, final, final_uri)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
try:
    _renameat2: Any = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
except (AttributeError, OSError):
    _renameat2 = None


def _exchange(first: str, second: str) -> bool:
    """Swap two paths atomically (``renameat2(RENAME_EXCHANGE)``); False where the system cannot."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), first)


_ASIDE_SUFFIX = ".replaced"


_LEGACY_ASIDE = ".__replaced-"


def _recover_legacy_aside(final: str) -> None:
    """An older publish moved the old folder aside as ``<final>.__replaced-<id>``, a name readers see:
    put it back when ``final`` is missing, else delete it."""
    parent, name = os.path.split(final)
    leftovers = sorted(
        os.path.join(parent, entry) for entry in os.listdir(parent) if entry.startswith(name + _LEGACY_ASIDE)
    )
    for aside in leftovers:
        if not os.path.lexists(final):
            LOG.warning("putting back %s from %s, left by a run that died while publishing", final, aside)
            os.rename(aside, final)
        else:
            LOG.warning("removing %s, left by a run that died while publishing", aside)
            _delete_local(aside)


def _publish_local(staged: str, final: str) -> None:
    os.makedirs(os.path.dirname(final), exist_ok=True)
    _recover_legacy_aside(final)
    _step("local:before-swap")
    if not os.path.lexists(final):
        os.rename(staged, final)
        _step("local:after-swap")
        return
    if _exchange(staged, final):
        # The old version now sits at the staged path, inside the run's hidden staging folder.
        _step("local:after-swap")
        _delete_local(staged)
        return
    # No atomic exchange: the old folder goes aside (journalled) into the staging folder, the new one
    # in; a kill in between leaves no folder at ``final``, and the next run of the stage puts it back.
    aside = staged + _ASIDE_SUFFIX
    write_json(aside + ".json", {"final": final})
    _step("local:before-set-aside")
    os.rename(final, aside)
    _step("local:set-aside")
    os.rename(staged, final)
    _step("local:after-swap")
    _delete_local(aside)
    os.remove(aside + ".json")


def _delete_local(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _restore_set_aside(run_uri: str) -> None:
    """Put back each folder a dead run set aside whose replacement never arrived."""
    if is_remote(run_uri):
        return
    root = local_path(run_uri)
    for dirpath, _, names in os.walk(root):
        for name in names:
            if not name.endswith(_ASIDE_SUFFIX + ".json"):
                continue
            journal = os.path.join(dirpath, name)
            aside = journal[: -len(".json")]
            try:
                with open(journal, encoding="utf-8") as handle:
                    final = json.load(handle)["final"]
            except (OSError, ValueError, KeyError):
                continue
            if os.path.isdir(aside) and not os.path.lexists(final):
                LOG.warning("putting back %s, set aside by a run that died while publishing", final)
                os.rename(aside, final)


# ----------------------------------------------------------------------------- S3 versions and pointer


def read_pointer(folder_uri: str) -> dict[str, Any] | None:
    """The ``_CURRENT`` pointer of a folder published on S3 (``version``, ``files``, ...), or None."""
    if not is_remote(folder_uri):
        return None
    fs, path = filesystem(join(folder_uri, POINTER_NAME))
    try:
        with fs.open_input_stream(path) as stream:
            return json.loads(stream.read().decode("utf-8"))
    except FileNotFoundError:
        return None
    except OSError as err:  # S3 answers 403 for a missing key to a role without s3:ListBucket
        raise JobError(
            f"cannot read {join(folder_uri, POINTER_NAME)}: {err} (readers need s3:GetObject on the "
            "datasets and s3:ListBucket on the bucket)"
        ) from err


# The pointer each published folder had when this process first resolved it (keys: ``s3://`` URIs):
# every later read in the process gets the same version, whatever another run publishes meanwhile. A
# publish by this process re-pins the folder to its own new version.
_READ_PINS: dict[str, dict[str, Any]] = {}


def current_pointer(folder_uri: str) -> dict[str, Any] | None:
    """The pointer a reader in this process uses for a published folder: the one it had when the
    process first resolved the folder (or last published it itself), else :func:`read_pointer`."""
    if not is_remote(folder_uri):
        return None
    key = canonical_s3(folder_uri)
    if key not in _READ_PINS:
        pointer = read_pointer(folder_uri)
        if pointer is None:
            return None
        _READ_PINS[key] = pointer
    return _READ_PINS[key]


def forget_read_pins() -> None:
    """Drop this process's pinned versions: the next resolve of each folder reads its pointer again."""
    _READ_PINS.clear()


def resolve(uri: str) -> str:
    """What a reader should open for ``uri``: on S3, the current version of the published folder that
    holds it (``<folder>/_v-<id>/<rest>``, the nearest ``_CURRENT`` at ``uri`` or above); else ``uri``.
    A hidden path (a version, staging, a pointer or marker) is returned as it is.

    The version is pinned per process (:func:`current_pointer`): a folder read twice in one run gives
    the same version both times, even when another run publishes it in between."""
    if not is_remote(uri):
        return uri
    scheme, rest = uri.split("://", 1)
    parts = rest.rstrip("/").split("/")
    for cut in range(len(parts), 1, -1):  # never the bucket itself
        if parts[cut - 1].startswith((".", "_")):
            return uri  # a version already, or what lives beside versions (pointer, marker, staging)
        folder = f"{scheme}://{'/'.join(parts[:cut])}"
        pointer = current_pointer(folder)
        if pointer is not None:
            return join(folder, f"{VERSION_PREFIX}{pointer['version']}", *parts[cut:])
    return uri


def read_path(uri: str) -> str:
    """The path to hand Spark (or petastorm) to read a published folder: :func:`spark_path` of
    :func:`resolve`."""
    return spark_path(resolve(uri))


def _files_under(fs: pafs.FileSystem, path: str) -> list[pafs.FileInfo]:
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    return [
        info for info in fs.get_file_info(pafs.FileSelector(path, recursive=True))
        if info.type == pafs.FileType.File
    ]


def _publish_versioned(fs: pafs.FileSystem, staged: str, final: str, final_uri: str) -> None:
    version = new_run_id()
    rels = sorted(posixpath.relpath(info.path, staged) for info in _files_under(fs, staged))
    # Everything a local publish would move in, but a task's unfinished ``.``-temporaries: ``_`` files
    # are the dataset's own metadata (e.g. the embed job's configuration), hidden from readers.
    rels = [rel for rel in rels if not any(part.startswith(".") for part in rel.split("/"))]
    for rel in rels:
        _step("s3:copy")
        fs.copy_file(posixpath.join(staged, rel), posixpath.join(final, f"{VERSION_PREFIX}{version}", rel))
    previous = read_pointer(final_uri)
    now = time.time()
    present = set()
    for info in _files_under(fs, final):
        rel = posixpath.relpath(info.path, final)
        present.add("" if not _is_hidden(rel) else rel.split("/", 1)[0])
    retired = [item for item in (previous or {}).get("retired", []) if _version_dir(item) in present]
    if previous is not None:
        retired.append({"version": previous["version"], "retired_at": now})
    elif "" in present:
        retired.append({"version": "", "retired_at": now})  # the older layout's visible files
    pointer = {"version": version, "files": rels, "published_at": now, "retired": retired}
    _step("s3:before-pointer")
    with fs.open_output_stream(posixpath.join(final, POINTER_NAME)) as stream:  # one PUT: the switch
        stream.write(json.dumps(pointer, indent=1, sort_keys=True).encode("utf-8"))
    _READ_PINS[canonical_s3(final_uri)] = pointer  # this process reads what it published
    _step("s3:after-pointer")
    # Readers through the Glue Data Catalog: the partition's location follows the pointer.
    glue_catalog.register_partition(final_uri, join(final_uri, f"{VERSION_PREFIX}{version}"))
    fs.delete_dir(staged)
    _step("s3:before-cleanup")
    clean_versions(final_uri)


def _version_dir(item: dict[str, Any]) -> str:
    return f"{VERSION_PREFIX}{item['version']}" if item["version"] else ""


def clean_versions(folder_uri: str, *, now: float | None = None) -> list[str]:
    """Delete what a published S3 folder no longer needs: versions replaced more than
    :data:`VERSION_GRACE_SECONDS` ago, and versions no pointer ever named (a publish killed before its
    pointer) whose newest file is older than that. Never the current version, nor the version the Glue
    Data Catalog partition of the folder points at (``jobs.common.glue_catalog``). Returns what went."""
    pointer = read_pointer(folder_uri)
    if pointer is None:
        return []
    registered = glue_catalog.registered_location(folder_uri)
    in_catalog = None  # the version (or "", the older layout's files) the catalog partition points at
    if registered == canonical_s3(folder_uri):
        in_catalog = ""
    elif registered and posixpath.dirname(registered) == canonical_s3(folder_uri):
        in_catalog = posixpath.basename(registered)
    now = time.time() if now is None else now
    fs, final = filesystem(folder_uri)
    retired_at = {_version_dir(item): float(item["retired_at"]) for item in pointer.get("retired", [])}
    newest: dict[str, float] = {}
    files: dict[str, list[str]] = {}
    for info in _files_under(fs, final):
        rel = posixpath.relpath(info.path, final)
        top = rel.split("/", 1)[0]
        if not (top.startswith(VERSION_PREFIX) and "/" in rel):
            if _is_hidden(rel):
                continue  # the pointer, the owner marker, staging: never a version
            top = ""  # a visible file of the older layout
        files.setdefault(top, []).append(info.path)
        newest[top] = max(newest.get(top, 0.0), info.mtime.timestamp() if info.mtime else now)
    current = f"{VERSION_PREFIX}{pointer['version']}"
    removed = []
    for top, paths in files.items():
        if top in (current, in_catalog):
            continue
        since = retired_at.get(top, newest[top])
        if now - since <= VERSION_GRACE_SECONDS:
            continue
        for path in paths:
            fs.delete_file(path)
        removed.append(join(folder_uri, top) if top else folder_uri)
    return removed


def partition_dates(dataset_uri: str) -> list[str]:
    """The run dates of the ``dt=YYYY-MM-DD`` folders directly below a dataset folder, sorted; folders
    whose name is not exactly that (a publish's set-aside copy, a stray name) are not partitions."""
    fs, path = filesystem(dataset_uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    dates = []
    for info in fs.get_file_info(pafs.FileSelector(path)):
        name = posixpath.basename(info.path)
        key, _, value = name.partition("=")
        if info.type != pafs.FileType.Directory or key != PARTITION_KEY:
            continue
        try:
            day = dt.date.fromisoformat(value)
        except ValueError:
            continue
        if day.isoformat() == value:
            dates.append(value)
    return sorted(dates)


def latest_partition(dataset_uri: str, on_or_before: dt.date | str) -> str | None:
    """The URI of the latest ``dt=`` partition of a dataset dated ``on_or_before`` or earlier (the run's
    own date on a rerun), or None when there is none."""
    earlier = [day for day in partition_dates(dataset_uri) if day <= str(on_or_before)]
    return join(dataset_uri, f"{PARTITION_KEY}={earlier[-1]}") if earlier else None
