"""A static HTML report of one run: funnels, data quality, plots and a gallery of similar products.

    python -m jobs.run_report --workdir W --reports R --run-date D --output W/report \
        [--gallery-size 8] [--neighbours 6] [--images-root S/images] [--interactions S/interactions]

Reads the stages' run reports and quality results (``R/<stage>/dt=D.json``, ``dt=D.quality.json``),
small aggregates of the outputs under ``W`` (NCF train/test, similarity edges, the Gremlin export) and a
sample of product images, and writes ``<output>/index.html``: one self-contained file (inline CSS and
SVG charts, thumbnails as data URIs, no script, nothing fetched), readable offline and safe to mail.

The gallery shows each sampled product beside its closest products as the shop page would (read back
from the exported Gremlin CSVs, best first in the metric's direction: the similarity report's
``higher_is_closer``), and a product whose image failed to embed or cannot be read as a placeholder tile
saying why. The page itself is rendered by :mod:`jobs.render.report_page` (pure: data in, HTML out).

A missing input (a stage that did not run, an output that is not there) is a note in its section, not
a failure: the report is most useful precisely when a run went wrong.
"""

from __future__ import annotations

import argparse
import base64
import io
import logging
import os
import posixpath
import re
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.common import outputs, storage
from jobs.common.cli import JobError, job_parser, non_negative_int, positive_int, run
from jobs.common.quality import quality_uri
from jobs.common.report import report_uri
from jobs.common.spark import get_spark
from jobs.render.report_page import GalleryRow, Section, Tile, render_page
from jobs.transforms import report_stats
from schemas import embeddings as embeddings_schema
from schemas import gremlin
from schemas import interactions as interactions_schema
from schemas import similarity as similarity_schema

LOG = logging.getLogger("stylegraph.run_report")

STAGE = "report"
APP_NAME = "stylegraph-run-report"
PIPELINE_STAGES = ("preprocess", "embed", "similarity", "export", "validate")
INDEX_HTML = "index.html"
DEFAULT_GALLERY_SIZE = 8
DEFAULT_NEIGHBOURS = 6  # what the shop page shows
DEFAULT_THUMB_PX = 136
SCORE_BINS = 20
MAX_IMAGE_BYTES = 20 * 1024 * 1024
FILE_COLUMN = "_file"

# Vertex and edge columns of the export, as headers.
V_ID, V_SKU, V_NAME = gremlin.ID, gremlin.VERTEX_PROPERTIES["sku"], gremlin.VERTEX_PROPERTIES["name"]
V_BRAND, V_CATEGORY = gremlin.VERTEX_PROPERTIES["brand"], gremlin.VERTEX_PROPERTIES["category"]
V_IMAGE, V_STATUS = gremlin.VERTEX_PROPERTIES["image"], gremlin.VERTEX_EMBEDDING_STATUS

# Placeholder reasons (the tile says why there is no picture).
NO_IMAGE_PATH = "no image path"
IMAGE_NOT_FOUND = "image not found"
IMAGE_OUTSIDE_ROOT = "image path outside the images root"
IMAGE_UNREADABLE = "image unreadable"
EMBED_FAILED = "image failed to embed"


# --------------------------------------------------------------------------------------------- arguments
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = job_parser("run_report", "Static HTML report of one pipeline run.", run_date_required=True)
    parser.add_argument("--output", required=True, help="report folder; writes <output>/index.html")
    parser.add_argument("--workdir", default=None, help="the run's work root (default: --output's parent)")
    parser.add_argument(
        "--reports", default=None, help="run reports root (default --report-dir or W/_reports)"
    )
    parser.add_argument("--gallery-size", type=non_negative_int, default=DEFAULT_GALLERY_SIZE)
    parser.add_argument("--neighbours", type=positive_int, default=DEFAULT_NEIGHBOURS)
    parser.add_argument(
        "--images-root",
        default=None,
        help="what vertex image paths are relative to (default: embed report's)",
    )
    parser.add_argument("--interactions", default=None, help="raw logs root, for the events-per-day plot")
    parser.add_argument("--thumb-px", type=positive_int, default=DEFAULT_THUMB_PX)
    parser.add_argument("--seed", type=int, default=0, help="which products the gallery samples")
    args = parser.parse_args(argv)
    if args.workdir is None:
        parent = posixpath.dirname(args.output.rstrip("/"))
        if not parent:
            raise JobError(f"--workdir is needed: --output {args.output} has no parent folder")
        args.workdir = parent
    args.reports = args.reports or args.report_dir or storage.join(args.workdir, "_reports")
    return args


