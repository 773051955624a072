"""Compare the outputs of two pipeline runs dataset by dataset: the same rows, whatever the files.

    python -m bench.compare_runs /tmp/before /tmp/after

Every Parquet dataset (a folder of ``.parquet`` files) is compared as its sorted rows; every other file
by its bytes (``.gz``/``.bz2`` decompressed first); JSON (reports, manifests) as data, leaving out what
differs from run to run by nature (timings, run ids, timestamps, the absolute workdir). Hidden
(``_``/``.``) files and folders are skipped except the reports. Exits 1 and lists every difference.
"""
from __future__ import annotations

import argparse
import bz2
import gzip
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import pyarrow.parquet as pq

# Keys whose values differ between two runs of the same inputs: wall times, ids, clocks.
VOLATILE_KEYS = {
    "seconds", "finished_at", "started_at", "published_at", "seconds_by_phase", "phase_seconds",
    "hash_seconds", "embed_seconds", "images_per_second", "run_id", "report_uri", "quality_uri",
    "generated_at",
}
SKIPPED_DIRS = {"_staging"}


def _normalise(value: Any, roots: tuple[str, str]) -> Any:
    if isinstance(value, dict):
        return {
            key: _normalise(item, roots) for key, item in value.items()
            if key not in VOLATILE_KEYS and not key.endswith("_seconds")
        }
    if isinstance(value, list):
        return [_normalise(item, roots) for item in value]
    if isinstance(value, str):
        return value.replace(roots[0], "<root>").replace(roots[1], "<root>")
    return value


def _files(root: str) -> dict[str, str]:
    """Relative path -> kind (``parquet`` for a Parquet dataset folder, else ``file``)."""
    found: dict[str, str] = {}
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.startswith("."))
        rel_folder = os.path.relpath(folder, root)
        if any(name.endswith(".parquet") for name in names):
            found[rel_folder] = "parquet"
            dirs[:] = []
            continue
        for name in names:
            if not name.startswith(".") and not name.endswith(".crc"):
                found[os.path.normpath(os.path.join(rel_folder, name))] = "file"
    return found


def _rows(folder: str) -> list[tuple]:
    paths = sorted(
        os.path.join(dirpath, name)
        for dirpath, _, names in os.walk(folder) for name in names
        if name.endswith(".parquet") and not name.startswith(".")
    )
    rows = []
    for path in paths:
        table = pq.read_table(path)
        rows += [tuple(repr(row[name]) for name in sorted(row)) for row in table.to_pylist()]
    return sorted(rows)


def _content(path: str) -> bytes:
    opener = {".gz": gzip.open, ".bz2": bz2.open}.get(os.path.splitext(path)[1], open)
    with opener(path, "rb") as handle:
        return handle.read()


def compare(before: str, after: str) -> list[str]:
    """Every difference between the two runs' outputs, one line each (empty: the same)."""
    roots = (os.path.abspath(before), os.path.abspath(after))
    left, right = _files(before), _files(after)
    problems = [f"only in {before}: {rel}" for rel in sorted(set(left) - set(right))]
    problems += [f"only in {after}: {rel}" for rel in sorted(set(right) - set(left))]
    for rel in sorted(set(left) & set(right)):
        a, b = os.path.join(before, rel), os.path.join(after, rel)
        if left[rel] == "parquet":
            if _rows(a) != _rows(b):
                problems.append(f"rows differ: {rel}")
        elif rel.endswith(".json"):
            with open(a, encoding="utf-8") as ha, open(b, encoding="utf-8") as hb:
                if _normalise(json.load(ha), roots) != _normalise(json.load(hb), roots):
                    problems.append(f"JSON differs: {rel}")
        elif rel.endswith((".html", ".png", ".svg")):
            continue  # the HTML report prints timings and the run's paths
        elif _content(a) != _content(b):
            problems.append(f"bytes differ: {rel}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    args = parser.parse_args(argv)
    problems = compare(args.before, args.after)
    for line in problems:
        print(line)
    print(f"{len(_files(args.before))} datasets and files compared; {len(problems)} difference(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
