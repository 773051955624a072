"""Which Gremlin export the Neptune graph holds: the markers beside the dated exports.

``<gremlin root>/_LOADED.json`` names the export the graph equals (written by the loader only after a
load, its removals and the count check succeeded); ``<gremlin root>/_LOADING.json`` lists the exports
whose loads started since then and did not succeed (the graph may hold part of each); it is removed
with the success that writes ``_LOADED.json``. Each names the export folder,
its run date and the sha-256 of its ``manifest.json``, so a reader can tell whether the folder still
holds what was loaded. The export diffs tonight's CSVs against these; the loader checks them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import posixpath
from dataclasses import asdict, dataclass
from typing import Any

from jobs.common import storage
from jobs.common.cli import JobError
from schemas import gremlin


@dataclass(frozen=True)
class ExportRef:
    """One export as a marker names it."""

    export: str  # the export folder URI (no trailing slash)
    run_date: str
    manifest_sha256: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def is_same(self, other: ExportRef | None) -> bool:
        return other is not None and (self.export, self.manifest_sha256) == (
            other.export,
            other.manifest_sha256,
        )


def gremlin_root(export_uri: str) -> str:
    """The folder holding the dated exports (``<work>/style/gremlin`` for ``.../gremlin/dt=D``)."""
    return posixpath.dirname(export_uri.rstrip("/")) or "."


def loaded_marker_uri(export_uri: str) -> str:
    return storage.join(gremlin_root(export_uri), gremlin.LOADED_MARKER_NAME)


def loading_marker_uri(loaded_uri: str) -> str:
    """The in-progress marker beside a loaded marker."""
    return storage.join(posixpath.dirname(loaded_uri.rstrip("/")) or ".", gremlin.LOADING_MARKER_NAME)


def manifest_sha256(export_uri: str) -> str | None:
    """sha-256 of the export's ``manifest.json`` bytes; None when there is none."""
    uri = storage.join(storage.resolve(export_uri), gremlin.MANIFEST_NAME)  # on S3: the current version's
    if not storage.exists(uri):
        return None
    return hashlib.sha256(storage.read_text(uri).encode("utf-8")).hexdigest()


def export_ref(export_uri: str, run_date: str) -> ExportRef:
    """The reference to an export as it is now.

    Raises:
        JobError: the export has no manifest.
    """
    digest = manifest_sha256(export_uri)
    if digest is None:
        raise JobError(f"{storage.join(export_uri, gremlin.MANIFEST_NAME)}: no manifest")
    return ExportRef(export=export_uri.rstrip("/"), run_date=str(run_date), manifest_sha256=digest)


def read_marker(uri: str) -> ExportRef | None:
    """The export a marker names; None when there is no marker.

    Raises:
        JobError: a marker that is not the JSON this module writes (named).
    """
    if not storage.exists(uri):
        return None
    try:
        data = storage.read_json(uri)
        return ExportRef(
            export=str(data["export"]).rstrip("/"),
            run_date=str(data["run_date"]),
            manifest_sha256=str(data["manifest_sha256"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as err:  # OSError: a folder, unreadable
        raise JobError(f"{uri}: not a graph marker ({type(err).__name__}: {err})") from err


def write_marker(uri: str, ref: ExportRef, **extra: Any) -> None:
    """Write a marker (whole or not at all) naming ``ref``, with when and anything in ``extra``."""
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    storage.write_json(uri, {**ref.as_dict(), "written_at": stamp, **extra})


def read_attempts(uri: str) -> list[ExportRef]:
    """The exports an in-progress marker lists (oldest first); [] when there is none.

    Raises:
        JobError: a marker that is not the JSON this module writes (named).
    """
    if not storage.exists(uri):
        return []
    try:
        return [
            ExportRef(
                export=str(item["export"]).rstrip("/"),
                run_date=str(item["run_date"]),
                manifest_sha256=str(item["manifest_sha256"]),
            )
            for item in storage.read_json(uri)["attempts"]
        ]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise JobError(f"{uri}: not an in-progress marker ({type(err).__name__}: {err})") from err


def add_attempt(uri: str, ref: ExportRef) -> list[ExportRef]:
    """Add ``ref`` to the in-progress marker (once); returns every export it now lists."""
    attempts = read_attempts(uri)
    if not any(ref.is_same(item) for item in attempts):
        attempts.append(ref)
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    storage.write_json(uri, {"attempts": [item.as_dict() for item in attempts], "written_at": stamp})
    return attempts


def is_current(ref: ExportRef) -> bool:
    """True when the export a marker names is still there with the same manifest."""
    return manifest_sha256(ref.export) == ref.manifest_sha256
