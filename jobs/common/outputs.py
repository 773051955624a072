"""Which folders a job may write: the one check every job runs before it writes anything.

A job only ever replaces what it owns. Two kinds of output:

- an output *root* shared by the stages of one family (``ncf``: the preprocess job; ``style``: embed and
  similarity; ``sample``: the sample generator), under which each stage replaces only its own
  ``<dataset>/dt=<date>`` partitions; the root carries ``_STYLEGRAPH_OWNER`` naming its family;
- an output *folder* replaced whole (the Gremlin export, the HTML report), which carries
  ``_STYLEGRAPH_OWNER`` naming its stage from its first publish on (:func:`folder_marker`).

:func:`check_output` refuses, with a :class:`~jobs.common.cli.JobError` and before anything is
written, an ``--output`` that is a file, that holds another family's or stage's data (by its marker,
or by dataset names of another family in an unmarked folder), that sits inside another output's
dataset or replaced folder, or whose replaced folders overlap (equal, contain or sit inside) an input
or the reports folder. :func:`mark_root` marks an output root as the family's when a run publishes.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlparse

from pyarrow import fs as pafs

from jobs.common import storage
from jobs.common.cli import JobError

# The top-level datasets of each output root (the layout; ``rejects`` holds per-stage subfolders).
ROOT_DATASETS: dict[str, tuple[str, ...]] = {
    "ncf": ("train", "test", "rejects", "index"),
    "style": ("embeddings", "similarity", "rejects"),
    "sample": ("interactions", "catalog", "images", "sample_manifest.json"),
}
STAGE_ROOTS: dict[str, str] = {
    "preprocess": "ncf",
    "embed": "style",
    "similarity": "style",
    "sample": "sample",
}
WHOLE_FOLDER = "folder"


def folder_marker(stage: str) -> str:
    """The ``_STYLEGRAPH_OWNER`` text of a folder replaced whole by ``stage``."""
    return json.dumps({"owner": stage, "kind": WHOLE_FOLDER}) + "\n"


def _root_marker(root: str) -> str:
    return json.dumps({"owner": root, "kind": "root"}) + "\n"


def read_marker(uri: str) -> dict[str, Any] | None:
    """The owner marker of a folder (``owner``, ``kind``), or None when it has none."""
    fs, path = storage.filesystem(storage.join(uri, storage.OWNER_MARKER))
    try:
        with fs.open_input_stream(path) as stream:
            text = stream.read().decode("utf-8", errors="replace")
    except OSError:  # none there (or not a file)
        return None
    try:
        marker = json.loads(text)
    except ValueError:
        marker = None
    if not isinstance(marker, dict) or "owner" not in marker:
        return {"owner": text.strip() or "?", "kind": WHOLE_FOLDER}
    return marker


def normalized(uri: str) -> str:
    """A comparable form of a URI: ``s3://bucket/key`` (any s3 scheme), else the real local path."""
    if storage.is_remote(uri):
        parsed = urlparse(uri)
        return f"s3://{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/")
    return os.path.realpath(storage.local_path(uri))


def is_within(uri: str, folder: str) -> bool:
    """True when ``uri`` is ``folder`` or lies inside it."""
    a, b = normalized(uri), normalized(folder)
    return a == b or a.startswith(b.rstrip("/") + "/")


def overlaps(first: str, second: str) -> bool:
    """True when one URI equals the other or lies inside it."""
    return is_within(first, second) or is_within(second, first)


def _ancestors(uri: str) -> list[str]:
    """The folders above ``uri``, nearest first (up to the bucket or the filesystem root)."""
    out = []
    if storage.is_remote(uri):
        scheme, rest = uri.split("://", 1)
        parts = rest.rstrip("/").split("/")
        out = [f"{scheme}://{'/'.join(parts[:cut])}" for cut in range(len(parts) - 1, 0, -1)]
    else:
        path = storage.local_path(uri)
        while os.path.dirname(path) != path:
            path = os.path.dirname(path)
            out.append(path)
    return out


