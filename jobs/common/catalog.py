"""The catalog CSV's header, checked once for every job that reads the catalog.

Spark reads a CSV with a declared schema by position: a catalog whose columns come in another order
(or with one missing) would silently put names into the brand column. Every catalog reader calls
:func:`check_catalog_header` first, so such a file is a clear error before any work starts.
"""
from __future__ import annotations

import csv
import io

from pyarrow import fs as pafs

from jobs.common import storage
from jobs.common.cli import JobError
from schemas.catalog import CATALOG_COLUMNS

# Enough bytes for any sane header line.
_HEAD_BYTES = 64 * 1024


def _first_row(uri: str) -> list[str] | None:
    fs, path = storage.filesystem(uri)
    with fs.open_input_stream(path) as stream:  # decompresses .gz/.bz2 by extension
        head = stream.read(_HEAD_BYTES).decode("utf-8-sig", errors="replace")
    return next(csv.reader(io.StringIO(head)), None)


def check_catalog_header(catalog_uri: str) -> None:
    """Raise :class:`JobError` unless every catalog file starts with exactly ``CATALOG_COLUMNS`` and,
    when compressed, decompresses to its end.

    Args:
        catalog_uri: a catalog CSV file, or a folder of them.
    """
    catalog_uri = storage.resolve(catalog_uri)
    fs, path = storage.filesystem(catalog_uri)
    info = fs.get_file_info(path)
    files = storage.list_files(catalog_uri) if info.type == pafs.FileType.Directory else [catalog_uri]
    if not files:
        raise JobError(f"--catalog {catalog_uri}: no catalog file found")
    expected = list(CATALOG_COLUMNS)
    for file_uri in files:
        problem = storage.compression_problem(file_uri)  # a catalog is small: read to its end once
        if problem:
            raise JobError(f"--catalog {file_uri}: {problem}")
        found = _first_row(file_uri)
        if found is None:
            raise JobError(f"--catalog {file_uri}: empty file, expected the header {','.join(expected)}")
        if found != expected:
            raise JobError(
                f"--catalog {file_uri}: header {','.join(found)!r} is not {','.join(expected)!r} "
                "(columns are read by position, so they must come in this order)"
            )
