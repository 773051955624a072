"""Neptune's data API as this suite uses it: the Gremlin it sends, paced and retried.

Only these query forms are ever sent (``execute_gremlin_query``, POST /gremlin):

- ``g.E('id1','id2',...).drop()`` and ``g.V(...).drop()``: remove elements by ``~id`` (a vertex's drop
  also drops its edges; an id that is not there is no error, so a batch can be sent twice);
- ``g.V(...).properties('key').drop()`` (or ``g.E``): clear one property of some elements;
- ``g.V().groupCount().by(label)`` and ``g.E().groupCount().by(label)``: elements per label.

Ids travel as Gremlin string literals: a backslash and a single quote are escaped, and every control
character is written ``\\uXXXX``, so any id the export can write (quotes, commas, newlines) is sent
exactly. Answers are GraphSON 3 (Neptune's default), decoded by :func:`from_graphson`.

``ThrottlingException``, ``TooManyRequestsException`` and ``ConcurrentModificationException`` are
retried with exponential backoff (another writer holds the elements, or the cluster is busy); any other
error fails at once. Requests are paced to at most ``rate`` per second.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from jobs.common.cli import JobError

LOG = logging.getLogger("stylegraph.neptune_data")

VERTEX = "V"
EDGE = "E"
RETRYABLE_CODES = frozenset(
    {"ThrottlingException", "TooManyRequestsException", "ConcurrentModificationException"}
)


class DataApiError(JobError):
    """A data API request failed (not retryable, or still failing after every retry)."""


def gremlin_string(value: str) -> str:
    """``value`` as a single-quoted Gremlin string literal."""
    out = []
    for char in value:
        if char == "\\":
            out.append("\\\\")
        elif char == "'":
            out.append("\\'")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return "'" + "".join(out) + "'"


def id_list(ids: Sequence[str]) -> str:
    return ",".join(gremlin_string(element_id) for element_id in ids)


def drop_query(kind: str, ids: Sequence[str]) -> str:
    """``g.V(ids).drop()`` / ``g.E(ids).drop()``."""
    return f"g.{kind}({id_list(ids)}).drop()"


def clear_query(kind: str, ids: Sequence[str], key: str) -> str:
    """``g.V(ids).properties('key').drop()`` (or ``g.E``): the property goes, the element stays."""
    return f"g.{kind}({id_list(ids)}).properties({gremlin_string(key)}).drop()"


def count_query(kind: str) -> str:
    """``g.V().groupCount().by(label)`` (or ``g.E``)."""
    return f"g.{kind}().groupCount().by(label)"


def from_graphson(value: Any) -> Any:
    """Plain Python values from GraphSON 3 (``g:List``, ``g:Map``, ``g:Int64``...); untyped JSON as is."""
    if isinstance(value, list):
        return [from_graphson(item) for item in value]
    if not isinstance(value, dict):
        return value
    if "@type" not in value:
        return {key: from_graphson(item) for key, item in value.items()}
    kind, inner = value["@type"], value.get("@value")
    if inner is None:
        return None
    if kind in ("g:List", "g:Set"):
        return [from_graphson(item) for item in inner]
    if kind == "g:Map":
        items = [from_graphson(item) for item in inner]
        return dict(zip(items[0::2], items[1::2], strict=True))
    return from_graphson(inner)


def error_code(err: Exception) -> str:
    response = getattr(err, "response", None) or {}
    return str(response.get("Error", {}).get("Code") or response.get("code") or type(err).__name__)


@dataclass(frozen=True)
class Pacing:
    """How the data API is used: requests per second at most (0: no limit) and retries on throttling."""

    rate: float = 0.0
    max_retries: int = 8
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0


class DataApi:
    """Sends Gremlin through ``neptunedata.execute_gremlin_query``, paced and retried.

    ``sleep`` and ``clock`` are injectable so tests need no waiting. ``requests`` counts the requests
    sent (retries included) and ``retries`` the retried answers.
    """

    def __init__(
        self,
        client: Any,
        pacing: Pacing = Pacing(),
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.pacing = pacing
        self.sleep = sleep
        self.clock = clock
        self.requests = 0
        self.retries = 0
        self._next_at: float | None = None

    def _pace(self) -> None:
        if self.pacing.rate <= 0:
            return
        now = self.clock()
        if self._next_at is not None and now < self._next_at:
            self.sleep(self._next_at - now)
            now = self._next_at
        self._next_at = now + 1.0 / self.pacing.rate

    def execute(self, query: str, what: str) -> Any:
        """Run one query; returns its decoded result data.

        Raises:
            DataApiError: an error that is not retryable, or a retryable one past ``max_retries``.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        delay = self.pacing.backoff_initial_s
        for attempt in range(self.pacing.max_retries + 1):
            self._pace()
            self.requests += 1
            try:
                response = self.client.execute_gremlin_query(gremlinQuery=query)
            except ClientError as err:
                code = error_code(err)
                message = err.response.get("Error", {}).get("Message") or str(err)
                if code in RETRYABLE_CODES and attempt < self.pacing.max_retries:
                    self.retries += 1
                    LOG.warning("%s: %s (%s); retry %d in %.1fs", what, code, message, attempt + 1, delay)
                    self.sleep(delay)
                    delay = min(delay * 2, self.pacing.backoff_max_s)
                    continue
                status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                raise DataApiError(f"{what}: HTTP {status} {code}: {message}") from err
            except BotoCoreError as err:
                raise DataApiError(f"{what}: {err}") from err
            return from_graphson((response.get("result") or {}).get("data"))
        raise AssertionError("unreachable")  # the loop returns or raises

    def drop(self, kind: str, batches: Iterable[Sequence[str]]) -> int:
        """Drop every id of every batch (one request a batch); returns the ids sent."""
        sent = 0
        for batch in batches:
            self.execute(drop_query(kind, batch), f"removing {len(batch)} {kind} ids from {batch[0]!r}")
            sent += len(batch)
        return sent

    def clear(self, kind: str, batches: Iterable[tuple[str, Sequence[str]]]) -> int:
        """Clear one property of each batch's ids (``(key, ids)`` per request); returns the ids sent."""
        sent = 0
        for key, batch in batches:
            self.execute(clear_query(kind, batch, key), f"clearing {key!r} of {len(batch)} {kind} ids")
            sent += len(batch)
        return sent

    def count_by_label(self, kind: str) -> dict[str, int]:
        """Elements per label (an element with several labels counts under them joined by ``::``)."""
        data = self.execute(count_query(kind), f"counting {kind} by label")
        counts: dict[str, int] = {}
        for item in data or []:
            for label, count in item.items():
                counts[str(label)] = counts.get(str(label), 0) + int(count)
        return counts