def _entries(uri: str) -> list[str]:
    fs, path = storage.filesystem(uri)
    return [info.base_name for info in fs.get_file_info(pafs.FileSelector(path))]


def _describe(marker: Mapping[str, Any]) -> str:
    if marker.get("kind") == WHOLE_FOLDER:
        return f"the {marker['owner']} output"
    return f"the {marker['owner']} output root"


def check_output(
    stage: str,
    output: str,
    *,
    inputs: Mapping[str, str | None] = {},  # noqa: B006 - read only
    replaces: Iterable[str] = (),
    report_dir: str | None = None,
) -> None:
    """Refuse an ``--output`` this run must not write (see the module docstring); writes nothing.

    Args:
        stage: the stage name; a stage of :data:`STAGE_ROOTS` writes an output root, any other one
            replaces the ``output`` folder whole.
        output: the ``--output`` URI.
        inputs: option name -> URI of everything the run reads (None entries are ignored).
        replaces: the folders a publish of this run replaces (an output root's partitions); the output
            folder itself for a stage that replaces it whole is added here.
        report_dir: the run-report root the run writes to.

    Raises:
        JobError: one line naming the output and why it is refused.
    """
    fs, path = storage.filesystem(output)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        raise JobError(f"--output {output} is a file, not a folder: refusing to replace it")
    root = STAGE_ROOTS.get(stage)
    replaced = [*replaces, *([output] if root is None else [])]
    for flag, uri in inputs.items():
        clashes = [folder for folder in replaced if uri and overlaps(folder, uri)]
        if clashes:
            raise JobError(f"--output {output} overlaps the input {flag} {uri}: refusing to replace it")
    _check_ancestors(output)
    if info.type == pafs.FileType.Directory:
        _check_existing_folder(stage, output, root)
    for folder in replaced:
        if report_dir and is_within(report_dir, folder):
            raise JobError(
                f"--report-dir {report_dir} lies in {folder}, which a publish replaces: "
                "choose a reports folder outside it"
            )


def _check_ancestors(output: str) -> None:
    """Refuse an output inside another output's dataset or inside a folder replaced whole."""
    for ancestor in _ancestors(output):
        marker = read_marker(ancestor)
        if marker is None:
            continue
        below = normalized(output)[len(normalized(ancestor)):].strip("/").split("/", 1)[0]
        if marker.get("kind") == WHOLE_FOLDER or below in ROOT_DATASETS.get(marker["owner"], ()):
            raise JobError(
                f"--output {output} lies inside {ancestor}, {_describe(marker)}: refusing to write there"
            )


def _check_existing_folder(stage: str, output: str, root: str | None) -> None:
    """Refuse an existing output folder that is not this stage's (a replaced folder) or its family's
    (an output root), by its marker or, unmarked, by what it holds."""
    marker = read_marker(output)
    if root is None:
        if marker is not None and marker.get("owner") != stage:
            raise JobError(f"--output {output} is {_describe(marker)}: {stage} does not replace it")
        if marker is None and _entries(output):
            raise JobError(
                f"--output {output} is a folder {stage} did not create (no {storage.OWNER_MARKER} "
                f"naming {stage}): refusing to replace it; choose an empty or new folder"
            )
    elif marker is not None and marker.get("owner") != root:
        raise JobError(f"--output {output} is {_describe(marker)}: {stage} writes to a {root} root")
    elif marker is None:
        others = sorted(
            name for name in _entries(output)
            if any(name in datasets for family, datasets in ROOT_DATASETS.items() if family != root)
            and name not in ROOT_DATASETS[root]
        )
        if others:
            raise JobError(
                f"--output {output} holds another job's data ({', '.join(others)}): "
                f"{stage} writes to a {root} root"
            )


def mark_root(stage: str, output: str) -> None:
    """Mark an output root as its family's, before the first publish into it (a folder replaced whole
    is marked by its publish: ``storage.publish(..., owner=folder_marker(stage))``)."""
    root = STAGE_ROOTS[stage]
    if read_marker(output) is None:
        storage.write_text(storage.join(output, storage.OWNER_MARKER), _root_marker(root))