# ------------------------------------------------------------------------------------------------ inputs
def read_json_or_none(uri: str) -> dict[str, Any] | None:
    if not storage.exists(uri):
        return None
    try:
        return storage.read_json(uri)
    except ValueError as err:  # a half-written or foreign file: say so on the page
        LOG.warning("%s is not JSON: %s", uri, err)
        return {"unreadable": str(err)}


def read_stage_reports(reports_root: str, run_date: str) -> dict[str, dict[str, Any] | None]:
    return {stage: read_json_or_none(report_uri(reports_root, stage, run_date)) for stage in PIPELINE_STAGES}


def read_quality(reports_root: str, run_date: str) -> dict[str, dict[str, Any] | None]:
    return {stage: read_json_or_none(quality_uri(reports_root, stage, run_date)) for stage in PIPELINE_STAGES}


def _parquet(spark: SparkSession, uri: str) -> DataFrame | None:
    return spark.read.parquet(storage.read_path(uri)) if storage.list_files(uri, (".parquet",)) else None


def _gremlin_csv(spark: SparkSession, uri: str) -> DataFrame | None:
    if not storage.list_files(uri, tuple(gremlin.FILE_SUFFIX.values())):
        return None
    options = {**gremlin.GREMLIN_CSV_WRITE_OPTIONS, "multiLine": "true"}
    return spark.read.options(**options).csv(storage.read_path(uri))


def _rows(df: DataFrame) -> list[tuple]:
    return [tuple(row) for row in df.collect()]  # the aggregates are a few dozen rows at most


def ncf_stats(spark: SparkSession, workdir: str, run_date: str) -> dict[str, Section]:
    """Train/test sizes by label and the user/item degree distributions of the positives."""
    train = _parquet(spark, storage.partition_uri(workdir, "ncf/train", run_date))
    test = _parquet(spark, storage.partition_uri(workdir, "ncf/test", run_date))
    if train is None or test is None:
        missing = Section(
            missing=f"no NCF train/test sets under {storage.join(workdir, 'ncf')} for {run_date}"
        )
        return {"sizes": missing, "user_degree": missing, "item_degree": missing}
    columns = (interactions_schema.USER_IDX, interactions_schema.ITEM_IDX, interactions_schema.LABEL)
    both = train.select(*columns).unionByName(test.select(*columns))
    sizes = {
        name: {float(label): int(n) for label, n in _rows(df.transform(report_stats.label_counts))}
        for name, df in (("train", train), ("test", test))
    }
    return {
        "sizes": Section(sizes),
        "user_degree": Section(_rows(report_stats.degree_histogram(both, interactions_schema.USER_IDX))),
        "item_degree": Section(_rows(report_stats.degree_histogram(both, interactions_schema.ITEM_IDX))),
    }


def similarity_stats(
    spark: SparkSession, workdir: str, run_date: str, products: int | None
) -> dict[str, Section]:
    """Score histogram and neighbours per product of the similarity edges."""
    edges_uri = storage.partition_uri(workdir, "style/similarity", run_date)
    edges = _parquet(spark, edges_uri)
    if edges is None:
        missing = Section(missing=f"no similarity edges under {edges_uri}")
        return {"scores": missing, "neighbours": missing}
    low, high = edges.transform(report_stats.finite_range, similarity_schema.SCORE).first()
    if low is None:
        scores = Section(missing="no finite similarity score")
    else:
        histogram = report_stats.value_histogram(
            edges, similarity_schema.SCORE, low=low, high=high, bins=SCORE_BINS
        )
        counts = dict(_rows(histogram))
        width = (high - low) / SCORE_BINS if high > low else 1.0
        scores = Section(
            [(low + b * width, low + (b + 1) * width, counts.get(b, 0)) for b in range(SCORE_BINS)]
        )
    per_product = _rows(report_stats.neighbour_count_histogram(edges, similarity_schema.SRC))
    with_edges = sum(n for _, n in per_product)
    if products is not None and products > with_edges:
        per_product = [(0, products - with_edges), *per_product]
    return {"scores": scores, "neighbours": Section(per_product)}


def events_stats(spark: SparkSession, interactions: str | None) -> Section:
    if not interactions:
        return Section(missing="raw logs not given (--interactions)")
    if not storage.list_files(interactions):
        return Section(missing=f"no log files under {interactions}")
    lines = spark.read.text(storage.read_path(interactions), recursiveFileLookup=True).select(
        F.input_file_name().alias(FILE_COLUMN)
    )
    return Section(_rows(report_stats.events_per_day(lines, FILE_COLUMN)))


