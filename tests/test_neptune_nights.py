"""Nights against a local Neptune stand-in (tests/neptune_standin.py): the export job writes what changes,
jobs.neptune_load applies it, and the graph ends equal to the night's export.

The exports are made by the real export job from small hand-made catalogs and similarity edges. "Equal to
the export" is checked against a second, empty stand-in that loads the night's whole export: same vertex
and edge ids, labels, ends and typed property values.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobs import export_gremlin, neptune_load
from jobs.common import graph_marker as gm
from jobs.common import neptune_data as nd
from jobs.common.cli import JobError
from tests.neptune_standin import StandIn
from tests.test_export_gremlin import RAW_EDGE_SCHEMA, write_catalog

ROLE = "arn:aws:iam::123456789012:role/NeptuneLoadFromS3"
REGION = "eu-west-1"
HOSTILE = 'Q"1,x\nline'

# sku, name, brand, category, subcategory, image_path
NIGHT_1 = [
    ["A1", 'Boot, "Chelsea"', "Acme", "Shoes", "Boots", "a1.jpg"],
    [HOSTILE, "quoted", "Brand\\", "Sandals", "Flat", "q.jpg"],
    ["B2", "Loafer", "Brand", "Shoes", "Loafers", "b2.jpg"],
    ["C3", "old name", "Cee", "Shoes", "Boots", "c3.jpg"],
    ["D4", "leaves tomorrow", "Dee", "Shoes", "Boots", "d4.jpg"],
]
# D4 leaves, F6 arrives, C3 is renamed, B2 loses its brand (a property to clear).
NIGHT_2 = [
    ["A1", 'Boot, "Chelsea"', "Acme", "Shoes", "Boots", "a1.jpg"],
    [HOSTILE, "quoted", "Brand\\", "Sandals", "Flat", "q.jpg"],
    ["B2", "Loafer", "", "Shoes", "Loafers", "b2.jpg"],
    ["C3", "new name", "Cee", "Shoes", "Boots", "c3.jpg"],
    ["F6", "new product", "Eff", "Shoes", "Boots", "f6.jpg"],
]
# F6 is renamed again, A1 leaves, G7 arrives.
NIGHT_3 = [
    [HOSTILE, "quoted", "Brand\\", "Sandals", "Flat", "q.jpg"],
    ["B2", "Loafer", "", "Shoes", "Loafers", "b2.jpg"],
    ["C3", "new name", "Cee", "Shoes", "Boots", "c3.jpg"],
    ["F6", "renamed", "Eff", "Shoes", "Boots", "f6.jpg"],
    ["G7", "seven", "Gee", "Shoes", "Boots", "g7.jpg"],
]
# src, dst, score, rank (top-2)
EDGES_1 = [
    ("A1", HOSTILE, 0.9, 1),
    ("A1", "B2", 0.8, 2),
    (HOSTILE, "A1", 0.9, 1),
    (HOSTILE, "D4", 0.5, 2),
    ("B2", "C3", 0.7, 1),
    ("B2", "A1", 0.6, 2),
    ("C3", "D4", 0.7, 1),
    ("D4", "C3", 0.7, 1),
]
# Neighbours reshuffled: A1's second changes, a score changes, D4's edges go, F6's come.
EDGES_2 = [
    ("A1", HOSTILE, 0.9, 1),
    ("A1", "F6", 0.85, 2),
    (HOSTILE, "A1", 0.9, 1),
    (HOSTILE, "F6", 0.4, 2),
    ("B2", "C3", 0.75, 1),
    ("B2", "A1", 0.6, 2),
    ("C3", "F6", 0.7, 1),
    ("F6", "C3", 0.7, 1),
]
EDGES_3 = [
    (HOSTILE, "G7", 0.9, 1),
    ("B2", "C3", 0.75, 1),
    ("C3", "F6", 0.7, 1),
    ("F6", "G7", 0.6, 1),
    ("G7", "F6", 0.6, 1),
]
DATES = {1: "2024-04-01", 2: "2024-04-02", 3: "2024-04-03"}
NIGHTS = {1: (NIGHT_1, EDGES_1), 2: (NIGHT_2, EDGES_2), 3: (NIGHT_3, EDGES_3)}


@pytest.fixture()
def neptune(monkeypatch: pytest.MonkeyPatch) -> Iterator[StandIn]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    stand_in = StandIn()
    yield stand_in
    stand_in.close()


def export_night(spark: Any, root: Path, night: int) -> Path:
    """Run the export job for one night under ``root/gremlin/dt=<date>`` (it diffs against the markers)."""
    catalog, edges = NIGHTS[night]
    inputs = root / f"inputs-{night}"
    inputs.mkdir(parents=True, exist_ok=True)
    write_catalog(inputs / "catalog.csv", catalog)
    spark.createDataFrame(edges, RAW_EDGE_SCHEMA).write.mode("overwrite").parquet(str(inputs / "edges"))
    output = root / "gremlin" / f"dt={DATES[night]}"
    export_gremlin.main(
        [
            "--catalog",
            str(inputs / "catalog.csv"),
            "--edges",
            str(inputs / "edges"),
            "--output",
            str(output),
            "--run-date",
            DATES[night],
            "--report-dir",
            str(root / "reports"),
            "--quality",
            "off",
        ]
    )
    return output


def load_argv(endpoint: str, source: Any, *extra: str) -> list[str]:
    return [
        "--source",
        str(source),
        "--endpoint",
        endpoint,
        "--iam-role-arn",
        ROLE,
        "--region",
        REGION,
        "--run-date",
        "2024-04-30",
        "--poll-initial",
        "0.01",
        "--poll-max",
        "0.02",
        "--max-attempts",
        "1",
        "--backoff-initial",
        "0.01",
        *extra,
    ]


def whole_export_graph(source: Any) -> dict[str, Any]:
    """The graph an empty Neptune holds after bulk-loading the export's vertices/ and edges/."""
    fresh = StandIn()
    try:
        for folder in ("vertices", "edges"):
            fresh.state.start_load(
                {"source": f"{source}/{folder}/", "updateSingleCardinalityProperties": True}
            )
        assert [load["status"] for load in fresh.state.loads.values()] == ["LOAD_COMPLETED"] * 2
        return fresh.state.graph.snapshot()
    finally:
        fresh.close()


