"""The similarity job's input checks, vectorised over Arrow columns: what each embedding row is (its
length, non-finite values, zero norm) and why a row is left out."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyspark.sql.pandas.types import to_arrow_schema

from jobs.common import storage
from schemas import embeddings as embeddings_schema
from schemas import similarity as similarity_schema

F32_MAX = float(np.finfo(np.float32).max)


def embedding_facts(embeddings: pa.Array) -> tuple[pa.Array, pa.Array, pa.Array]:
    """What the checks need to know of each embedding, without the expected length:
    (length: int32, null for a null embedding; non_finite: a NaN, infinite or null value, or a squared
    norm beyond float32's range, which would overflow the products; zero_norm: all zeros), the two
    flags null for a null embedding. Values are read as float32, as the tiles will read them.
    """
    if isinstance(embeddings, pa.ChunkedArray):
        embeddings = embeddings.combine_chunks()
    count = len(embeddings)
    is_null = embeddings.is_null().to_numpy(zero_copy_only=False)
    lengths = pc.fill_null(pc.list_value_length(embeddings), 0).to_numpy(zero_copy_only=False)
    non_finite = np.zeros(count, dtype=bool)
    zero_norm = np.zeros(count, dtype=bool)
    for length in np.unique(lengths[~is_null]):  # rows of one length at a time: a matrix each
        rows = np.flatnonzero(~is_null & (lengths == length))
        values = (
            pc.list_flatten(embeddings.take(pa.array(rows)))
            .to_numpy(zero_copy_only=False)  # a null value becomes NaN
            .astype(np.float32, copy=False)
            .reshape(rows.size, int(length))
        )
        with np.errstate(over="ignore", invalid="ignore"):
            sq_norm = np.einsum("ij,ij->i", values, values, dtype=np.float64)
        non_finite[rows] = ~np.isfinite(values).all(axis=1) | ~(sq_norm <= F32_MAX)
        zero_norm[rows] = sq_norm == 0.0
    mask = np.asarray(is_null, dtype=bool)
    return (
        pa.array(lengths.astype(np.int32), mask=mask),
        pa.array(non_finite, mask=mask),
        pa.array(zero_norm, mask=mask),
    )


FACT_COLUMNS = (
    embeddings_schema.SKU,
    embeddings_schema.IMAGE_PATH,
    embeddings_schema.STATUS,
    embeddings_schema.EMBEDDING,
)
# Arrow schemas of the Spark schemas declared once, in schemas/similarity.py.
FACTS_ARROW_SCHEMA = to_arrow_schema(similarity_schema.FACTS_SCHEMA)
FACTS_BATCH_ROWS = 8192


def missing_fact_columns(uri: str) -> list[str]:
    """The columns the checks read (``FACT_COLUMNS``) that a Parquet file lacks (its footer only)."""
    fs, path = storage.filesystem(uri)
    with fs.open_input_file(path) as handle:
        names = pq.ParquetFile(handle).schema_arrow.names
    return [column for column in FACT_COLUMNS if column not in names]


def file_facts(uri: str) -> pa.Table:
    """Every row of one embeddings Parquet file as ``FACTS_ARROW_SCHEMA`` (sku, image_path, status and
    the ``embedding_facts``), read with pyarrow a row batch at a time (memory: one batch of embeddings).

    Raises:
        ValueError: the file lacks a column the checks read (the job checks the footers first).
    """
    fs, path = storage.filesystem(uri)
    batches = []
    with fs.open_input_file(path) as handle:
        reader = pq.ParquetFile(handle)
        missing = [c for c in FACT_COLUMNS if c not in reader.schema_arrow.names]
        if missing:
            raise ValueError(f"{uri}: no column(s) {missing} (not the embed job's output?)")
        for rows in reader.iter_batches(batch_size=FACTS_BATCH_ROWS, columns=list(FACT_COLUMNS)):
            lengths, non_finite, zero_norm = embedding_facts(rows.column(embeddings_schema.EMBEDDING))
            batches.append(
                pa.RecordBatch.from_arrays(
                    [
                        rows.column(embeddings_schema.SKU).cast(pa.string()),
                        rows.column(embeddings_schema.IMAGE_PATH).cast(pa.string()),
                        rows.column(embeddings_schema.STATUS).cast(pa.string()),
                        lengths,
                        non_finite,
                        zero_norm,
                    ],
                    schema=FACTS_ARROW_SCHEMA,
                )
            )
    return pa.Table.from_batches(batches, schema=FACTS_ARROW_SCHEMA)


def as_numpy(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """An Arrow array (chunked or not) as numpy (a copy where Arrow's layout needs one)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    return values.to_numpy(zero_copy_only=False)


def expected_dimension(facts: pa.Table) -> int:
    """The most frequent embedding length among "ok" rows with an embedding (ties: the smaller);
    0 when there is none. ``facts``: ``FACTS_ARROW_SCHEMA`` rows (``file_facts``')."""
    ok = pc.fill_null(pc.equal(facts.column(embeddings_schema.STATUS), embeddings_schema.STATUS_OK), False)
    lengths = as_numpy(pc.drop_null(pc.filter(facts.column(similarity_schema.EMBEDDING_LENGTH), ok)))
    if lengths.size == 0:
        return 0
    values, counts = np.unique(lengths, return_counts=True)  # ascending: argmax takes the smaller tie
    return int(values[int(np.argmax(counts))])


def rejection_reasons(facts: pa.Table, *, expected_dim: int, metric: str) -> pa.Array:
    """Why each row of ``facts`` (``FACTS_ARROW_SCHEMA``) is left out; null = usable.

    First match wins: status not "ok" (dropped on purpose: the embed job reported it), missing sku (null,
    or only spaces), duplicate sku (every copy of a sku found in more than one "ok" row), null embedding,
    wrong length (``!= expected_dim``), non-finite, zero norm (cosine only).
    """
    count = facts.num_rows
    status = facts.column(embeddings_schema.STATUS)
    ok = as_numpy(pc.fill_null(pc.equal(status, embeddings_schema.STATUS_OK), False))
    sku = facts.column(embeddings_schema.SKU)
    missing = as_numpy(pc.fill_null(pc.equal(pc.utf8_trim(sku, " "), ""), True))
    ok_skus = pc.filter(sku, pa.array(ok, type=pa.bool_()))
    counted = pc.value_counts(pc.drop_null(ok_skus))
    repeated = pc.filter(counted.field("values"), pc.greater(counted.field("counts"), 1))
    duplicate = as_numpy(pc.fill_null(pc.is_in(sku, value_set=repeated), False))
    length = facts.column(similarity_schema.EMBEDDING_LENGTH)
    null_embedding = as_numpy(length.is_null())
    wrong_length = ~null_embedding & (as_numpy(pc.fill_null(length, 0)) != expected_dim)
    non_finite = as_numpy(pc.fill_null(facts.column(similarity_schema.NON_FINITE), False))
    zero_norm = as_numpy(pc.fill_null(facts.column(similarity_schema.ZERO_NORM), False))
    checks = [
        (~ok, similarity_schema.REASON_STATUS_ERROR),
        (missing, similarity_schema.REASON_MISSING_SKU),
        (duplicate, similarity_schema.REASON_DUPLICATE_SKU),
        (null_embedding, similarity_schema.REASON_NULL_EMBEDDING),
        (wrong_length, similarity_schema.REASON_WRONG_LENGTH),
        (non_finite, similarity_schema.REASON_NON_FINITE),
    ]
    if metric == similarity_schema.COSINE:
        checks.append((zero_norm, similarity_schema.REASON_ZERO_NORM))
    reasons = np.full(count, None, dtype=object)
    undecided = np.ones(count, dtype=bool)
    for failed, reason in checks:
        hit = undecided & np.asarray(failed, dtype=bool)
        reasons[hit] = reason
        undecided &= ~hit
    return pa.array(reasons, type=pa.string())

