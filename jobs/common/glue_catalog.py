"""The Glue Data Catalog partition of a published S3 dataset partition, kept on its current version.

A partition published on S3 is a set of versions behind a pointer (``<dataset>/dt=D/_v-<id>/``, see
:mod:`jobs.common.storage`). Athena, Glue and Spark reading through the catalog do not read the pointer:
they read the partition's ``Location``. When the driver's environment names a Glue database
(:data:`DATABASE_ENV`), every S3 publish of a declared dataset's ``dt=D`` folder calls
:func:`register_partition` right after the pointer is replaced: the table (created when missing, Parquet
SerDe, columns from ``schemas/``, partitioned by ``dt``) gets the partition ``dt=D`` with its
``StorageDescriptor.Location`` set to the new version's prefix. ``storage.clean_versions`` never deletes
the version a partition points at (:func:`registered_location`), so a run killed between the pointer and
the catalog leaves the catalog on the previous version, whole, until the next publish of the partition.

One database per work root: a table is named after its dataset (``train``, ``embeddings``,
``rejects_embed``...) and located at the dataset folder; a table of that name somewhere else is refused.
Without the variable nothing here runs and no AWS call is made. ``boto3`` is imported only then.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Any
from urllib.parse import urlparse

from jobs.common.cli import JobError
from jobs.common.paths import PARTITION_KEY, canonical_s3

LOG = logging.getLogger("stylegraph.glue_catalog")

DATABASE_ENV = "STYLEGRAPH_GLUE_DATABASE"
# The database names the EMR and Glue options and the DAG accept: the ones Athena reads (lowercase letters,
# digits, underscores), which are also safe in the cluster's spark-env.sh.
DATABASE_NAME = re.compile(r"[a-z0-9_]{1,255}")

PARQUET_INPUT_FORMAT = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat"
PARQUET_OUTPUT_FORMAT = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat"
PARQUET_SERDE = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"


def database() -> str | None:
    """The Glue database published partitions are registered in (:data:`DATABASE_ENV`), or None."""
    return os.environ.get(DATABASE_ENV, "").strip() or None


def checked_database(name: str) -> str:
    """``name`` if it is a database name the launchers pass on (:data:`DATABASE_NAME`), else JobError."""
    if not DATABASE_NAME.fullmatch(name):
        raise JobError(
            f"Glue database name {name!r} ({DATABASE_ENV}): "
            "use 1 to 255 lowercase letters, digits or underscores"
        )
    return name


def _declared_schemas() -> dict[str, Any]:
    """The datasets with a catalog table: their path below the output root -> their StructType."""
    from schemas import embeddings, interactions, similarity

    return {
        "train": interactions.NCF_ROW_SCHEMA,
        "test": interactions.NCF_ROW_SCHEMA,
        "rejects": interactions.REJECT_SCHEMA,
        "embeddings": embeddings.EMBEDDING_SCHEMA,
        "rejects/embed": embeddings.EMBED_REJECT_SCHEMA,
        "similarity": similarity.TOPK_EDGE_SCHEMA,
        "rejects/similarity": similarity.REJECT_SCHEMA,
    }


def table_of(folder_uri: str) -> tuple[str, str, str, Any] | None:
    """For an S3 ``<root>/<dataset>/dt=D`` folder of a declared dataset: (table name, dataset folder,
    partition value, StructType); None for anything else (a local path, the export, a sample folder)."""
    if urlparse(folder_uri).scheme.lower() not in ("s3", "s3a", "s3n"):
        return None
    folder = canonical_s3(folder_uri)
    dataset_uri, _, leaf = folder.rpartition("/")
    key, _, value = leaf.partition("=")
    if key != PARTITION_KEY or not value:
        return None
    for dataset, schema in sorted(_declared_schemas().items(), key=lambda item: -len(item[0])):
        if dataset_uri.endswith("/" + dataset) and dataset_uri.count("/") > dataset.count("/") + 2:
            return dataset.replace("/", "_"), dataset_uri, value, schema
    return None


def _client() -> Any:
    import boto3

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
    return boto3.client("glue", region_name=region)  # AWS_ENDPOINT_URL(_GLUE) honoured by boto3


def _not_found(err: Exception) -> bool:
    return getattr(err, "response", {}).get("Error", {}).get("Code") == "EntityNotFoundException"


def _table_input(name: str, dataset_uri: str, schema: Any) -> dict[str, Any]:
    columns = [{"Name": field.name, "Type": field.dataType.simpleString()} for field in schema.fields]
    return {
        "Name": name,
        "TableType": "EXTERNAL_TABLE",
        "Parameters": {"EXTERNAL": "TRUE", "classification": "parquet"},
        "PartitionKeys": [{"Name": PARTITION_KEY, "Type": "string"}],
        "StorageDescriptor": {
            "Columns": columns,  # Spark's simple strings are Hive's types (int, array<float>...)
            "Location": dataset_uri + "/",
            "InputFormat": PARQUET_INPUT_FORMAT,
            "OutputFormat": PARQUET_OUTPUT_FORMAT,
            "SerdeInfo": {"SerializationLibrary": PARQUET_SERDE, "Parameters": {"serialization.format": "1"}},
        },
    }


def _table(glue: Any, db: str, name: str, dataset_uri: str, schema: Any) -> dict[str, Any]:
    """The table's definition, created when missing; refused when it names another dataset folder."""
    try:
        table = glue.get_table(DatabaseName=db, Name=name)["Table"]
    except Exception as err:
        if not _not_found(err):
            raise
        table_input = _table_input(name, dataset_uri, schema)
        try:
            glue.create_table(DatabaseName=db, TableInput=table_input)
        except Exception as create_err:
            if _not_found(create_err):
                raise JobError(f"Glue database {db!r} ({DATABASE_ENV}) does not exist") from create_err
            raise
        LOG.info("created the Glue table %s.%s at %s", db, name, dataset_uri)
        return table_input
    location = table.get("StorageDescriptor", {}).get("Location", "")
    if canonical_s3(location) != dataset_uri:
        raise JobError(
            f"Glue table {db}.{name} is located at {location}, not {dataset_uri}/ "
            f"(one {DATABASE_ENV} database per work root)"
        )
    return dict(table)