def manifest(export: Path) -> dict[str, Any]:
    return json.loads((export / "manifest.json").read_text())


def marker(root: Path, name: str = "_LOADED.json") -> dict[str, Any] | None:
    path = root / "gremlin" / name
    return json.loads(path.read_text()) if path.exists() else None


def test_night_two_changes_the_graph_to_its_export_and_a_half_done_night_reruns(spark, tmp_path, neptune):
    state = neptune.state
    night_1 = export_night(spark, tmp_path, 1)
    assert manifest(night_1)["diff"]["is_full_load"] is True
    result = neptune_load.main(load_argv(neptune.endpoint, night_1))
    assert result["plan"]["is_full_load"] is True
    assert state.graph.snapshot() == whole_export_graph(night_1)
    assert [(r["source"], r["mode"], r.get("dependencies")) for r in state.load_requests] == [
        (f"{night_1}/vertices/", "NEW", None),
        (f"{night_1}/edges/", "NEW", [result["vertices"]["loadId"]]),
    ]
    assert marker(tmp_path)["export"] == str(night_1)
    assert not (tmp_path / "gremlin" / "_LOADING.json").exists()

    night_2 = export_night(spark, tmp_path, 2)
    diff = manifest(night_2)["diff"]
    assert diff["bases"] == [{"role": "loaded", **gm.export_ref(str(night_1), DATES[1]).as_dict()}]
    assert diff["counts"] == {
        "vertices": {
            "added": 1,  # F6
            "changed": 2,  # C3 renamed, B2 lost its brand
            "unchanged": 2,
            "to_load": 3,
            "to_remove": 1,  # D4
            "properties_to_clear": 1,  # B2's brand
        },
        "edges": {
            "added": 4,  # A1->F6, Q->F6, C3->F6, F6->C3
            "changed": 1,  # B2->C3's score
            "unchanged": 3,
            "to_load": 5,
            "to_remove": 4,  # A1->B2, Q->D4, C3->D4, D4->C3
            "properties_to_clear": 0,
        },
    }

    report = json.loads((tmp_path / "reports" / "export" / f"dt={DATES[2]}.json").read_text())
    assert report["diff"] == {key: diff[key] for key in ("is_full_load", "reason", "bases", "counts")}

    # A dry run prints the plan and calls nothing.
    calls = (len(state.load_requests), len(state.queries))
    planned = neptune_load.main(load_argv(neptune.endpoint, night_2, "--dry-run"))
    assert planned["vertices"]["source"] == f"{night_2}/diff/vertices/"
    assert planned["edges"]["dependencies"] == [neptune_load.PLACEHOLDER_VERTEX_LOAD_ID]
    assert (len(state.load_requests), len(state.queries)) == calls

    # Night 2 fails half-way through its removals (one id a request: the third request fails).
    state.fail_gremlin_after = len(state.queries) + 2
    with pytest.raises(nd.DataApiError, match="InternalFailureException"):
        neptune_load.main(load_argv(neptune.endpoint, night_2, "--batch-size", "1"))
    assert marker(tmp_path)["export"] == str(night_1)  # unchanged
    assert marker(tmp_path, "_LOADING.json")["attempts"][0]["export"] == str(night_2)
    assert state.graph.snapshot() != whole_export_graph(night_2)

    state.fail_gremlin_after = None
    loads_before = len(state.load_requests)
    result = neptune_load.main(load_argv(neptune.endpoint, night_2, "--batch-size", "1"))
    assert state.graph.snapshot() == whole_export_graph(night_2)
    assert [r["source"] for r in state.load_requests[loads_before:]] == [
        f"{night_2}/diff/vertices/",
        f"{night_2}/diff/edges/",
    ]
    assert all(r["updateSingleCardinalityProperties"] is True for r in state.load_requests)
    assert result["changes"] == {
        "vertices_cleared": 1,
        "edges_cleared": 0,
        "edges_removed": 4,
        "vertices_removed": 1,
    }
    assert result["counts"] == {"vertices": {"product": 5}, "edges": {"similar": 8}}
    assert marker(tmp_path)["export"] == str(night_2)
    assert not (tmp_path / "gremlin" / "_LOADING.json").exists()
    names = {v[2].get("sku"): v[2] for v in state.graph.snapshot()["vertices"].values()}
    assert names["C3"]["name"] == "new name" and "brand" not in names["B2"] and "D4" not in names

    # Run again: the marker already names night 2, so only the counts are checked.
    queries_before, loads_before = len(state.queries), len(state.load_requests)
    neptune_load.main(load_argv(neptune.endpoint, night_2))
    assert len(state.load_requests) == loads_before
    assert [q.split("(")[0] for q in state.queries[queries_before:]] == ["g.V", "g.E"]


