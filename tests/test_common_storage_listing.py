"""The two file listers of jobs.common.storage, on local disk and on S3 (moto server).

``list_files`` lists what readers read (hidden and ``_`` files skipped); ``all_files`` lists everything a
job must see before it deletes or publishes a folder (Spark's ``_SUCCESS``, ``.crc``, a dead task's
hidden temporary file).
"""
from __future__ import annotations

import os

import boto3

from jobs.common import storage

FILES = ("a.csv", "_SUCCESS", ".part-0.csv.tmp", "sub/.a.csv.crc", "sub/b.csv", "_temporary/0/c.csv")
VISIBLE = ("a.csv", "sub/b.csv")


def _write(root: str, names: tuple[str, ...]) -> None:
    for name in names:
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as handle:
            handle.write(name)


def test_all_files_lists_hidden_files_that_list_files_skips(tmp_path) -> None:
    root = str(tmp_path / "out")
    _write(root, FILES)

    assert storage.all_files(root) == sorted(f"{root}/{name}" for name in FILES)
    assert storage.list_files(root) == sorted(f"{root}/{name}" for name in VISIBLE)
    assert storage.all_files(f"{root}/sub/b.csv") == [f"{root}/sub/b.csv"]
    assert storage.all_files(str(tmp_path / "missing")) == []


def test_all_files_on_s3(aws_env: str) -> None:
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="stylegraph-listing")
    for name in FILES:
        s3.put_object(Bucket="stylegraph-listing", Key=f"out/{name}", Body=name.encode())
    root = "s3://stylegraph-listing/out"

    assert storage.all_files(root) == sorted(f"{root}/{name}" for name in FILES)
    assert storage.list_files(root) == sorted(f"{root}/{name}" for name in VISIBLE)
    assert storage.all_files("s3://stylegraph-listing/nothing-here") == []
