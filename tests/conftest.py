"""One SparkSession for the whole test session (local[2], few shuffle partitions, UI off)."""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

# Spark's Python workers must be this interpreter (the venv's), whatever is first on PATH.
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)


@pytest.fixture(scope="session")
def spark() -> Iterator["SparkSession"]:  # noqa: F821
    from jobs.common.spark import get_spark

    session = get_spark("stylegraph-tests", master="local[2]", conf={"spark.sql.shuffle.partitions": "4"})
    yield session
    session.stop()
