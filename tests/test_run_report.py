"""The HTML run report: built from small hand-made outputs, checked as HTML and in a real headless browser."""

from __future__ import annotations

import csv
import gzip
import io
import json
import shutil
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest
from chispa import assert_df_equality
from PIL import Image
from pyspark.sql import types as T

from jobs import run_report
from jobs.common import quality
from jobs.render import report_page
from jobs.transforms import report_stats as rs
from schemas import gremlin as G

RUN_DATE = "2024-03-31"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
HOSTILE_NAME = '<script>alert("pwn")</script> & "Boots, \'x\'"'
HOSTILE_BRAND = "<img src=x onerror=alert(1)>"
EMBED_ERROR = "decode: cannot identify image file <x.jpg>"
# (from, to, score): A has 8 edges, the page shows 6; B has 2.
EDGES = [
    ("A", "B", 0.9),
    ("A", "C", 0.8),
    ("A", "D", 0.95),
    ("A", "E", 0.3),
    ("A", "G", 0.7),
    ("A", "H", 0.85),
    ("A", "I", 0.1),
    ("A", "J", 0.6),
    ("B", "A", 0.9),
    ("B", "D", 0.5),
]
# sku -> (name, brand, image file or None, status); C's file is missing, B's is broken, F failed to embed.
PRODUCTS = {
    "A": (HOSTILE_NAME, HOSTILE_BRAND, "Boots/A.jpg", "ok"),
    "B": ("Bee boot", "Acme", "Boots/B.jpg", "ok"),
    "C": ("Cee shoe", "Acme", "Shoes/C.jpg", "ok"),
    "D": ("Dee", "Zed", "Shoes/D.jpg", "ok"),
    "E": ("Eee", "Zed", "Shoes/E.jpg", "ok"),
    "F": ("Eff", "Zed", "Shoes/F.jpg", "error"),
    "G": ("Gee", "Zed", "Shoes/G.jpg", "ok"),
    "H": ("Aitch", "Zed", "Shoes/H.jpg", "ok"),
    "I": ("Eye", "Zed", "Shoes/I.jpg", "ok"),
    "J": ("Jay", "Zed", None, "ok"),
}
# NCF rows: user -> positives in train (test adds one more positive per user), plus negatives.
TRAIN_POSITIVES = {0: 1, 1: 2, 2: 3, 3: 5}


def _gz_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")  # RFC 4180 quoting, as the export writes
    writer.writerow(header)
    writer.writerows(rows)
    path.write_bytes(gzip.compress(text.getvalue().encode("utf-8")))