def test_a_failed_load_is_covered_by_the_next_nights_diff(spark, tmp_path, neptune):
    state = neptune.state
    night_1 = export_night(spark, tmp_path, 1)
    neptune_load.main(load_argv(neptune.endpoint, night_1))
    night_2 = export_night(spark, tmp_path, 2)
    # Night 2's edge load stops after 2 records: vertices added, some edges in, nothing removed.
    state.fail_load_after_rows = {f"{night_2}/diff/edges": 2}
    with pytest.raises(neptune_load.LoadFailedError, match="LOAD_FAILED"):
        neptune_load.main(load_argv(neptune.endpoint, night_2))
    assert marker(tmp_path)["export"] == str(night_1)

    # Night 3 is exported before anyone reruns night 2: it diffs against both.
    night_3 = export_night(spark, tmp_path, 3)
    roles = [(base["role"], base["export"]) for base in manifest(night_3)["diff"]["bases"]]
    assert roles == [("loaded", str(night_1)), ("attempted", str(night_2))]
    neptune_load.main(load_argv(neptune.endpoint, night_3))
    assert state.graph.snapshot() == whole_export_graph(night_3)
    assert marker(tmp_path)["export"] == str(night_3)


def test_a_diff_against_another_graph_is_refused_and_full_is_checked(spark, tmp_path, neptune):
    state = neptune.state
    night_1 = export_night(spark, tmp_path, 1)
    neptune_load.main(load_argv(neptune.endpoint, night_1))
    night_2 = export_night(spark, tmp_path, 2)
    night_3 = export_night(spark, tmp_path, 3)  # night 2 is not loaded yet: diffs against night 1
    neptune_load.main(load_argv(neptune.endpoint, night_2))
    assert marker(tmp_path)["export"] == str(night_2)
    # A backfill of an older night does not roll the graph back.
    graph_before = state.graph.snapshot()
    older = r"export of 2024-04-01, older than the one the graph holds \(2024-04-02"
    with pytest.raises(JobError, match=older):
        neptune_load.main(load_argv(neptune.endpoint, night_1))
    assert state.graph.snapshot() == graph_before
    assert marker(tmp_path)["export"] == str(night_2)

    with pytest.raises(
        JobError, match=r"diff is against .*dt=2024-04-01.* but the graph may hold .*dt=2024-04-02"
    ):
        neptune_load.main(load_argv(neptune.endpoint, night_3))
    # --full loads night 3 whole and removes nothing: night 2's leftovers fail the check, with numbers.
    with pytest.raises(neptune_load.GraphMismatchError) as err:
        neptune_load.main(load_argv(neptune.endpoint, night_3, "--full"))
    assert str(err.value) == (
        "the graph does not match the export: vertices 'product': graph 6, export 5; "
        "edges 'similar': graph 11, export 5"
    )
    assert marker(tmp_path)["export"] == str(night_2)

    # The way back: export night 3 again (it diffs against night 2 and the attempted night 3), load it.
    night_3 = export_night(spark, tmp_path, 3)
    roles = [base["role"] for base in manifest(night_3)["diff"]["bases"]]
    assert roles == ["loaded", "attempted"]
    neptune_load.main(load_argv(neptune.endpoint, night_3))
    assert state.graph.snapshot() == whole_export_graph(night_3)