# ----------------------------------------------------------------------------------------------- gallery
def thumbnail_data_uri(uri: str, px: int) -> tuple[str | None, str | None]:
    """A JPEG thumbnail of an image file as a data URI, or ``(None, why not)``."""
    from PIL import Image

    if not storage.exists(uri):
        return None, IMAGE_NOT_FOUND
    try:
        fs, path = storage.filesystem(uri)
        if fs.get_file_info(path).size > MAX_IMAGE_BYTES:
            return None, f"{IMAGE_UNREADABLE}: larger than {MAX_IMAGE_BYTES // 2**20} MB"
        with fs.open_input_file(path) as handle:
            data = handle.read()
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (px, px))  # JPEG: decode at reduced size
            picture = image.convert("RGB")
        picture.thumbnail((px, px))
        out = io.BytesIO()
        picture.save(out, format="JPEG", quality=82)
    except Exception as err:  # broken, truncated, a bomb, not an image: the tile says so
        message = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", posixpath.basename(uri), str(err))
        return None, f"{IMAGE_UNREADABLE}: {type(err).__name__}: {message}"
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii"), None


def _image_uri(images_root: str | None, value: str | None) -> tuple[str | None, str | None]:
    """The image file of a vertex's image path under the images root, or ``(None, why not)``: a path
    that is absolute, a URL, leaves the root with ``..`` or (locally) through a symlink is not read."""
    if not value:
        return None, NO_IMAGE_PATH
    if not images_root:
        return None, f"{IMAGE_OUTSIDE_ROOT}: no images root (--images-root or the embed report's)"
    text = str(value)
    rel = posixpath.normpath(text)
    is_outside = rel == ".." or rel.startswith("../") or text.startswith(("/", "\\"))
    if is_outside or "://" in text or "\x00" in text:
        return None, f"{IMAGE_OUTSIDE_ROOT}: {text[:200]!r}"
    uri = storage.join(storage.resolve(images_root), rel)
    if not storage.is_remote(uri):
        root = os.path.realpath(storage.local_path(images_root))
        if not os.path.realpath(storage.local_path(uri)).startswith(root.rstrip("/") + "/"):
            return None, f"{IMAGE_OUTSIDE_ROOT}: {text[:200]!r} is a link that leaves it"
    return uri, None


def _tile(row: Mapping[str, Any], images_root: str | None, px: int, thumbs: dict[str, tuple]) -> Tile:
    tile = Tile(product_id=row[V_ID], sku=row.get(V_SKU), name=row.get(V_NAME), brand=row.get(V_BRAND))
    image, why_not = _image_uri(images_root, row.get(V_IMAGE))
    if image is None:
        tile.placeholder = why_not
    else:
        if image not in thumbs:
            thumbs[image] = thumbnail_data_uri(image, px)
        tile.image_uri, tile.placeholder = thumbs[image]
    return tile


@dataclass(frozen=True)
class GalleryOptions:
    """What the gallery shows: how many products, how many neighbours each, which way scores are better,
    where images are found, the thumbnail size, and the seed that picks the products."""

    size: int
    neighbours: int
    higher_is_closer: bool
    images_root: str | None
    px: int
    seed: int


