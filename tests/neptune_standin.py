"""A local stand-in for Amazon Neptune: the bulk loader and the Gremlin data API over HTTP, graph in memory.

boto3's ``neptunedata`` client talks to it through ``endpoint_url``. It answers the documented shapes:

- ``POST /loader`` (``start_loader_job``) -> ``{"status": "200 OK", "payload": {"loadId": ...}}``; the load
  runs at once: every CSV under the source (an ``s3://`` prefix, read through boto3 from the moto
  server, or a local folder) is applied by the bulk loader's rules: a new ``~id`` adds the element; an
  existing one gets its single-cardinality properties replaced when ``updateSingleCardinalityProperties``
  is true (kept otherwise) and its set-cardinality values added; a blank field is "no value" and changes
  nothing; an edge whose ``~from`` or ``~to`` is not a vertex fails the load
  (FROM_OR_TO_VERTEX_ARE_MISSING). A dependency that did not complete fails the load
  (LOAD_FAILED_BECAUSE_DEPENDENCY_NOT_SATISFIED).
- ``GET /loader/<loadId>`` (``get_loader_job_status``) -> ``{"status": "200 OK", "payload": {...}}``.
- ``POST /gremlin`` (``execute_gremlin_query``) runs ONLY ``g.V|E(<ids>).drop()``,
  ``g.V|E(<ids>).properties(<key>).drop()`` and ``g.V|E().groupCount().by(label)``; anything else is
  answered 400 MalformedQueryException. Results are GraphSON 3.

Faults are scripted: ``gremlin_faults`` answers the next data API requests with (HTTP status, error code)
before running them; ``fail_gremlin_after`` answers 500 InternalFailureException to every data API
request after that many; ``fail_load_after_rows`` makes a load whose source contains a key fail after
applying that many records.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import os
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlparse

SYSTEM = {"~id", "~label", "~from", "~to"}


@dataclass
class Element:
    labels: set[str]
    props: dict[str, Any] = field(default_factory=dict)
    ends: tuple[str, str] | None = None  # (from, to) of an edge


def parse_header(column: str) -> tuple[str, str, str]:
    """``name:Type(cardinality)`` -> (name, type, cardinality); the name's ``\\:`` unescaped."""
    match = re.match(r"^((?:[^:\\]|\\.)*)(?::([A-Za-z]+)(\[\])?(?:\((single|set)\))?)?$", column)
    if not match:
        raise ValueError(f"bad header {column!r}")
    name = match.group(1).replace("\\:", ":")
    return name, (match.group(2) or "String").lower(), match.group(4) or "set"


def parse_value(text: str, type_name: str) -> Any:
    if type_name in ("double", "float"):
        return float(text)
    if type_name in ("int", "long", "short", "byte"):
        return int(text)
    if type_name in ("bool", "boolean"):
        if text.lower() not in ("true", "false"):
            raise ValueError(f"not a Bool: {text!r}")
        return text.lower() == "true"
    return text


def read_source_files(source: str) -> list[tuple[str, bytes]]:
    """(name, bytes) of every file under an ``s3://`` prefix (boto3, moto) or a local folder, sorted."""
    if source.startswith("s3://"):
        import boto3

        parsed = urlparse(source)
        s3 = boto3.client("s3")
        listed = s3.list_objects_v2(Bucket=parsed.netloc, Prefix=parsed.path.lstrip("/"))
        keys = sorted(item["Key"] for item in listed.get("Contents", []) if not item["Key"].endswith("/"))
        return [(key, s3.get_object(Bucket=parsed.netloc, Key=key)["Body"].read()) for key in keys]
    path = source[len("file://") :] if source.startswith("file://") else source
    out = []
    for folder, _, names in os.walk(path):
        for name in names:
            with open(os.path.join(folder, name), "rb") as handle:
                out.append((os.path.join(folder, name), handle.read()))
    return sorted(out)


def csv_records(name: str, data: bytes) -> Iterator[dict[str, str]]:
    if name.endswith(".gz"):
        data = gzip.decompress(data)
    elif name.endswith(".bz2"):
        data = bz2.decompress(data)
    reader = csv.reader(io.StringIO(data.decode("utf-8"), newline=""), strict=True)
    header = next(reader)
    for row in reader:
        if len(row) != len(header):
            raise ValueError(f"{name}: {len(row)} fields, header has {len(header)}")
        yield dict(zip(header, row, strict=True))


