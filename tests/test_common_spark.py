"""The one SparkSession builder: local defaults by hand, cluster settings win under spark-submit."""
from __future__ import annotations

import pytest

from jobs.common import spark as spark_module


def test_jobs_reuse_the_running_session_and_get_runtime_settings(spark) -> None:
    again = spark_module.get_spark("a-job", conf={"spark.sql.execution.arrow.maxRecordsPerBatch": "64"})
    assert again is spark
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"
    assert spark.conf.get("spark.sql.sources.partitionOverwriteMode") == "dynamic"
    assert spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch") == "64"
    assert spark.sparkContext.master == "local[2]"
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "10000")


def test_spark_submit_launch_is_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spark_module.SparkContext, "_active_spark_context", None)
    monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)
    assert not spark_module.is_cluster_launched()
    monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "40123")
    assert spark_module.is_cluster_launched()