def test_loads_from_s3_and_keeps_the_marker_there(spark, tmp_path, neptune, aws_env):
    import boto3

    local = export_night(spark, tmp_path, 1)
    boto3.client("s3").create_bucket(Bucket="shop-graph")
    s3 = boto3.client("s3")
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        s3.upload_file(str(path), "shop-graph", f"style/gremlin/{local.name}/{path.relative_to(local)}")
    source = f"s3://shop-graph/style/gremlin/{local.name}"
    # The stand-in reads S3 through the same moto endpoint.
    neptune_load.main(load_argv(neptune.endpoint, source))
    assert neptune.state.graph.snapshot() == whole_export_graph(local)
    loaded = json.loads(s3.get_object(Bucket="shop-graph", Key="style/gremlin/_LOADED.json")["Body"].read())
    assert (loaded["export"], loaded["run_date"]) == (source, DATES[1])
    assert loaded["manifest_sha256"] == gm.manifest_sha256(str(local))

    # Removal files are streamed from S3 too (gzip, RFC 4180 quoting of a hostile id).
    body = '~id\n"similar:9:product:Q->product:""1,\nx"\nproduct:B2\nproduct:C3\n'
    s3.put_object(Bucket="shop-graph", Key="ids/part-00000.csv.gz", Body=gzip.compress(body.encode()))
    assert list(neptune_load.id_batches(["s3://shop-graph/ids/part-00000.csv.gz"], 2)) == [
        ['similar:9:product:Q->product:"1,\nx', "product:B2"],
        ["product:C3"],
    ]


def test_throttling_and_conflicts_are_retried_with_backoff_and_other_errors_are_not(neptune, caplog):
    from jobs.neptune_load import make_client

    state = neptune.state
    state.graph.apply_record({"~id": "v'1\\\n", "~label": "product"}, update_single=True)
    state.graph.apply_record({"~id": "v2", "~label": "product"}, update_single=True)
    state.gremlin_faults = [
        (429, "TooManyRequestsException"),
        (500, "ThrottlingException"),
        (500, "ConcurrentModificationException"),
    ]
    sleeps: list[float] = []
    api = nd.DataApi(
        make_client(neptune.endpoint, REGION, max_attempts=1),
        nd.Pacing(backoff_initial_s=1.0, backoff_max_s=3.0),
        sleep=sleeps.append,
    )
    with caplog.at_level(logging.WARNING, logger="stylegraph.neptune_data"):
        assert api.drop(nd.VERTEX, [["v'1\\\n", "v2"]]) == 2
    assert state.graph.vertices == {}
    assert sleeps == [1.0, 2.0, 3.0]
    assert (api.requests, api.retries) == (4, 3)
    assert state.queries[-1] == "g.V('v\\'1\\\\\\u000a','v2').drop()"

    state.gremlin_faults = [(400, "ConstraintViolationException")]
    with pytest.raises(nd.DataApiError, match="HTTP 400 ConstraintViolationException"):
        api.drop(nd.VERTEX, [["v3"]])
    with pytest.raises(nd.DataApiError, match="MalformedQueryException"):
        api.execute("g.V().drop()", "dropping everything")  # not a form the job sends


def test_pacing_spaces_requests_by_the_rate(neptune):
    from jobs.neptune_load import make_client

    now = [100.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    api = nd.DataApi(
        make_client(neptune.endpoint, REGION, max_attempts=1),
        nd.Pacing(rate=4.0),
        sleep=sleep,
        clock=lambda: now[0],
    )
    api.drop(nd.EDGE, [["a"], ["b"], ["c"]])
    assert sleeps == [0.25, 0.25]
    assert len(neptune.state.queries) == 3


def test_an_unreadable_marker_or_a_manifest_that_is_not_an_exports_is_named(spark, tmp_path, neptune):
    night_1 = export_night(spark, tmp_path, 1)
    (tmp_path / "gremlin" / "_LOADED.json").mkdir()  # a folder where the marker belongs
    with pytest.raises(JobError, match=r"_LOADED.json: not a graph marker \(OSError: .* is a directory"):
        neptune_load.main(load_argv(neptune.endpoint, night_1))
    (tmp_path / "gremlin" / "_LOADED.json").rmdir()
    (night_1 / "manifest.json").write_text('{"run_date": "2024-04-01"}')
    with pytest.raises(JobError, match=r"manifest.json: not an export manifest \(KeyError"):
        neptune_load.main(load_argv(neptune.endpoint, night_1))
    assert neptune.state.loads == {}