class LoadError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Graph:
    """Vertices and edges by ``~id``."""

    def __init__(self) -> None:
        self.vertices: dict[str, Element] = {}
        self.edges: dict[str, Element] = {}

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Both kinds as plain, comparable values."""

        def plain(elements: dict[str, Element]) -> dict[str, Any]:
            return {
                key: (
                    sorted(e.labels),
                    e.ends,
                    {k: sorted(v) if isinstance(v, set) else v for k, v in e.props.items()},
                )
                for key, e in elements.items()
            }

        return {"vertices": plain(self.vertices), "edges": plain(self.edges)}

    def apply_record(self, record: dict[str, str], *, update_single: bool) -> None:
        element_id = record.get("~id", "")
        if not element_id:
            raise LoadError("PARSING_ERROR", "~id is required")
        is_edge = "~from" in record or "~to" in record
        elements = self.edges if is_edge else self.vertices
        if is_edge:
            ends = (record.get("~from", ""), record.get("~to", ""))
            if not all(ends) or not record.get("~label"):
                raise LoadError("PARSING_ERROR", "~from, ~to and ~label are required on an edge")
            if ends[0] not in self.vertices or ends[1] not in self.vertices:
                raise LoadError("FROM_OR_TO_VERTEX_ARE_MISSING", f"edge {element_id}: {ends}")
        labels = set(record["~label"].split(";")) if record.get("~label") else {"vertex"}
        element = elements.get(element_id)
        if element is None:
            element = Element(labels=labels, ends=ends if is_edge else None)
            elements[element_id] = element
        elif not is_edge:
            element.labels |= labels
        for column, text in record.items():
            if column in SYSTEM or text == "":
                continue
            name, type_name, cardinality = parse_header(column)
            value = parse_value(text, type_name)
            if is_edge or cardinality == "single":
                if name not in element.props or update_single:
                    element.props[name] = value
            else:
                element.props.setdefault(name, set()).add(value)


# ------------------------------------------------------------------------------------------- gremlin
_LITERAL = r"'(?:[^'\\]|\\.)*'"
_IDS = rf"(?:{_LITERAL}(?:,{_LITERAL})*)"
DROP = re.compile(rf"^g\.([VE])\(({_IDS})\)\.drop\(\)$", re.S)
CLEAR = re.compile(rf"^g\.([VE])\(({_IDS})\)\.properties\(({_LITERAL})\)\.drop\(\)$", re.S)
COUNT = re.compile(r"^g\.([VE])\(\)\.groupCount\(\)\.by\(label\)$")
ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}


def unquote(literal: str) -> str:
    body, out, index = literal[1:-1], [], 0
    while index < len(body):
        char = body[index]
        if char != "\\":
            out.append(char)
            index += 1
            continue
        escaped = body[index + 1]
        if escaped == "u":
            out.append(chr(int(body[index + 2 : index + 6], 16)))
            index += 6
        elif escaped in ESCAPES:
            out.append(ESCAPES[escaped])
            index += 2
        else:
            raise ValueError(f"unknown escape \\{escaped}")
    return "".join(out)


def literals(text: str) -> list[str]:
    return [unquote(match) for match in re.findall(_LITERAL, text, flags=re.S)]


def graphson(value: Any) -> Any:
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return {"@type": "g:Int64", "@value": value}
    if isinstance(value, list):
        return {"@type": "g:List", "@value": [graphson(item) for item in value]}
    if isinstance(value, dict):
        flat = [part for key, item in value.items() for part in (graphson(key), graphson(item))]
        return {"@type": "g:Map", "@value": flat}
    raise TypeError(type(value))


class Neptune:
    """The stand-in's state: the graph, the loads, the requests seen and the scripted faults."""

    def __init__(self) -> None:
        self.graph = Graph()
        self.loads: dict[str, dict[str, Any]] = {}
        self.load_requests: list[dict[str, Any]] = []
        self.queries: list[str] = []
        self.gremlin_faults: list[tuple[int, str]] = []
        self.fail_gremlin_after: int | None = None
        self.fail_load_after_rows: dict[str, int] = {}
        self.lock = threading.Lock()

    def start_load(self, body: dict[str, Any]) -> str:
        self.load_requests.append(body)
        load_id = str(uuid.uuid4())
        source = body["source"]
        status, errors, records = "LOAD_COMPLETED", [], 0
        failed_dependency = [
            d for d in body.get("dependencies", []) if self.loads[d]["status"] != "LOAD_COMPLETED"
        ]
        limit = next((n for key, n in self.fail_load_after_rows.items() if key in source), None)
        if failed_dependency:
            status = "LOAD_FAILED_BECAUSE_DEPENDENCY_NOT_SATISFIED"
        else:
            try:
                for name, data in read_source_files(source):
                    for record in csv_records(name, data):
                        if limit is not None and records >= limit:
                            raise LoadError("LOAD_INTERRUPTED", "scripted failure")
                        self.graph.apply_record(
                            record, update_single=bool(body["updateSingleCardinalityProperties"])
                        )
                        records += 1
            except LoadError as err:
                status = "LOAD_FAILED"
                errors.append(
                    {
                        "errorCode": err.code,
                        "errorMessage": str(err),
                        "fileName": source,
                        "recordNum": records + 1,
                    }
                )
        self.loads[load_id] = {"status": status, "source": source, "records": records, "errors": errors}
        return load_id

    def load_status(self, load_id: str) -> dict[str, Any]:
        load = self.loads[load_id]
        payload: dict[str, Any] = {
            "overallStatus": {
                "fullUri": load["source"],
                "runNumber": 1,
                "retryNumber": 0,
                "status": load["status"],
                "totalTimeSpent": 0,
                "startTime": 0,
                "totalRecords": load["records"],
                "totalDuplicates": 0,
                "parsingErrors": 0,
                "datatypeMismatchErrors": 0,
                "insertErrors": len(load["errors"]),
            }
        }
        if load["errors"]:
            payload["errors"] = {
                "startIndex": 1,
                "endIndex": 1,
                "loadId": load_id,
                "errorLogs": load["errors"],
            }
        return payload

    def run_gremlin(self, query: str) -> Any:
        graph = self.graph
        if match := DROP.match(query):
            kind, ids = match.group(1), literals(match.group(2))
            if kind == "E":
                for element_id in ids:
                    graph.edges.pop(element_id, None)
            else:
                for element_id in ids:
                    if graph.vertices.pop(element_id, None) is not None:  # a vertex takes its edges
                        for edge_id in [k for k, e in graph.edges.items() if element_id in e.ends]:
                            del graph.edges[edge_id]
            return []
        if match := CLEAR.match(query):
            kind, ids, key = match.group(1), literals(match.group(2)), unquote(match.group(3))
            elements = graph.edges if kind == "E" else graph.vertices
            for element_id in ids:
                if element_id in elements:
                    elements[element_id].props.pop(key, None)
            return []
        if match := COUNT.match(query):
            elements = graph.edges if match.group(1) == "E" else graph.vertices
            counts: dict[str, int] = {}
            for element in elements.values():
                label = "::".join(sorted(element.labels))
                counts[label] = counts.get(label, 0) + 1
            return [counts] if counts else [{}]
        raise ValueError(f"the stand-in does not run {query[:200]!r}")