def _pick_products(
    vertices: DataFrame, edges: DataFrame, size: int, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Products with edges to show with their neighbours, and products whose image failed to embed."""
    with_edges = vertices.join(
        edges.select(F.col(gremlin.FROM).alias(V_ID)).distinct(), on=V_ID, how="left_semi"
    )
    picked = [r.asDict() for r in report_stats.sample_by_hash(with_edges, V_ID, size, seed).collect()]
    failed: list[dict[str, Any]] = []
    if V_STATUS in vertices.columns:
        failed_df = vertices.filter(F.col(V_STATUS) == embeddings_schema.STATUS_ERROR)
        failed_rows = report_stats.sample_by_hash(failed_df, V_ID, max(1, size // 4), seed).collect()
        failed = [r.asDict() for r in failed_rows]
    return picked, failed


def _top_neighbours(
    edges: DataFrame, vertices: DataFrame, ids: list[Any], options: GalleryOptions
) -> list[dict[str, Any]]:
    """The closest products of each of ``ids`` with their vertex columns, by source then rank."""
    top = (
        edges.filter(F.col(gremlin.FROM).isin(ids))
        .transform(
            report_stats.filter_top_neighbours,
            src=gremlin.FROM,
            score=similarity_schema.SCORE,
            n=options.neighbours,
            higher_is_closer=options.higher_is_closer,
        )
        .join(vertices.withColumnRenamed(V_ID, gremlin.TO), on=gremlin.TO, how="left")
        .orderBy(gremlin.FROM, report_stats.NEIGHBOUR_RANK)
        .collect()
    )
    return [edge.asDict() for edge in top]


def _gallery_rows(
    picked: list[dict[str, Any]],
    top: list[dict[str, Any]],
    failed: list[dict[str, Any]],
    errors: Mapping[str, str],
    options: GalleryOptions,
) -> list[GalleryRow]:
    """A row per picked product with its neighbours' tiles, then a placeholder row per failed product."""
    thumbs: dict[str, tuple] = {}
    rows = []
    for product in picked:
        row = GalleryRow(_tile(product, options.images_root, options.px, thumbs))
        for edge in (e for e in top if e[gremlin.FROM] == product[V_ID]):
            tile = _tile({**edge, V_ID: edge[gremlin.TO]}, options.images_root, options.px, thumbs)
            tile.score, tile.rank = edge[similarity_schema.SCORE], edge[report_stats.NEIGHBOUR_RANK]
            row.neighbours.append(tile)
        rows.append(row)
    for product in failed:
        tile = _tile(product, options.images_root, options.px, thumbs)
        why = errors.get(product.get(V_SKU, "")) or "no error recorded"
        tile.image_uri, tile.placeholder = None, f"{EMBED_FAILED}: {why}"
        rows.append(GalleryRow(tile, note="no similar products: the image could not be embedded"))
    return rows


def gallery(spark: SparkSession, export_uri: str, embeddings_uri: str, options: GalleryOptions) -> Section:
    """Sampled products with their closest products, read back from the Gremlin export."""
    vertices = _gremlin_csv(spark, storage.join(export_uri, gremlin.VERTICES_DIR))
    edges = _gremlin_csv(spark, storage.join(export_uri, gremlin.EDGES_DIR))
    if vertices is None or edges is None:
        return Section(missing=f"no Gremlin export under {export_uri}")
    if options.size == 0:
        return Section([])
    edges = edges.select(
        F.col(gremlin.FROM),
        F.col(gremlin.TO),
        F.col(gremlin.EDGE_SCORE).cast("double").alias(similarity_schema.SCORE),
    )
    wanted = [
        c for c in (V_ID, V_SKU, V_NAME, V_BRAND, V_CATEGORY, V_IMAGE, V_STATUS) if c in vertices.columns
    ]
    vertices = vertices.select(*wanted)
    picked, failed = _pick_products(vertices, edges, options.size, options.seed)
    top = _top_neighbours(edges, vertices, [r[V_ID] for r in picked], options)
    errors = embed_errors(spark, embeddings_uri, [r[V_SKU] for r in failed if r.get(V_SKU)])
    return Section(_gallery_rows(picked, top, failed, errors, options))


def embed_errors(spark: SparkSession, embeddings_uri: str, skus: list[str]) -> dict[str, str]:
    """The embed job's error message per sku (a handful of skus)."""
    if not skus:
        return {}
    embeddings_df = _parquet(spark, embeddings_uri)
    if embeddings_df is None:
        return {}
    sku, error = embeddings_schema.SKU, embeddings_schema.ERROR
    rows = embeddings_df.filter(F.col(sku).isin(skus)).select(sku, error).collect()
    return {r[sku]: r[error] for r in rows if r[error]}


# ------------------------------------------------------------------------------------------------- main
def _direction(similarity_report: dict[str, Any] | None, export_uri: str) -> bool:
    """Which way scores are better: the similarity report, else the export manifest, else higher."""
    if similarity_report and "higher_is_closer" in similarity_report:
        return bool(similarity_report["higher_is_closer"])
    manifest = read_json_or_none(storage.join(export_uri, gremlin.MANIFEST_NAME)) or {}
    return bool(manifest.get("higher_is_closer", True))


def plot_sections(
    ncf: Mapping[str, Section],
    similarity: Mapping[str, Section],
    events: Section,
    metric: str,
    higher_is_closer: bool,
) -> dict[str, Section]:
    """The plots by name, as :func:`jobs.render.report_page.render_page` takes them."""
    return {
        "events": events,
        "user_degree": ncf["user_degree"],
        "item_degree": ncf["item_degree"],
        "scores": similarity["scores"],
        "score_axis": Section(f"{metric} ({'higher' if higher_is_closer else 'lower'} is closer)"),
        "neighbours": similarity["neighbours"],
    }


def _publish_page(output: str, page: str) -> str:
    """Stage ``<output>/index.html`` and swap the folder into place; returns the index.html written."""
    _, run_folder = storage.start_staging(posixpath.dirname(output.rstrip("/")) or ".", STAGE)
    staged = storage.join(run_folder, "report")
    try:
        storage.write_text(storage.join(staged, INDEX_HTML), page)
        storage.publish(staged, output, owner=outputs.folder_marker(STAGE))
    finally:
        storage.finish_staging(run_folder)
    return storage.join(output, INDEX_HTML)


def _summary(
    *,
    run_date: str,
    output: str,
    started: float,
    reports: Mapping[str, Any],
    quality: Mapping[str, Any],
    gallery_section: Section,
    page: str,
) -> dict[str, Any]:
    """Log the report written and return the run's summary."""
    tiles = [t for row in gallery_section.data or [] for t in (row.product, *row.neighbours)]
    LOG.info(
        "report: %s (%d gallery tiles, %d placeholders)",
        output,
        len(tiles),
        sum(t.image_uri is None for t in tiles),
    )
    return {
        "stage": STAGE,
        "run_date": run_date,
        "output": output,
        "seconds": round(time.time() - started, 3),
        "stages_reported": sorted(k for k, v in reports.items() if v),
        "quality_results": sorted(k for k, v in quality.items() if v),
        "gallery_products": len(gallery_section.data or []),
        "gallery_tiles": len(tiles),
        "placeholders": sum(t.image_uri is None for t in tiles),
        "bytes": len(page.encode("utf-8")),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Build the report; returns a summary (``stage`` "report", ``output`` the index.html written)."""
    started = time.time()
    args = parse_args(argv)
    run_date = str(args.run_date)
    outputs.check_output(
        STAGE,
        args.output,
        inputs={
            "--reports": args.reports,
            "--interactions": args.interactions,
            "--images-root": args.images_root,
            "--workdir ncf": storage.join(args.workdir, "ncf"),
            "--workdir style": storage.join(args.workdir, "style"),
        },
    )
    spark = get_spark(APP_NAME, inputs=[args.interactions, args.workdir])
    reports = read_stage_reports(args.reports, run_date)
    quality = read_quality(args.reports, run_date)
    similarity_report = reports.get("similarity") or {}
    export_uri = storage.partition_uri(args.workdir, "style/gremlin", run_date)
    higher_is_closer = _direction(similarity_report, export_uri)
    options = GalleryOptions(
        size=args.gallery_size,
        neighbours=args.neighbours,
        higher_is_closer=higher_is_closer,
        images_root=args.images_root or (reports.get("embed") or {}).get("images_root"),
        px=args.thumb_px,
        seed=args.seed,
    )
    embeddings_uri = storage.partition_uri(args.workdir, "style/embeddings", run_date)
    products = similarity_report.get("products")
    # The sections read different outputs, and each of their queries is small: one at a time, a query
    # mostly waits on the driver's planning and scheduling. Side by side they fill both cores.
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="report") as pool:
        gallery_future = pool.submit(gallery, spark, export_uri, embeddings_uri, options)
        ncf_future = pool.submit(ncf_stats, spark, args.workdir, run_date)
        similarity_future = pool.submit(
            similarity_stats, spark, args.workdir, run_date, products if isinstance(products, int) else None
        )
        events_future = pool.submit(events_stats, spark, args.interactions)
        ncf, similarity, events = ncf_future.result(), similarity_future.result(), events_future.result()
        metric = similarity_report.get("metric", "score")
        plots = plot_sections(ncf, similarity, events, metric, higher_is_closer)
        gallery_section = gallery_future.result()
    page = render_page(
        run_date=run_date,
        workdir=args.workdir,
        reports=reports,
        quality=quality,
        plots=plots,
        sizes=ncf["sizes"],
        gallery_section=gallery_section,
        higher_is_closer=higher_is_closer,
        neighbours=args.neighbours,
        px=args.thumb_px,
    )
    output = _publish_page(args.output, page)
    return _summary(
        run_date=run_date, output=output, started=started, reports=reports, quality=quality,
        gallery_section=gallery_section, page=page,
    )


if __name__ == "__main__":
    raise SystemExit(run(main))
