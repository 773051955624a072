"""Gremlin edge CSV rows built with Arrow compute kernels, for the export's Python write tasks.

Pure functions: Arrow arrays in, Arrow arrays, numpy arrays or bytes out; nothing here reads or writes a
file. The Spark path (:mod:`jobs.transforms.gremlin`) stays the reference for what a row means; this
module produces the same rows, checked the same way, without Spark's CSV writer:

- every vertex's CSV pieces (its ``~from`` field, its ``~to`` field followed by the label, the two halves
  of an edge id) are formatted once per vertex, and an edge row is a few ``take``\\ s by vertex index and
  one ``binary_join_element_wise``: the joined array's value buffer IS the CSV text of the batch;
- quoting follows RFC 4180 exactly as Spark's writer with :data:`schemas.gremlin.GREMLIN_CSV_WRITE_OPTIONS`
  does it: a field holding a comma, a double quote, CR or LF is quoted and its quotes doubled; other
  fields are written bare; a null is a blank field;
- doubles are written in their shortest round-trip form (``0.5``, ``0.00001``, ``1e-7``: Arrow's
  formatter, parsed back to the same double by Java's ``Double.parseDouble`` and Python's ``float``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas import gremlin, similarity

NUL = "\u0000"
# Characters that make a field need quotes (RFC 4180: separator, quote, CR, LF).
NEEDS_QUOTES_PATTERN = '[,"\r\n]'
QUOTE = '"'
RECORD_END = "\n"

# Reason codes of a batch's rows (0 = a good row), in the order the reasons are checked.
GOOD = 0
REASON_CODES = (
    gremlin.EDGE_MISSING_ENDPOINT,
    gremlin.EDGE_MISSING_SCORE,
    gremlin.EDGE_NON_FINITE_SCORE,
    gremlin.EDGE_SELF_LOOP,
    gremlin.EDGE_FROM_MISSING,
    gremlin.EDGE_TO_MISSING,
)


def needs_quotes(values: pa.Array) -> pa.Array:
    """True where a string holds a comma, a double quote, CR or LF (null stays null)."""
    return pc.match_substring_regex(values, NEEDS_QUOTES_PATTERN)


def escape_quotes(values: pa.Array) -> pa.Array:
    """Double every double quote (the inside of a quoted field)."""
    return pc.replace_substring(values, QUOTE, QUOTE + QUOTE)


def csv_field(values: pa.Array) -> pa.Array:
    """Each string as one RFC 4180 field: quoted (quotes doubled) when it needs it, else as is."""
    quoted = pc.binary_join_element_wise(QUOTE, escape_quotes(values), QUOTE, "")
    return pc.if_else(needs_quotes(values), quoted, values)


@dataclass(frozen=True)
class VertexPieces:
    """The CSV pieces of every vertex, by vertex index (the position of its sku in ``skus``).

    ``from_field``: its ``~from`` field; ``to_label``: its ``~to`` field, a comma, the edge label field;
    ``id_head``/``id_tail``: the edge id ``<label>:<len(from)>:<from>->`` for an edge leaving it and
    ``<to>`` for one reaching it; ``id_head_quoted``/``id_tail_quoted``: the same inside a quoted field
    (``"`` + escaped head, escaped tail + ``"``), used where ``id_needs_quotes`` holds for either end.
    """

    skus: pa.Array
    from_field: pa.Array
    to_label: pa.Array
    id_head: pa.Array
    id_tail: pa.Array
    id_head_quoted: pa.Array
    id_tail_quoted: pa.Array
    id_needs_quotes: np.ndarray


def vertex_pieces(skus: pa.Array, *, label: str) -> VertexPieces:
    """Format every vertex once (``skus``: distinct, non-null strings; their positions are the indexes)."""
    skus = skus.cast(pa.string())
    ids = pc.binary_join_element_wise(gremlin.VERTEX_ID_PREFIX, skus, "")
    # Spark's length() counts characters (code points), as utf8_length does.
    lengths = pc.cast(pc.utf8_length(ids), pa.string())
    head = pc.binary_join_element_wise(f"{label}:", lengths, ":", ids, gremlin.EDGE_ID_ARROW, "")
    label_field = csv_field(pa.array([label]))[0].as_py()
    return VertexPieces(
        skus=skus,
        from_field=csv_field(ids),
        to_label=pc.binary_join_element_wise(csv_field(ids), label_field, ","),
        id_head=head,
        id_tail=ids,
        id_head_quoted=pc.binary_join_element_wise(QUOTE, escape_quotes(head), ""),
        id_tail_quoted=pc.binary_join_element_wise(escape_quotes(ids), QUOTE, ""),
        id_needs_quotes=needs_quotes(ids).to_numpy(zero_copy_only=False),
    )


def record_tail(metric: str, higher_is_closer: bool) -> str:
    """What ends every edge record: the metric field, the direction (``true``/``false``) and ``\\n``."""
    metric_field = csv_field(pa.array([metric]))[0].as_py()
    return f"{metric_field},{'true' if higher_is_closer else 'false'}{RECORD_END}"


def _indexes(ends: pa.Array, skus: pa.Array) -> np.ndarray:
    """Vertex index of each end, -1 where it is null or not a vertex."""
    found = pc.index_in(ends, value_set=skus)
    return pc.fill_null(found, -1).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


@dataclass(frozen=True)
class CheckedBatch:
    """One batch of similarity rows, checked: a reason code per row (0 = good) and the good rows' ends."""

    reasons: np.ndarray  # int8 per row: 0 good, else 1 + position in REASON_CODES
    from_index: np.ndarray  # int64 per good row
    to_index: np.ndarray  # int64 per good row