class JsonHandler(BaseHTTPRequestHandler):
    """Answers with JSON bodies and AWS's error-type header, as Neptune's endpoints do; logs nothing."""

    def log_message(self, *args: Any) -> None:  # keep pytest's output clean
        pass

    def _send(self, code: int, body: dict[str, Any], error_type: str | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        if error_type:
            self.send_header("x-amzn-ErrorType", error_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def make_handler(state: Neptune) -> type[BaseHTTPRequestHandler]:
    class Handler(JsonHandler):

        def _error(self, code: int, error: str, message: str) -> None:
            body = {"code": error, "requestId": str(uuid.uuid4()), "detailedMessage": message}
            self._send(code, body, error_type=error)

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            with state.lock:
                if self.path == "/loader":
                    load_id = state.start_load(body)
                    self._send(200, {"status": "200 OK", "payload": {"loadId": load_id}})
                    return
                if self.path != "/gremlin":
                    self._error(400, "BadRequestException", f"no such path {self.path}")
                    return
                query = body.get("gremlin", "")
                state.queries.append(query)
                if state.gremlin_faults:
                    code, error = state.gremlin_faults.pop(0)
                    self._error(code, error, "scripted fault")
                    return
                if state.fail_gremlin_after is not None and len(state.queries) > state.fail_gremlin_after:
                    self._error(500, "InternalFailureException", "scripted failure")
                    return
                try:
                    data = state.run_gremlin(query)
                except ValueError as err:
                    self._error(400, "MalformedQueryException", str(err))
                    return
            status = {"message": "", "code": 200, "attributes": {}}
            result = {"data": graphson(data), "meta": {}}
            self._send(200, {"requestId": str(uuid.uuid4()), "status": status, "result": result})

        def do_GET(self) -> None:  # noqa: N802
            load_id = urlparse(self.path).path.rsplit("/", 1)[-1]
            with state.lock:
                if load_id not in state.loads:
                    self._error(400, "BadRequestException", f"no load {load_id}")
                    return
                payload = state.load_status(load_id)
            self._send(200, {"status": "200 OK", "payload": payload})

    return Handler


class StandIn:
    """The server on 127.0.0.1 (an ephemeral port) and its state; ``close()`` stops it."""

    def __init__(self) -> None:
        self.state = Neptune()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(self.state))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