@pytest.fixture(scope="module")
def run_dirs(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    images, work, reports = root / "S" / "images", root / "W", root / "W" / "_reports"
    for i, (sku, (_, _, image, _)) in enumerate(sorted(PRODUCTS.items())):
        if image and sku not in ("B", "C"):
            (images / image).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (48, 32), (40 * i % 256, 90, 200 - 15 * i)).save(images / image, "JPEG")
    (images / "Boots" / "B.jpg").write_bytes(b"\xff\xd8 not really a jpeg")

    export = work / "style" / "gremlin" / f"dt={RUN_DATE}"
    v_header = [G.ID, G.LABEL, *G.VERTEX_PROPERTIES.values(), G.VERTEX_EMBEDDING_STATUS]
    _gz_csv(
        export / "vertices" / "part-00000-x.csv.gz",
        v_header,
        [
            [f"product:{s}", "product", s, n, b, "Shoes", "Sub", i or "", st]
            for s, (n, b, i, st) in PRODUCTS.items()
        ],
    )
    _gz_csv(
        export / "edges" / "part-00000-x.csv.gz",
        list(G.EDGE_HEADER_ALL_PAIRS),
        [
            [f"similar:{a}->{b}", f"product:{a}", f"product:{b}", "similar", repr(s), "cosine", "true"]
            for a, b, s in EDGES
        ],
    )
    spark.createDataFrame(
        [(a, b, s) for a, b, s in EDGES], "src string, dst string, score double"
    ).write.parquet(str(work / "style" / "similarity" / f"dt={RUN_DATE}"))
    emb_rows = [
        (s, [1.0, 0.0] if st == "ok" else None, st, EMBED_ERROR if st == "error" else None)
        for s, (_, _, _, st) in PRODUCTS.items()
    ]
    spark.createDataFrame(
        emb_rows, "sku string, embedding array<float>, status string, error string"
    ).write.parquet(str(work / "style" / "embeddings" / f"dt={RUN_DATE}"))
    train = [(u, 10 + j, 1.0) for u, n in TRAIN_POSITIVES.items() for j in range(n)] + [
        (0, 1, 0.0),
        (1, 2, 0.0),
    ]
    test = [(u, 99, 1.0) for u in TRAIN_POSITIVES] + [(u, 98, 0.0) for u in TRAIN_POSITIVES]
    for name, rows in (("train", train), ("test", test)):
        spark.createDataFrame(rows, "user_idx int, item_idx int, label float").write.parquet(
            str(work / "ncf" / name / f"dt={RUN_DATE}")
        )
    logs = root / "S" / "interactions"
    (logs / "dt=2024-03-30").mkdir(parents=True)
    (logs / "dt=2024-03-30" / "a.jsonl").write_text('{"a":1}\n{"a":2}\n{"a":3}\n')
    (logs / f"dt={RUN_DATE}").mkdir(parents=True)
    (logs / f"dt={RUN_DATE}" / "b.jsonl.gz").write_bytes(gzip.compress(b'{"a":1}\n{"a":2}\n'))

    funnels = {
        "preprocess": {
            "rows_in": 5,
            "rows_out": 3,
            "rejected_by_reason": {"bad_json": 1},
            "dropped_by_reason": {"duplicate_event_id": 1},
        },
        "embed": {"rows_in": 10, "rows_out": 9, "rejected_by_reason": {"decode": 1}, "dropped_by_reason": {}},
    }
    for stage, funnel in funnels.items():
        details = {"images_root": str(images)} if stage == "embed" else {}
        report = {"stage": stage, "seconds": 1.5, "funnel": {**funnel, "is_balanced": True}, **details}
        (reports / stage).mkdir(parents=True, exist_ok=True)
        (reports / stage / f"dt={RUN_DATE}.json").write_text(json.dumps(report))
    (reports / "similarity").mkdir(parents=True)
    (reports / "similarity" / f"dt={RUN_DATE}.json").write_text(
        json.dumps(
            {
                "stage": "similarity",
                "metric": "cosine",
                "higher_is_closer": True,
                "products": 9,
                "funnel": {
                    "rows_in": 10,
                    "rows_out": 9,
                    "rejected_by_reason": {},
                    "dropped_by_reason": {"status_error": 1},
                    "is_balanced": True,
                },
            }
        )
    )
    # A real gate's results, with one recorded critical failure (warn mode) and one pass.
    quality.run_gate(
        "embed",
        {},
        reports_root=str(reports),
        run_date=RUN_DATE,
        thresholds=quality.QualityThresholds(mode=quality.MODE_WARN),
        context={"rows_in": 200, "rows_rejected": 40},
    )
    quality.run_gate(
        "similarity",
        {},
        reports_root=str(reports),
        run_date=RUN_DATE,
        context={"rows_in": 200, "rows_rejected": 2},
    )
    out = work / "report"
    summary = run_report.main(
        [
            "--workdir",
            str(work),
            "--reports",
            str(reports),
            "--run-date",
            RUN_DATE,
            "--output",
            str(out),
            "--gallery-size",
            "4",
            "--interactions",
            str(logs),
        ]
    )
    return {"root": root, "out": out, "summary": summary, "html": (out / "index.html").read_text("utf-8")}