def check_batch(batch: pa.RecordBatch, skus: pa.Array) -> CheckedBatch:
    """The reasons of :func:`jobs.transforms.gremlin.with_edge_reject_reason`, first applicable wins."""
    src = batch.column(similarity.SRC).cast(pa.string())
    dst = batch.column(similarity.DST).cast(pa.string())
    score = batch.column(similarity.SCORE).cast(pa.float64())
    rows = batch.num_rows
    src_null = src.is_null().to_numpy(zero_copy_only=False)
    dst_null = dst.is_null().to_numpy(zero_copy_only=False)
    score_null = score.is_null().to_numpy(zero_copy_only=False)
    score_values = pc.fill_null(score, 0.0).to_numpy(zero_copy_only=False)
    same = pc.fill_null(pc.equal(src, dst), False).to_numpy(zero_copy_only=False)
    from_index = _indexes(src, skus)
    to_index = _indexes(dst, skus)
    reasons = np.zeros(rows, dtype=np.int8)
    # Assigned last reason first, so the first applicable one is what remains.
    for code, is_reason in reversed(
        list(
            enumerate(
                (
                    src_null | dst_null,
                    score_null,
                    ~np.isfinite(score_values),
                    same,
                    from_index < 0,
                    to_index < 0,
                ),
                start=1,
            )
        )
    ):
        reasons[is_reason] = code
    good = reasons == GOOD
    return CheckedBatch(reasons=reasons, from_index=from_index[good], to_index=to_index[good])


def edge_keys(from_index: np.ndarray, to_index: np.ndarray, vertices: int) -> np.ndarray:
    """The exact int64 key of each (from, to) pair: equal keys are equal pairs, and only those."""
    return from_index * np.int64(vertices) + to_index


def format_edges(
    good: pa.RecordBatch,
    from_index: np.ndarray,
    to_index: np.ndarray,
    pieces: VertexPieces,
    *,
    has_rank: bool,
    tail: str,
) -> memoryview:
    """The CSV records (``\\n``-terminated, no header) of good rows, as one buffer.

    ``good``: the good rows' ``score`` [and ``rank``]; ``from_index``/``to_index``: their vertex indexes.
    """
    if good.num_rows == 0:
        return memoryview(b"")
    f = pa.array(from_index)
    t = pa.array(to_index)
    edge_id = pc.binary_join_element_wise(pieces.id_head.take(f), pieces.id_tail.take(t), "")
    quoted = pieces.id_needs_quotes[from_index] | pieces.id_needs_quotes[to_index]
    if quoted.any():
        quoted_id = pc.binary_join_element_wise(
            pieces.id_head_quoted.take(f), pieces.id_tail_quoted.take(t), ""
        )
        edge_id = pc.if_else(pa.array(quoted), quoted_id, edge_id)
    columns = [
        edge_id,
        pieces.from_field.take(f),
        pieces.to_label.take(t),
        pc.cast(good.column(similarity.SCORE).cast(pa.float64()), pa.string()),
    ]
    if has_rank:
        columns.append(pc.fill_null(pc.cast(good.column(similarity.RANK).cast(pa.int32()), pa.string()), ""))
    columns.append(pa.scalar(tail))
    return record_bytes(pc.binary_join_element_wise(*columns, ","))


def record_bytes(records: pa.Array) -> memoryview:
    """The text of a string array without nulls, as one buffer (its values back to back, zero-copy)."""
    if len(records) == 0:
        return memoryview(b"")
    offsets = np.frombuffer(
        records.buffers()[1], dtype=np.int32, count=len(records) + 1, offset=records.offset * 4
    )
    return memoryview(records.buffers()[2])[offsets[0] : offsets[-1]]


def property_field(values: pa.Array) -> pa.Array:
    """A String property as a CSV field: NULs removed, null and "" both a blank field ("no value")."""
    text = pc.fill_null(pc.replace_substring(values.cast(pa.string()), NUL, ""), "")
    return csv_field(text)


def format_vertices(rows: pa.Table, *, label: str, property_columns: tuple[str, ...], sku: str) -> pa.Array:
    """One CSV record per row (``\n``-terminated, no header), as a string array (see :func:`record_bytes`):
    ``~id`` (``product:<sku>``), ``~label``, then each of ``property_columns`` as :func:`property_field`.

    The same rows as :func:`jobs.transforms.gremlin.to_vertex_rows` on the good catalog rows.
    """
    rows = rows.combine_chunks()

    def column(name: str) -> pa.Array:
        chunked = rows.column(name)
        return chunked.chunk(0) if chunked.num_chunks else pa.array([], chunked.type)

    ids = csv_field(pc.binary_join_element_wise(gremlin.VERTEX_ID_PREFIX, column(sku).cast(pa.string()), ""))
    label_field = csv_field(pa.array([label]))[0].as_py()
    fields = [ids, pa.scalar(label_field), *(property_field(column(name)) for name in property_columns)]
    joined = pc.binary_join_element_wise(*fields, ",")
    return pc.binary_join_element_wise(joined, RECORD_END, "")