def register_partition(folder_uri: str, location: str) -> bool:
    """Point the catalog partition of a published folder at ``location`` (its current version's prefix):
    ``batch_create_partition``, or ``update_partition`` when it exists. False when there is nothing to
    register (no database configured, or not a declared dataset's partition)."""
    db = database()
    found = table_of(folder_uri)
    if db is None or found is None:
        return False
    name, dataset_uri, value, schema = found
    glue = _client()
    table = _table(glue, db, name, dataset_uri, schema)
    descriptor = dict(table["StorageDescriptor"], Location=canonical_s3(location) + "/")
    partition = {"Values": [value], "StorageDescriptor": descriptor}
    errors = glue.batch_create_partition(
        DatabaseName=db, TableName=name, PartitionInputList=[partition]
    ).get("Errors", [])
    codes = [error.get("ErrorDetail", {}).get("ErrorCode") for error in errors]
    if codes == ["AlreadyExistsException"]:
        glue.update_partition(
            DatabaseName=db, TableName=name, PartitionValueList=[value], PartitionInput=partition
        )
    elif errors:
        raise JobError(f"Glue partition {db}.{name} {PARTITION_KEY}={value}: {errors[0].get('ErrorDetail')}")
    LOG.info("Glue partition %s.%s %s=%s -> %s", db, name, PARTITION_KEY, value, descriptor["Location"])
    return True


def registered_location(folder_uri: str) -> str | None:
    """The ``Location`` the catalog partition of a published folder points at (``s3://...``, no trailing
    slash), or None (no database configured, not a declared dataset, no table or partition yet)."""
    db = database()
    found = table_of(folder_uri)
    if db is None or found is None:
        return None
    name, _, value, _ = found
    try:
        partition = _client().get_partition(DatabaseName=db, TableName=name, PartitionValues=[value])
    except Exception as err:
        if _not_found(err):
            return None
        raise
    location = partition["Partition"].get("StorageDescriptor", {}).get("Location")
    return canonical_s3(location) if location else None