class PageParser(HTMLParser):
    """Chart bars (by chart title), gallery rows (tile names, scores, placeholders) and every tag seen."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: dict[str, list[str]] = {}
        self.rows: list[list[dict]] = []
        self.tags: Counter = Counter()
        self._chart: str | None = None
        self._field: str | None = None
        self._in_gallery = False
        self._in_rect_title = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags[tag] += 1
        cls = a.get("class") or ""
        if tag == "svg":
            self._chart = a.get("aria-label")
            self.charts[self._chart] = []
        elif tag == "title" and self._chart:
            self._in_rect_title = True
        elif tag == "section":
            self._in_gallery = a.get("id") == "gallery"
        elif self._in_gallery and tag == "div" and cls == "row":
            self.rows.append([])
        elif self._in_gallery and tag == "figure":
            self.rows[-1].append({"img": None, "placeholder": None, "name": "", "score": ""})
        elif self._in_gallery and tag == "img":
            self.rows[-1][-1]["img"] = a.get("src")
        elif self._in_gallery and cls in ("placeholder", "name", "score"):
            self._field = cls
            self.rows[-1][-1][cls] = ""

    def handle_endtag(self, tag):
        if tag == "svg":
            self._chart = None
        elif tag == "title":
            self._in_rect_title = False
        elif tag == "div":
            self._field = None

    def handle_data(self, data):
        if self._in_rect_title and self._chart:
            self.charts[self._chart].append(data)
        elif self._field:
            self.rows[-1][-1][self._field] += data


def test_gallery_shows_neighbours_best_first_and_placeholders_saying_why(run_dirs):
    page = PageParser()
    page.feed(run_dirs["html"])
    by_main = {row[0]["name"]: row for row in page.rows}
    assert sorted(by_main) == sorted([HOSTILE_NAME, "Bee boot", "Eff"])

    def expected(src: str) -> list[tuple[str, str]]:
        best = sorted((e for e in EDGES if e[0] == src), key=lambda e: -e[2])[:6]
        return [(PRODUCTS[dst][0], f"#{i} · score {score}") for i, (_, dst, score) in enumerate(best, 1)]

    for src in ("A", "B"):
        row = by_main[PRODUCTS[src][0]]
        assert [(t["name"], t["score"]) for t in row[1:]] == expected(src)

    tiles = {t["name"]: t for row in page.rows for t in row}
    assert tiles["Bee boot"]["img"] is None
    assert tiles["Bee boot"]["placeholder"].startswith("image unreadable: UnidentifiedImageError")
    assert (tiles["Cee shoe"]["img"], tiles["Cee shoe"]["placeholder"]) == (None, "image not found")
    assert (tiles["Jay"]["img"], tiles["Jay"]["placeholder"]) == (None, "no image path")
    assert (tiles["Eff"]["img"], tiles["Eff"]["placeholder"]) == (
        None,
        f"image failed to embed: {EMBED_ERROR}",
    )
    assert by_main["Eff"][1:] == []
    shown = {name for name, t in tiles.items() if t["img"]}
    assert shown == {HOSTILE_NAME, "Dee", "Gee", "Aitch"}  # E and I are A's 7th and 8th best: not shown
    assert all(t["img"].startswith("data:image/jpeg;base64,") for t in tiles.values() if t["img"])
    assert run_dirs["summary"]["placeholders"] == 5  # B twice (main and neighbour of A), C, J, F


def test_page_is_self_contained_and_escapes_hostile_values(run_dirs):
    html_text = run_dirs["html"]
    page = PageParser()
    page.feed(html_text)
    assert "<script" not in html_text and HOSTILE_BRAND not in html_text
    assert (
        "&lt;script&gt;alert(&quot;pwn&quot;)&lt;/script&gt; &amp; &quot;Boots, &#x27;x&#x27;&quot;"
        in html_text
    )
    assert "&lt;img src=x onerror=alert(1)&gt;" in html_text
    assert {"script", "link", "iframe", "object"}.isdisjoint(page.tags)
    assert "http://" not in html_text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in html_text


def test_charts_show_the_aggregates_of_the_outputs(run_dirs):
    page = PageParser()
    page.feed(run_dirs["html"])
    degrees = Counter(n + 1 for n in TRAIN_POSITIVES.values())  # train positives + the test positive
    buckets = Counter(1 << (d.bit_length() - 1) for d in degrees.elements())
    label = {1: "1", 2: "2-3", 4: "4-7"}
    assert page.charts["User degree: users by positives (power-of-two buckets)"] == [
        f"{label[b]}: {buckets[b]}" for b in sorted(buckets)
    ]
    assert page.charts["Train/test rows by label"] == [
        f"train positives: {sum(TRAIN_POSITIVES.values())}",
        "train negatives: 2",
        "test positives: 4",
        "test negatives: 4",
    ]
    assert page.charts["Events per day"] == ["2024-03-30: 3", f"{RUN_DATE}: 2"]
    per_src = Counter(Counter(a for a, _, _ in EDGES).values())
    assert page.charts["Neighbours per product"] == [
        "0 neighbours: 7",
        *(f"{k} neighbours: {per_src[k]}" for k in sorted(per_src)),
    ]
    scores = page.charts["Similarity score distribution"]
    assert len(scores) == run_report.SCORE_BINS
    assert sum(int(s.rsplit(": ", 1)[1]) for s in scores) == len(EDGES)
    last_low = 0.1 + (run_report.SCORE_BINS - 1) * (0.95 - 0.1) / run_report.SCORE_BINS
    # 0.1 and 0.95 alone at the ends; bins 0.0425 wide get 3 decimals
    assert scores[0] == "0.100: 1" and scores[-1] == f"{last_low:.3f}: 1"
    assert page.charts["preprocess: rows"] == [
        "in: 5",
        "out: 3",
        "rejected: bad_json: 1",
        "dropped: duplicate_event_id: 1",
    ]
    assert 'embed <span class="badge bad">failed</span>' in run_dirs["html"]
    assert 'similarity <span class="badge good">passed</span>' in run_dirs["html"]
    assert "at most 10% of input rows rejected" in run_dirs["html"]
    assert "no report for this run" in run_dirs["html"]  # export and validate did not run


def test_report_of_an_empty_run_says_what_is_missing(spark, tmp_path):
    work = tmp_path / "W"
    summary = run_report.main(["--run-date", RUN_DATE, "--output", str(work / "report")])
    html_text = (work / "report" / "index.html").read_text("utf-8")
    assert summary["gallery_products"] == 0 and summary["stages_reported"] == []
    assert f"no Gremlin export under {work}/style/gremlin/dt={RUN_DATE}" in html_text
    assert "Events per day: not available (raw logs not given (--interactions))" in html_text
    assert html_text.count("no quality results for this run") == len(run_report.PIPELINE_STAGES)
    assert not (work / "_staging" / "report").exists() or not any((work / "_staging" / "report").iterdir())


@pytest.mark.parametrize("higher_is_closer", [True, False])
def test_top_neighbours_follow_the_metric_direction(spark, higher_is_closer):
    schema = T.StructType(
        [
            T.StructField("s", T.StringType()),
            T.StructField("d", T.StringType()),
            T.StructField("score", T.DoubleType()),
        ]
    )
    edges = spark.createDataFrame(
        [("a", "b", 0.5), ("a", "c", 0.1), ("a", "d", 0.9), ("e", "a", None)], schema
    )
    got = edges.transform(
        rs.filter_top_neighbours, src="s", score="score", n=2, higher_is_closer=higher_is_closer
    )
    rows = (
        [("a", "d", 0.9, 1), ("a", "b", 0.5, 2)]
        if higher_is_closer
        else [("a", "c", 0.1, 1), ("a", "b", 0.5, 2)]
    )
    expected = spark.createDataFrame(
        rows + [("e", "a", None, 1)],
        T.StructType([*schema.fields, T.StructField(rs.NEIGHBOUR_RANK, T.IntegerType(), False)]),
    )
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)


def test_report_in_a_headless_browser_has_no_errors_and_no_broken_images(run_dirs, tmp_path):
    from playwright.sync_api import sync_playwright

    index = run_dirs["out"] / "index.html"
    errors, requests = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(index.as_uri(), wait_until="load")
            images = page.evaluate(
                "Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])"
            )
            placeholders = page.locator(".placeholder").count()
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert [url for url in requests if not url.startswith(("file://", "data:"))] == []
    assert sorted(alt for alt, *_ in images) == sorted(
        [HOSTILE_NAME, HOSTILE_NAME, "Dee", "Dee", "Gee", "Aitch"]
    )
    assert all(complete and width > 0 and height > 0 for _, complete, width, height in images), images
    assert placeholders == 5
    assert (tmp_path / "report.png").stat().st_size > 10_000
    shutil.copy(tmp_path / "report.png", run_dirs["root"] / "report.png")


def test_a_run_embedded_with_random_weights_says_so_at_the_top() -> None:
    notice = report_page.render_weights_notice({"weights": "random:7"})
    assert notice == (
        '<p class="missing" id="random-weights">embeddings use random weights (random:7): the graph shows '
        "that the pipeline works, not which products look alike; production runs refuse them</p>"
    )
    assert report_page.render_weights_notice({"weights": "file:s3://b/resnet152.pt"}) == ""
    assert report_page.render_weights_notice({"weights": "imagenet"}) == ""
    assert report_page.render_weights_notice(None) == ""
