"""Deterministic sample data: interaction logs, a hostile product catalog and drawn product images.

Every other job is built and tested against what this writes under the sample root ``S``::

    S/interactions/dt=YYYY-MM-DD/part-00000.jsonl.gz   (one day also has a plain part-00001.jsonl)
    S/catalog/catalog.csv                                (RFC 4180, header, hostile names and brands)
    S/images/<Category>/<Subcategory>/<BrandFolder>/<sku>.jpg   (plus a few broken files)
    S/sample_manifest.json                               (exact counts of everything injected)

The same arguments give byte-identical files (seeded numpy generators, gzip with ``mtime=0`` and no file
name, JSON with sorted keys). The dt folder of an event is the UTC date of its ``event_time``; the
offsets written vary (``Z``, ``+02:00``, ``-08:00``, ...), so the local date in the text may differ.

Bad interaction lines, one defect each, counted per kind in the manifest (``BAD_KINDS``):
``invalid_json`` (a truncated line), ``missing_field`` (a required field absent), ``empty_field`` (a
required field ``""``), ``unknown_event_type``, ``bad_event_time`` (unparseable, including a time with no
UTC offset), ``future_event_time`` (in the last day's folder, an instant on the next UTC day or later) and
``non_string_id`` (``user_id`` as a JSON number or ``item_id`` as a JSON object). Exact duplicate lines
(same ``event_id``, same bytes) are counted apart as ``duplicate_lines``.

The job needs no Spark: numpy, Pillow and the standard library.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as dt
import gzip
import io
import json
import logging
import re
import struct
import time
import unicodedata
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from jobs.common import outputs, storage
from jobs.common.cli import JobError, fraction, job_parser, positive_int, run, run_date
from schemas.catalog import CATALOG_COLUMNS, IMAGE_PATH, SKU
from schemas.interactions import (
    EVENT_ID,
    EVENT_TIME,
    EVENT_TYPE,
    EVENT_TYPES,
    ITEM_ID,
    REASON_BAD_EVENT_TIME,
    REASON_EMPTY_FIELD,
    REASON_FUTURE_EVENT_TIME,
    REASON_INVALID_JSON,
    REASON_MISSING_FIELD,
    REASON_NON_STRING_ID,
    REASON_UNKNOWN_EVENT_TYPE,
    REQUIRED_FIELDS,
    SESSION_ID,
    USER_ID,
)

LOG = logging.getLogger("stylegraph.generate_sample")

STAGE = "sample"
MANIFEST_NAME = "sample_manifest.json"
INTERACTIONS_DIR = "interactions"
CATALOG_DIR = "catalog"
CATALOG_FILE = "catalog.csv"
IMAGES_DIR = "images"

COMPRESSION_GZIP = "gzip"
COMPRESSION_NONE = "none"
GZIP_LEVEL = 6

# Bad-record kinds: the preprocessing job's reject reasons, declared once in schemas/interactions.py.
INVALID_JSON = REASON_INVALID_JSON
MISSING_FIELD = REASON_MISSING_FIELD
EMPTY_FIELD = REASON_EMPTY_FIELD
UNKNOWN_EVENT_TYPE = REASON_UNKNOWN_EVENT_TYPE
BAD_EVENT_TIME = REASON_BAD_EVENT_TIME
FUTURE_EVENT_TIME = REASON_FUTURE_EVENT_TIME
NON_STRING_ID = REASON_NON_STRING_ID
BAD_KINDS = (
    INVALID_JSON,
    MISSING_FIELD,
    EMPTY_FIELD,
    UNKNOWN_EVENT_TYPE,
    BAD_EVENT_TIME,
    FUTURE_EVENT_TIME,
    NON_STRING_ID,
)

# Interaction mix. view is the bulk of any shop's log; purchases are rare.
EVENT_TYPE_WEIGHTS = (0.70, 0.18, 0.08, 0.04)
# Offsets written in event_time; the instant (and so the dt folder) is what counts, not the local date.
TZ_SUFFIXES = ("Z", "+00:00", "+02:00", "-05:00", "-08:00", "+05:30", "+09:00", "+14:00")
TZ_MINUTES = (0, 0, 120, -300, -480, 330, 540, 840)
UNKNOWN_EVENT_TYPES = ("refund", "wishlist", "share", "hover")
# Unparseable event times (formatted with the folder's date). A time with no UTC offset counts as
# unparseable: its instant, and so its dt folder, is ambiguous.
BAD_TIME_FORMATS = (
    "not-a-time",
    "{day:%d/%m/%Y} 10:00:00",
    "{day:%Y-%m-%d}T25:61:00Z",
    "{day:%Y}-02-30T10:00:00Z",
    "{day:%Y-%m-%d}T12:00:00",
)
EXTRA_FIELDS = ('"client":{"app":"ios","version":"5.2.1"}', '"referrer":"https://example.com/?q=boots&p=2"')

SESSION_PRESENT, SESSION_NULL, SESSION_ABSENT = 0, 1, 2
SESSION_STATE_WEIGHTS = (0.82, 0.03, 0.15)
SESSION_SECONDS = 1800
RENDER_CHUNK_ROWS = 200_000  # lines rendered at once: bounds memory to ~100 MB
EXTRA_FIELD_SHARE = 0.04
DUPLICATE_SHARE = 0.01
LIGHT_USER_SHARE = 0.06  # users with 1-4 events: the 5-core filter removes them
COLD_ITEM_SHARE = 0.05  # items with 1-3 events: the 5-core filter removes them
ZIPF_EXPONENT = 0.9
HEAVY_USER_MIN_EVENTS = 8
SECONDS_PER_DAY = 86_400
FUTURE_MAX_DAYS = 30

# Catalog: Zappos50K's categories and subcategories.
SUBCATEGORIES = {
    "Shoes": ("Sneakers and Athletic Shoes", "Oxfords", "Loafers", "Flats", "Heels", "Clogs and Mules"),
    "Boots": ("Ankle", "Knee High", "Mid-Calf", "Over the Knee"),
    "Sandals": ("Flat", "Heel", "Athletic"),
    "Slippers": ("Slipper Flats", "Slipper Heels", "Boot"),
}
SHAPE_CATEGORY = {"sneaker": "Shoes", "boot": "Boots", "sandal": "Sandals", "slipper": "Slippers"}
SHAPES = tuple(SHAPE_CATEGORY)
TEXTURES = ("plain", "stripes", "dots", "checks")
BRANDS = (
    "Nike",
    "Clarks",
    "Dr. Martens",
    "Steve Madden",
    "Hush Puppies, Inc.",
    'The "Original" Muck Boot Company',
    "Pépé; Chaussures",
    "Müller\nSchuh",
    "  Leading Space Co",
    "Back\\Slash Footwear",
    "日本の靴",
    "Sole 👟 Mates",
    "UGG",
    "Skechers",
    "Trailing Space ",
)
# No "\r" inside a value: Spark's CSV reader (univocity) turns a quoted "\r\n" into "\n", so such a
# name could never round-trip through any job; record separators are CRLF as RFC 4180 says.
HOSTILE_NAMES = (
    "Trail Runner, Wide Fit",
    'The "Cloud" Sneaker',
    "Oxford; Classic Leather",
    "Chelsea Boot\nLimited Edition",
    "  Leading Space Loafer",
    "Back\\Slash Sandal \\",
    "Espadrille Été Crème",
    "Hausschuh Grüße",
    "下駄 サンダル 日本",
    "Party Heel 👠✨",
    'Quote at end "',
    '"Fully quoted"',
    "Two\nLine\nSlipper",
    "Tab\tSeparated Mule",
    "Comma,,Double",
)
NAME_ADJECTIVES = ("Classic", "Urban", "Trail", "Cozy", "Summer", "Vintage", "Sport", "Luxe", "Everyday")
NAME_NOUNS = ("Runner", "Walker", "Strider", "Step", "Glide", "Trekker", "Lounger", "Stroll")
SKU_LOW, SKU_HIGH = 7_000_000, 8_000_000

# Broken image files, each a catalog product: (kind, expected to embed ok, file suffix or None = no file).
BROKEN_IMAGE_KINDS = (
    ("truncated_jpeg", False, ".jpg"),
    ("zero_bytes", False, ".jpg"),
    ("text_as_jpeg", False, ".jpg"),
    ("grayscale_jpeg", True, ".jpg"),
    ("rgba_png", True, ".png"),
    ("cmyk_jpeg", True, ".jpg"),
    ("exif_orientation", True, ".jpg"),
    ("decompression_bomb", False, ".png"),
    ("missing_file", False, None),
    ("missing_file", False, None),
)
MIN_PRODUCTS = len(BROKEN_IMAGE_KINDS) + 10
MAX_PRODUCTS = (SKU_HIGH - SKU_LOW) // 2
EXIF_ORIENTATION_TAG = 0x0112
EXIF_ROTATE_90_CW = 6
BOMB_SIDE = 15_000  # 225 M pixels: over twice Pillow's MAX_IMAGE_PIXELS, so Image.open refuses it
JPEG_QUALITY = 90
PRODUCTS_PER_STYLE = 8
MIN_STYLES = 4
MIN_IMAGE_SIZE = 32
SHAPE_SCALE = 1.1
TEXTURE_PHASE_JITTER = 0.2  # of a period: a style's texture stays recognisably in place

# Outlines in unit coordinates (toe to the right): "body" polygons are textured, "sole" ones dark.
SHAPE_OUTLINES: dict[str, dict[str, list[list[tuple[float, float]]]]] = {
    "sneaker": {
        "body": [[(0.10, 0.50), (0.20, 0.38), (0.34, 0.36), (0.46, 0.44), (0.66, 0.48), (0.84, 0.54),
                  (0.92, 0.62), (0.90, 0.66), (0.10, 0.66)]],
        "sole": [[(0.09, 0.66), (0.91, 0.66), (0.90, 0.72), (0.10, 0.72)]],
    },
    "boot": {
        "body": [[(0.20, 0.10), (0.46, 0.10), (0.48, 0.48), (0.70, 0.54), (0.88, 0.60), (0.90, 0.68),
                  (0.18, 0.68)]],
        "sole": [[(0.18, 0.68), (0.90, 0.68), (0.90, 0.76), (0.18, 0.76)]],
    },
    "sandal": {
        "body": [[(0.24, 0.64), (0.30, 0.42), (0.37, 0.42), (0.32, 0.64)],
                 [(0.55, 0.63), (0.60, 0.46), (0.67, 0.46), (0.63, 0.63)],
                 [(0.28, 0.46), (0.68, 0.48), (0.68, 0.54), (0.28, 0.52)]],
        "sole": [[(0.08, 0.64), (0.92, 0.62), (0.92, 0.70), (0.08, 0.72)]],
    },
    "slipper": {
        "body": [[(0.5 + 0.42 * np.cos(t), min(0.66, 0.56 + 0.20 * np.sin(t)))
                  for t in np.linspace(0.0, 2.0 * np.pi, 36, endpoint=False)]],
        "sole": [[(0.10, 0.66), (0.90, 0.66), (0.88, 0.70), (0.12, 0.70)]],
    },
}

# Independent random streams, so that changing one part's size does not reshuffle the others.
_STREAM_CATALOG, _STREAM_IMAGES, _STREAM_INTERACTIONS, _STREAM_BAD = 1, 2, 3, 4


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


# --------------------------------------------------------------------------------------------- files


def _write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file through pyarrow's filesystem (local or S3), with no implicit compression."""
    fs, path = storage.filesystem(uri)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(path, compression=None) as stream:
        stream.write(data)


def _gzip(data: bytes) -> bytes:
    """gzip with no timestamp and no file name in the header: same input, same bytes."""
    return gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)


# ------------------------------------------------------------------------------------------- catalog


@dataclass(frozen=True)
class Style:
    """What products of one style share: a silhouette, a base colour and a texture."""

    style_id: int
    shape: str
    texture: str
    base_rgb: tuple[int, int, int]
    texture_rgb: tuple[int, int, int]
    period: int
    angle: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "shape": self.shape,
            "texture": self.texture,
            "base_rgb": list(self.base_rgb),
            "texture_rgb": list(self.texture_rgb),
        }


@dataclass(frozen=True)
class Product:
    """One catalog row plus the style it was drawn from."""

    sku: str
    name: str
    brand: str
    category: str
    subcategory: str
    image_path: str
    style_id: int

    def row(self) -> list[str]:
        return [self.sku, self.name, self.brand, self.category, self.subcategory, self.image_path]


def brand_folder(brand: str, index: int) -> str:
    """A filesystem-safe folder name for a brand: ASCII letters, digits, space, ``._-``; never empty.

    Accents are folded (``Müller`` -> ``Muller``), other characters become ``_``; a brand with nothing
    left (``日本の靴``) becomes ``brand_<index>``.
    """
    folded = unicodedata.normalize("NFKD", brand).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^A-Za-z0-9 ._-]+", "_", folded)
    slug = re.sub(r"\s+", " ", slug).strip(" ._-")
    return slug or f"brand_{index:02d}"


def _make_styles(rng: np.random.Generator, n_styles: int, image_size: int) -> list[Style]:
    styles = []
    for style_id in range(n_styles):
        base = tuple(int(v) for v in rng.integers(20, 236, size=3))
        texture_rgb = tuple(int((v + 110) % 256) for v in base)
        styles.append(
            Style(
                style_id=style_id,
                shape=SHAPES[style_id % len(SHAPES)],
                texture=TEXTURES[int(rng.integers(len(TEXTURES)))],
                base_rgb=base,  # type: ignore[arg-type]
                texture_rgb=texture_rgb,  # type: ignore[arg-type]
                period=max(4, int(rng.integers(6, 14) * image_size / 128)),
                angle=float(rng.uniform(0.0, np.pi)),
            )
        )
    return styles


def build_catalog(*, seed: int, products: int, image_size: int = 128) -> tuple[list[Product], list[Style]]:
    """The catalog rows and styles for a seed (no I/O). Rows are sorted by sku."""
    if not MIN_PRODUCTS <= products <= MAX_PRODUCTS:
        raise JobError(f"products must be between {MIN_PRODUCTS} and {MAX_PRODUCTS}, got {products}")
    rng = _rng(seed, _STREAM_CATALOG)
    n_styles = max(MIN_STYLES, round(products / PRODUCTS_PER_STYLE))
    styles = _make_styles(rng, n_styles, image_size)
    skus = np.sort(rng.choice(np.arange(SKU_LOW, SKU_HIGH), size=products, replace=False))
    style_of = rng.permutation(np.arange(products) % n_styles)
    folders = [brand_folder(brand, i) for i, brand in enumerate(BRANDS)]
    brand_of = rng.integers(len(BRANDS), size=products)
    # Every brand and every hostile name appears at least once when the catalog is big enough.
    brand_of[rng.permutation(products)[: len(BRANDS)]] = np.arange(len(BRANDS))[: products]
    hostile_slots = rng.permutation(products)[: len(HOSTILE_NAMES)]
    hostile_name = {int(slot): HOSTILE_NAMES[i] for i, slot in enumerate(hostile_slots)}
    rows = []
    for i in range(products):
        style = styles[int(style_of[i])]
        category = SHAPE_CATEGORY[style.shape]
        subs = SUBCATEGORIES[category]
        subcategory = subs[int(rng.integers(len(subs)))]
        adjective = NAME_ADJECTIVES[int(rng.integers(len(NAME_ADJECTIVES)))]
        noun = NAME_NOUNS[int(rng.integers(len(NAME_NOUNS)))]
        name = hostile_name.get(i, f"{adjective} {noun} {int(rng.integers(1, 100))}")
        b = int(brand_of[i])
        sku = str(int(skus[i]))
        rows.append(
            Product(
                sku=sku,
                name=name,
                brand=BRANDS[b],
                category=category,
                subcategory=subcategory,
                image_path=f"{category}/{subcategory}/{folders[b]}/{sku}.jpg",
                style_id=style.style_id,
            )
        )
    return rows, styles


def catalog_csv_bytes(rows: Sequence[Product]) -> bytes:
    """The catalog as RFC 4180 CSV (header, CRLF, minimal quoting, doubled quotes), UTF-8."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, quoting=csv.QUOTE_MINIMAL, doublequote=True, lineterminator="\r\n")
    writer.writerow(CATALOG_COLUMNS)
    for product in rows:
        writer.writerow(product.row())
    return buffer.getvalue().encode("utf-8")


def _transform(points: list[tuple[float, float]], size: int, scale: float, angle: float,
               dx: float, dy: float) -> list[tuple[float, float]]:
    cos, sin = np.cos(angle), np.sin(angle)
    out = []
    for u, v in points:
        x, y = (u - 0.5) * scale, (v - 0.5) * scale
        out.append(((x * cos - y * sin + 0.5 + dx) * size, (x * sin + y * cos + 0.5 + dy) * size))
    return out


def draw_product(style: Style, rng: np.random.Generator, size: int) -> tuple[Image.Image, Image.Image]:
    """One product image of a style (RGB) and its silhouette mask (L), jittered slightly.

    The jitter (position, scale, rotation, colour, texture phase) keeps products of a style alike but
    not identical.
    """
    scale = SHAPE_SCALE * float(rng.uniform(0.93, 1.07))
    angle = float(np.deg2rad(rng.uniform(-6.0, 6.0)))
    dx, dy = (float(v) for v in rng.uniform(-0.04, 0.04, size=2))
    colour_noise = rng.integers(-15, 16, size=3)
    phase = float(rng.uniform(0.0, style.period * TEXTURE_PHASE_JITTER))
    background = int(rng.integers(232, 250))

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period = style.period
    if style.texture == "stripes":
        pattern = ((xx * np.cos(style.angle) + yy * np.sin(style.angle) + phase) // (period / 2)) % 2 == 0
    elif style.texture == "dots":
        cx, cy = (xx + phase) % period - period / 2, (yy + phase) % period - period / 2
        pattern = cx * cx + cy * cy < (period / 3.2) ** 2
    elif style.texture == "checks":
        pattern = (((xx + phase) // period) + ((yy + phase) // period)) % 2 == 0
    else:
        pattern = np.zeros((size, size), dtype=bool)
    base = np.clip(np.array(style.base_rgb) + colour_noise, 0, 255)
    accent = np.clip(np.array(style.texture_rgb) + colour_noise, 0, 255)
    body = np.where(pattern[..., None], accent, base).astype(np.uint8)

    mask = Image.new("L", (size, size), 0)
    mask_draw = ImageDraw.Draw(mask)
    outline = SHAPE_OUTLINES[style.shape]
    for polygon in outline["body"]:
        mask_draw.polygon(_transform(polygon, size, scale, angle, dx, dy), fill=255)
    image = Image.composite(
        Image.fromarray(body, "RGB"), Image.new("RGB", (size, size), (background,) * 3), mask
    )
    draw = ImageDraw.Draw(image)
    sole_rgb = tuple(int(v) for v in np.clip(np.array((45, 40, 38)) + colour_noise // 3, 0, 255))
    for polygon in outline["sole"]:
        points = _transform(polygon, size, scale, angle, dx, dy)
        draw.polygon(points, fill=sole_rgb)
        mask_draw.polygon(points, fill=255)
    return image, mask


def _encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _bomb_png(side: int) -> bytes:
    """A valid 1-bit PNG of side x side black pixels, built row by row (small file, little memory)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte "none" + packed bits
    compressor = zlib.compressobj(9)
    rows_per_block = 1000
    idat = bytearray()
    for start in range(0, side, rows_per_block):
        idat += compressor.compress(row * min(rows_per_block, side - start))
    idat += compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1 bit, grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", bytes(idat)) + chunk(b"IEND", b"")


def _broken_file(kind: str, image: Image.Image, mask: Image.Image) -> bytes | None:
    """The bytes of one deliberately broken (or merely unusual) image file; None for a missing file."""
    if kind == "truncated_jpeg":
        data = _encode(image, "JPEG", quality=JPEG_QUALITY)
        return data[: len(data) // 2]
    if kind == "zero_bytes":
        return b""
    if kind == "text_as_jpeg":
        return b"<html><body>404 Not Found: this is not an image</body></html>\n"
    if kind == "grayscale_jpeg":
        return _encode(image.convert("L"), "JPEG", quality=JPEG_QUALITY)
    if kind == "rgba_png":
        rgba = image.convert("RGBA")
        rgba.putalpha(mask)
        return _encode(rgba, "PNG")
    if kind == "cmyk_jpeg":
        return _encode(image.convert("CMYK"), "JPEG", quality=JPEG_QUALITY)
    if kind == "exif_orientation":
        # Stored on its side with orientation 6: ImageOps.exif_transpose gives back the upright product.
        exif = Image.Exif()
        exif[EXIF_ORIENTATION_TAG] = EXIF_ROTATE_90_CW
        stored = image.transpose(Image.Transpose.ROTATE_90)
        return _encode(stored, "JPEG", quality=JPEG_QUALITY, exif=exif.tobytes())
    if kind == "decompression_bomb":
        return _bomb_png(BOMB_SIDE)
    if kind == "missing_file":
        return None
    raise ValueError(f"unknown broken image kind {kind!r}")


def generate_catalog(
    out_dir: str,
    *,
    seed: int,
    products: int,
    image_size: int = 128,
    draw_images: bool = True,
) -> dict[str, Any]:
    """Write ``<out_dir>/catalog/catalog.csv`` and (unless ``draw_images`` is false) ``<out_dir>/images/``.

    Returns the catalog part of the manifest: ``skus`` (sorted), ``styles`` {sku: style id},
    ``style_definitions``, ``broken_images`` (sku, image_path, kind, expected_ok) and counts.
    """
    rows, styles = build_catalog(seed=seed, products=products, image_size=image_size)
    rng = _rng(seed, _STREAM_IMAGES)
    broken_slots = rng.permutation(len(rows))[: len(BROKEN_IMAGE_KINDS)]
    broken_kind = {int(slot): BROKEN_IMAGE_KINDS[i] for i, slot in enumerate(broken_slots)}
    for slot, (_, _, suffix) in broken_kind.items():
        if suffix and suffix != ".jpg":
            product = rows[slot]
            rows[slot] = dataclasses.replace(product, image_path=product.image_path[:-4] + suffix)

    images_root = storage.join(out_dir, IMAGES_DIR)
    files_written = 0
    broken: list[dict[str, Any]] = []
    for i, product in enumerate(rows):
        drawn = draw_product(styles[product.style_id], rng, image_size) if draw_images else None
        entry = broken_kind.get(i)
        if entry is not None:
            kind, expected_ok, _ = entry
            broken.append({SKU: product.sku, IMAGE_PATH: product.image_path, "kind": kind,
                           "expected_ok": expected_ok})
            data = _broken_file(kind, *drawn) if drawn else None
        else:
            data = _encode(drawn[0], "JPEG", quality=JPEG_QUALITY) if drawn else None
        if data is not None:
            _write_bytes(storage.join(images_root, product.image_path), data)
            files_written += 1
    _write_bytes(storage.join(out_dir, CATALOG_DIR, CATALOG_FILE), catalog_csv_bytes(rows))
    broken.sort(key=lambda entry: entry[SKU])
    expected_error = sum(1 for entry in broken if not entry["expected_ok"])
    LOG.info("catalog: %d products, %d styles, %d image files", len(rows), len(styles), files_written)
    return {
        "products": len(rows),
        "skus": [product.sku for product in rows],
        "styles": {product.sku: product.style_id for product in rows},
        "style_definitions": {str(style.style_id): style.as_dict() for style in styles},
        "brand_folders": {brand: brand_folder(brand, i) for i, brand in enumerate(BRANDS)},
        "images_written": draw_images,
        "image_size": image_size,
        "image_files": files_written,
        "broken_images": broken,
        "expected_embed": (
            {"ok": len(rows) - expected_error, "error": expected_error} if draw_images
            else {"ok": 0, "error": len(rows)}
        ),
    }


# -------------------------------------------------------------------------------------- interactions


def _allocate_events(rng: np.random.Generator, users: int, items: int, events: int
                     ) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Who interacted with what: light users (1-4 events), cold items (1-3 events), Zipf for the rest."""
    n_light = int(round(users * LIGHT_USER_SHARE)) if users >= 10 else 0
    n_cold = int(round(items * COLD_ITEM_SHARE)) if items >= 10 else 0
    n_cold = max(n_cold, 1) if items >= 10 else 0
    n_light = max(n_light, 1) if users >= 10 else 0
    user_perm = rng.permutation(users)
    light_users, heavy_users = user_perm[:n_light], user_perm[n_light:]
    item_perm = rng.permutation(items)
    cold_items, warm_items = item_perm[:n_cold], item_perm[n_cold:]
    light_counts = rng.integers(1, 5, size=n_light)
    cold_counts = rng.integers(1, 4, size=n_cold)
    rest = events - int(light_counts.sum()) - int(cold_counts.sum())
    if rest < len(heavy_users):  # min_events() keeps callers from getting here
        raise JobError(f"--events {events} is too few for --users {users} and {items} items")

    zipf = 1.0 / np.arange(1, len(warm_items) + 1) ** ZIPF_EXPONENT
    zipf /= zipf.sum()

    def warm(n: int) -> np.ndarray:
        return warm_items[rng.choice(len(warm_items), size=n, p=zipf)]

    base = min(HEAVY_USER_MIN_EVENTS, rest // len(heavy_users))
    activity = rng.lognormal(0.0, 1.0, size=len(heavy_users))
    activity /= activity.sum()
    extra = rest - base * len(heavy_users)
    heavy_user_of = np.concatenate(
        [np.repeat(heavy_users, base), heavy_users[rng.choice(len(heavy_users), size=extra, p=activity)]]
    )
    cold_user_of = heavy_users[rng.integers(len(heavy_users), size=int(cold_counts.sum()))]
    user_of = np.concatenate([np.repeat(light_users, light_counts), cold_user_of, heavy_user_of])
    item_of = np.concatenate(
        [warm(int(light_counts.sum())), np.repeat(cold_items, cold_counts), warm(len(heavy_user_of))]
    )
    stats = {"light_users": n_light, "cold_items": n_cold}
    return user_of.astype(np.int64), item_of.astype(np.int64), stats


def _check_sizes(*, users: int, items: int, events: int, compression: str) -> None:
    if compression not in (COMPRESSION_GZIP, COMPRESSION_NONE):
        raise JobError(f"--compression must be {COMPRESSION_GZIP} or {COMPRESSION_NONE}, got {compression!r}")
    if events < min_events(users, items):
        raise JobError(
            f"--events {events} is too few for --users {users} and {items} products: "
            f"need at least {min_events(users, items)}"
        )


def min_events(users: int, items: int) -> int:
    """The fewest good events that leave every heavy user one event after light users and cold items."""
    return 2 * users + items


def _time_strings(utc_seconds: np.ndarray, tz_index: np.ndarray) -> list[str]:
    """ISO-8601 with offset for each instant, written in the local time of its offset."""
    offsets = np.asarray(TZ_MINUTES, dtype=np.int64)[tz_index] * 60
    local = (utc_seconds + offsets).astype("datetime64[s]")
    text = np.datetime_as_string(local, unit="s").tolist()
    suffix = np.asarray(TZ_SUFFIXES)[tz_index].tolist()
    return [t + s for t, s in zip(text, suffix, strict=True)]


def _bad_plan(rng: np.random.Generator, events: int, bad_fraction: float, days: int) -> list[tuple[str, int]]:
    """(kind, day index) of every bad line: about bad_fraction * events in all, every kind at least once."""
    total = int(round(bad_fraction * events))
    if bad_fraction > 0:
        total = max(total, len(BAD_KINDS))
    share, remainder = divmod(total, len(BAD_KINDS))
    per_kind = [share + (1 if i < remainder else 0) for i in range(len(BAD_KINDS))]
    plan: list[tuple[str, int]] = []
    for kind, count in zip(BAD_KINDS, per_kind, strict=True):
        day_of = np.full(count, days - 1) if kind == FUTURE_EVENT_TIME else rng.integers(days, size=count)
        plan.extend((kind, int(d)) for d in day_of)
    return plan


def _write_chunks(uri: str, chunks: Iterator[bytes], *, is_gzip: bool) -> None:
    """Stream byte chunks into one file; gzip with no timestamp and no file name (same bytes every run)."""
    fs, path = storage.filesystem(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path, compression=None) as stream:
        if is_gzip:
            with gzip.GzipFile(filename="", mode="wb", compresslevel=GZIP_LEVEL, fileobj=stream,
                               mtime=0) as packed:
                for chunk in chunks:
                    packed.write(chunk)
        else:
            for chunk in chunks:
                stream.write(chunk)


def _text_table(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 texts as a zero-padded byte matrix (one row each) and their lengths."""
    encoded = [text.encode("utf-8") for text in texts]
    table = np.zeros((len(encoded), max([1, *map(len, encoded)])), dtype=np.uint8)
    for i, data in enumerate(encoded):
        table[i, : len(data)] = np.frombuffer(data, dtype=np.uint8)
    return table, np.asarray([len(data) for data in encoded], dtype=np.int64)


def _digits(values: np.ndarray, width: int) -> np.ndarray:
    """Non-negative integers as zero-padded ASCII digits, one row each."""
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    return ((values[:, None] // powers) % 10 + ord("0")).astype(np.uint8)


def _literal(text: str, rows: int) -> np.ndarray:
    return np.broadcast_to(np.frombuffer(text.encode("utf-8"), dtype=np.uint8), (rows, len(text.encode())))


class _LineRenderer:
    """Writes event lines as bytes with numpy, a whole chunk of lines at once.

    Each line is a row of a byte matrix made of fixed-width segments (literals, zero-padded digits,
    zero-padded lookups into tables of the possible texts). A value that is shorter than its segment, or
    absent from a line, is NUL-padded; the NULs are then dropped from the flattened matrix. Lines are
    JSON text and never contain a NUL. This is what makes 10 M events take seconds instead of minutes
    of per-line string formatting; each line is exactly what ``json.dumps(event, separators=(",", ":"))``
    writes.
    """

    def __init__(self, *, items: Sequence[str], user_width: int, seq_width: int, days: int) -> None:
        self.user_width = user_width
        self.seq_width = seq_width
        self.day_width = len(str(max(days - 1, 0)))
        self.items = _text_table(items)[0]
        self.types = _text_table(EVENT_TYPES)[0]
        self.tz = _text_table(TZ_SUFFIXES)[0]
        self.tz_seconds = np.asarray(TZ_MINUTES, dtype=np.int64) * 60
        session_heads = [""] * 3
        session_heads[SESSION_PRESENT] = f',"{SESSION_ID}":"s'
        session_heads[SESSION_NULL] = f',"{SESSION_ID}":null'
        self.session_heads = _text_table(session_heads)[0]
        self.extras = _text_table(["", *("," + extra for extra in EXTRA_FIELDS)])[0]

    def _good(self, columns: dict[str, np.ndarray], day_index: int, rows: np.ndarray) -> np.ndarray:
        """The NUL-padded byte matrix of good event lines (one row each, newline included)."""
        n = len(rows)
        user = columns["user"][rows]
        tz = columns["tz"][rows]
        session = columns["session"][rows]
        has_session = (session == SESSION_PRESENT).astype(np.uint8)[:, None]
        local = (columns["utc"][rows] + self.tz_seconds[tz]).astype("datetime64[s]")
        times = np.datetime_as_string(local, unit="s").astype("S19").view(np.uint8).reshape(n, 19)
        bucket = columns["second"][rows] // SESSION_SECONDS
        user_digits = _digits(user, self.user_width)
        segments: list[str | np.ndarray] = [
            f'{{"{EVENT_ID}":"e',
            _digits(columns["seq"][rows], self.seq_width),
            f'","{USER_ID}":"u',
            user_digits,
            f'","{ITEM_ID}":"',
            self.items[columns["item"][rows]],
            f'","{EVENT_TYPE}":"',
            self.types[columns["type"][rows]],
            f'","{EVENT_TIME}":"',
            times,
            self.tz[tz],
            '"',
            self.session_heads[session],
            user_digits * has_session,
            np.hstack([
                np.full((n, 1), ord("-"), dtype=np.uint8), _digits(np.full(n, day_index), self.day_width),
                np.full((n, 1), ord("-"), dtype=np.uint8), _digits(bucket, 2),
                np.full((n, 1), ord('"'), dtype=np.uint8),
            ]) * has_session,
            self.extras[columns["extra"][rows] + 1],
            "}\n",
        ]
        widths = [len(s.encode("utf-8")) if isinstance(s, str) else s.shape[1] for s in segments]
        data = np.empty((n, sum(widths)), dtype=np.uint8)
        at = 0
        for segment, width in zip(segments, widths, strict=True):
            if isinstance(segment, str):
                data[:, at: at + width] = np.frombuffer(segment.encode("utf-8"), dtype=np.uint8)
            else:
                data[:, at: at + width] = segment
            at += width
        return data

    def render(self, columns: dict[str, np.ndarray], day_index: int, rows: np.ndarray, good: int,
               bad_lines: Sequence[str]) -> bytes:
        """The bytes of the given rows of one day (row < good: a good event; else bad line row - good)."""
        is_good = rows < good
        good_data = self._good(columns, day_index, rows[is_good])
        if is_good.all():
            data = good_data
        else:
            bad_data = _text_table([bad_lines[i] + "\n" for i in (rows[~is_good] - good).tolist()])[0]
            data = np.zeros((len(rows), max(good_data.shape[1], bad_data.shape[1])), dtype=np.uint8)
            data[is_good, : good_data.shape[1]] = good_data
            data[~is_good, : bad_data.shape[1]] = bad_data
        flat = data.reshape(-1)
        return flat[flat != 0].tobytes()


def _bad_lines(kinds: Sequence[str], rng: np.random.Generator, *, day: dt.date, day_index: int, epoch0: int,
               end_utc: int, first_seq: int, users: int, items: Sequence[str], user_width: int,
               seq_width: int) -> list[str]:
    """One line per kind, each a plausible event of the day with exactly that one defect."""
    n = len(kinds)
    draws = {
        "user": rng.integers(users, size=n).tolist(),
        "item": rng.integers(len(items), size=n).tolist(),
        "type": rng.integers(len(EVENT_TYPES), size=n).tolist(),
        "field": rng.integers(len(REQUIRED_FIELDS), size=n).tolist(),
        "variant": rng.integers(len(UNKNOWN_EVENT_TYPES) * len(BAD_TIME_FORMATS), size=n).tolist(),
        "coin": (rng.random(n) < 0.5).tolist(),
        "cut": rng.random(n).tolist(),
    }
    day_start = epoch0 + day_index * SECONDS_PER_DAY
    times = _time_strings(
        day_start + rng.integers(SECONDS_PER_DAY, size=n), rng.integers(len(TZ_SUFFIXES), size=n)
    )
    future_seconds = end_utc + rng.integers(FUTURE_MAX_DAYS * SECONDS_PER_DAY, size=n)
    future_times = _time_strings(future_seconds, rng.integers(len(TZ_SUFFIXES), size=n))
    bad_times = [pattern.format(day=day) for pattern in BAD_TIME_FORMATS]
    lines = []
    for i, kind in enumerate(kinds):
        event: dict[str, Any] = {
            EVENT_ID: f"e{first_seq + i:0{seq_width}d}",
            USER_ID: f"u{draws['user'][i]:0{user_width}d}",
            ITEM_ID: items[draws["item"][i]],
            EVENT_TYPE: EVENT_TYPES[draws["type"][i]],
            EVENT_TIME: times[i],
            SESSION_ID: f"s-bad-{first_seq + i}",
        }
        field = REQUIRED_FIELDS[draws["field"][i]]
        variant = draws["variant"][i]
        if kind == MISSING_FIELD:
            del event[field]
        elif kind == EMPTY_FIELD:
            event[field] = ""
        elif kind == UNKNOWN_EVENT_TYPE:
            event[EVENT_TYPE] = UNKNOWN_EVENT_TYPES[variant % len(UNKNOWN_EVENT_TYPES)]
        elif kind == BAD_EVENT_TIME:
            event[EVENT_TIME] = bad_times[variant % len(bad_times)]
        elif kind == FUTURE_EVENT_TIME:
            event[EVENT_TIME] = future_times[i]
        elif kind == NON_STRING_ID:
            if draws["coin"][i]:
                event[USER_ID] = draws["user"][i]
            else:
                event[ITEM_ID] = {"sku": event[ITEM_ID]}
        line = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
        if kind == INVALID_JSON:  # cut somewhere in the last two thirds, never whole
            start = len(line) // 3
            line = line[: start + int(draws["cut"][i] * (len(line) - 1 - start))]
        lines.append(line)
    return lines


@dataclass(frozen=True)
class _DrawnEvents:
    """The good events of every day in UTC time order, one array entry per event.

    ``columns`` are what ``_LineRenderer`` reads (``seq``, ``user``, ``item``, ``type``, ``utc``, ``tz``,
    ``second``, ``session``, ``extra``); ``day_bounds[d]:day_bounds[d + 1]`` are the events of day ``d``.
    """

    columns: dict[str, np.ndarray]
    day_bounds: np.ndarray
    is_duplicated: np.ndarray
    stats: dict[str, int]

    @property
    def count(self) -> int:
        return len(self.columns["seq"])


def _draw_events(rng: np.random.Generator, *, users: int, items: int, events: int, days: int,
                 epoch0: int) -> _DrawnEvents:
    """Who did what, when, from which time zone and session; which events get a duplicate line."""
    user_of, item_of, stats = _allocate_events(rng, users, items, events)
    n = len(user_of)
    day_of = rng.integers(days, size=n)
    second_of = rng.integers(SECONDS_PER_DAY, size=n)
    order = np.argsort(day_of * SECONDS_PER_DAY + second_of, kind="stable")
    user_of, item_of, day_of, second_of = user_of[order], item_of[order], day_of[order], second_of[order]
    type_of = rng.choice(len(EVENT_TYPES), size=n, p=EVENT_TYPE_WEIGHTS)
    tz_of = rng.integers(len(TZ_SUFFIXES), size=n)
    session_state = rng.choice(3, size=n, p=SESSION_STATE_WEIGHTS)
    extra_of = np.where(rng.random(n) < EXTRA_FIELD_SHARE, rng.integers(len(EXTRA_FIELDS), size=n), -1)
    is_duplicated = rng.random(n) < DUPLICATE_SHARE
    columns = {
        "seq": np.arange(n, dtype=np.int64),
        "user": user_of,
        "item": item_of,
        "type": type_of,
        "utc": epoch0 + day_of * SECONDS_PER_DAY + second_of,
        "tz": tz_of,
        "second": second_of,
        "session": session_state,
        "extra": extra_of,
    }
    day_bounds = np.searchsorted(day_of, np.arange(days + 1))
    return _DrawnEvents(columns=columns, day_bounds=day_bounds, is_duplicated=is_duplicated, stats=stats)


@dataclass(frozen=True)
class _LogSpec:
    """What every day of the interaction logs shares: where, which days, which ids, how written."""

    root: str
    start: dt.date
    days: int
    users: int
    items: list[str]
    user_width: int
    seq_width: int
    compression: str

    @property
    def epoch0(self) -> int:
        """The first second of ``start`` (UTC), as a Unix time."""
        return _utc_epoch(self.start)

    @property
    def end_utc(self) -> int:
        """The first second after the last day (UTC)."""
        return self.epoch0 + self.days * SECONDS_PER_DAY

    def day(self, index: int) -> dt.date:
        return dt.date.fromordinal(self.start.toordinal() + index)

    def parts(self, index: int, ordered_rows: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """(file name, rows) of each file of a day: gzip, plus a plain second half on one day."""
        plain_day = self.days - 2 if self.days >= 2 else 0
        if self.compression == COMPRESSION_GZIP and index == plain_day:
            half = len(ordered_rows) // 2
            return [("part-00000.jsonl.gz", ordered_rows[:half]), ("part-00001.jsonl", ordered_rows[half:])]
        if self.compression == COMPRESSION_GZIP:
            return [("part-00000.jsonl.gz", ordered_rows)]
        return [("part-00000.jsonl", ordered_rows)]


def _utc_epoch(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp())


def _place_lines(good: int, dup_index: np.ndarray, dup_keys: np.ndarray, bad_keys: np.ndarray) -> np.ndarray:
    """The rows of a day in file order: 0..good-1 good events, their duplicates, then bad line j at good + j.

    Good lines keep their time order; a duplicate sorts somewhere after its original, a bad line anywhere.
    """
    rows = np.concatenate([np.arange(good), dup_index, good + np.arange(len(bad_keys))])
    placement = np.argsort(np.concatenate([np.arange(good, dtype=np.float64), dup_keys, bad_keys]),
                           kind="stable")
    return rows[placement]


def _write_day(spec: _LogSpec, renderer: _LineRenderer, drawn: _DrawnEvents, bad_rng: np.random.Generator,
               index: int, kinds: list[str], first_bad_seq: int) -> dict[str, Any]:
    """Write the files of day ``index`` (its good events, their duplicates and bad lines of ``kinds``).

    Returns the day's manifest entry.
    """
    lo, hi = int(drawn.day_bounds[index]), int(drawn.day_bounds[index + 1])
    good = hi - lo
    day = spec.day(index)
    dup_index = np.flatnonzero(drawn.is_duplicated[lo:hi])
    dup_keys = dup_index + bad_rng.uniform(0.5, 1.0, size=len(dup_index)) * (good - dup_index)
    bad_lines = _bad_lines(
        kinds, bad_rng, day=day, day_index=index, epoch0=spec.epoch0, end_utc=spec.end_utc,
        first_seq=first_bad_seq, users=spec.users, items=spec.items, user_width=spec.user_width,
        seq_width=spec.seq_width,
    )
    bad_keys = bad_rng.uniform(0, max(good, 1), size=len(kinds))
    ordered_rows = _place_lines(good, dup_index, dup_keys, bad_keys)
    day_columns = {name: column[lo:hi] for name, column in drawn.columns.items()}
    folder = storage.partition_uri(spec.root, "", day.isoformat())
    files = {}
    for name, part_rows in spec.parts(index, ordered_rows):
        chunks = (
            renderer.render(day_columns, index, part_rows[at: at + RENDER_CHUNK_ROWS], good, bad_lines)
            for at in range(0, len(part_rows), RENDER_CHUNK_ROWS)
        )
        _write_chunks(storage.join(folder, name), chunks, is_gzip=name.endswith(".gz"))
        files[name] = len(part_rows)
    LOG.info("interactions dt=%s: %d lines (%d good, %d duplicate, %d bad)", day, len(ordered_rows), good,
             len(dup_index), len(kinds))
    return {
        "dt": day.isoformat(),
        "files": files,
        "lines": len(ordered_rows),
        "good_events": good,
        "duplicate_lines": len(dup_index),
        "bad_lines": {kind: kinds.count(kind) for kind in BAD_KINDS},
    }


def _interactions_manifest(spec: _LogSpec, end_date: dt.date, drawn: _DrawnEvents,
                           per_day: list[dict[str, Any]]) -> dict[str, Any]:
    """The interactions part of the manifest: the days' entries and what they add up to."""
    user_of, item_of, type_of = drawn.columns["user"], drawn.columns["item"], drawn.columns["type"]
    totals = {key: sum(day[key] for day in per_day) for key in ("lines", "good_events", "duplicate_lines")}
    bad_totals = {kind: sum(day["bad_lines"][kind] for day in per_day) for kind in BAD_KINDS}
    distinct_pairs = int(np.unique(user_of * len(spec.items) + item_of).size)
    return {
        "start_date": spec.start.isoformat(),
        "end_date": end_date.isoformat(),
        "days": spec.days,
        "compression": spec.compression,
        "dt_rule": "the dt folder is the UTC date of event_time",
        "users": spec.users,
        "items": len(spec.items),
        **totals,
        "bad_lines": sum(bad_totals.values()),
        "bad_lines_by_kind": bad_totals,
        "event_types": {name: int((type_of == i).sum()) for i, name in enumerate(EVENT_TYPES)},
        "users_with_events": int(np.count_nonzero(np.bincount(user_of, minlength=spec.users))),
        "items_with_events": int(np.count_nonzero(np.bincount(item_of, minlength=len(spec.items)))),
        "distinct_user_item_pairs": distinct_pairs,
        "repeated_user_item_events": drawn.count - distinct_pairs,
        "light_users": drawn.stats["light_users"],
        "cold_items": drawn.stats["cold_items"],
        "per_day": per_day,
    }


def generate_interactions(
    out_dir: str,
    *,
    seed: int,
    end_date: dt.date,
    days: int,
    users: int,
    items: Sequence[str],
    events: int,
    bad_fraction: float,
    compression: str = COMPRESSION_GZIP,
) -> dict[str, Any]:
    """Write ``<out_dir>/interactions/dt=YYYY-MM-DD/`` for ``days`` days ending at ``end_date``.

    Args:
        out_dir: the sample root (the files go under ``interactions/``).
        seed: the random seed; the same arguments give the same bytes.
        end_date: the last day (the run date).
        days: how many days of logs.
        users: how many users (``u000000``...).
        items: the catalog skus events point at.
        events: how many distinct good events (duplicate and bad lines come on top).
        bad_fraction: bad lines in all, as a share of ``events``, spread over the kinds.
        compression: ``gzip`` (``part-00000.jsonl.gz``, and the day before the end date also gets a plain
            ``part-00001.jsonl``) or ``none`` (plain ``.jsonl`` only: faster for big benchmark runs).

    Returns:
        The interactions part of the manifest: per-day and total line counts by kind.
    """
    items = list(items)
    _check_sizes(users=users, items=len(items), events=events, compression=compression)
    start = dt.date.fromordinal(end_date.toordinal() - days + 1)
    drawn = _draw_events(_rng(seed, _STREAM_INTERACTIONS), users=users, items=len(items), events=events,
                         days=days, epoch0=_utc_epoch(start))
    bad_rng = _rng(seed, _STREAM_BAD)
    bad_plan = _bad_plan(bad_rng, events, bad_fraction, days)
    spec = _LogSpec(
        root=storage.join(out_dir, INTERACTIONS_DIR), start=start, days=days, users=users, items=items,
        user_width=max(6, len(str(users - 1))), seq_width=max(10, len(str(drawn.count + len(bad_plan)))),
        compression=compression,
    )
    renderer = _LineRenderer(items=items, user_width=spec.user_width, seq_width=spec.seq_width, days=days)
    bad_by_day: dict[int, list[str]] = {d: [] for d in range(days)}
    for kind, bad_day in bad_plan:
        bad_by_day[bad_day].append(kind)
    per_day = []
    next_bad_seq = drawn.count  # bad lines take the event ids after the good events', day by day
    for d in range(days):
        per_day.append(_write_day(spec, renderer, drawn, bad_rng, d, bad_by_day[d], next_bad_seq))
        next_bad_seq += len(bad_by_day[d])
    return _interactions_manifest(spec, end_date, drawn, per_day)


# ----------------------------------------------------------------------------------------------- job


def build_parser() -> argparse.ArgumentParser:
    parser = job_parser(
        "generate_sample", "Write the deterministic sample dataset (interactions, catalog, images)."
    )
    parser.add_argument("--output", required=True, help="sample root URI")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--end-date", type=run_date, default=None,
                        help="last day of logs, YYYY-MM-DD (default: --run-date)")
    parser.add_argument("--days", type=positive_int, default=7)
    parser.add_argument("--users", type=positive_int, default=400)
    parser.add_argument("--products", type=positive_int, default=120)
    parser.add_argument("--events", type=positive_int, default=20_000)
    parser.add_argument("--image-size", type=positive_int, default=128)
    parser.add_argument("--bad-fraction", type=fraction, default=0.03)
    parser.add_argument(
        "--compression", choices=(COMPRESSION_GZIP, COMPRESSION_NONE), default=COMPRESSION_GZIP,
        help="gzip parts (one day also gets a plain part) or plain .jsonl only (faster for big runs)",
    )
    parser.add_argument("--no-images", action="store_true", help="skip drawing images (catalog is written)")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Generate the sample under ``--output`` (staged, then published); return the manifest."""
    args = build_parser().parse_args(argv)
    started = time.time()
    end_date = args.end_date or args.run_date
    # Every argument is checked before anything is written.
    if args.image_size < MIN_IMAGE_SIZE:
        raise JobError(f"--image-size must be at least {MIN_IMAGE_SIZE}, got {args.image_size}")
    if not MIN_PRODUCTS <= args.products <= MAX_PRODUCTS:
        raise JobError(
            f"--products must be between {MIN_PRODUCTS} (room for the broken images) and {MAX_PRODUCTS} "
            f"(7-digit skus), got {args.products}"
        )
    _check_sizes(users=args.users, items=args.products, events=args.events, compression=args.compression)
    folders = (INTERACTIONS_DIR, CATALOG_DIR, IMAGES_DIR)
    outputs.check_output(STAGE, args.output, replaces=[storage.join(args.output, f) for f in folders])
    _, staged = storage.start_staging(args.output, STAGE)
    try:
        catalog = generate_catalog(
            staged, seed=args.seed, products=args.products, image_size=args.image_size,
            draw_images=not args.no_images,
        )
        interactions = generate_interactions(
            staged, seed=args.seed, end_date=end_date, days=args.days, users=args.users,
            items=catalog["skus"], events=args.events, bad_fraction=args.bad_fraction,
            compression=args.compression,
        )
    except BaseException:
        storage.finish_staging(staged)  # a failed run leaves the previous sample as it was
        raise
    manifest = {
        "generator": "jobs.generate_sample",
        "parameters": {
            "seed": args.seed, "end_date": end_date.isoformat(), "days": args.days, "users": args.users,
            "products": args.products, "events": args.events, "image_size": args.image_size,
            "bad_fraction": args.bad_fraction, "compression": args.compression, "images": not args.no_images,
        },
        "bad_kinds": list(BAD_KINDS),
        "interactions": interactions,
        "catalog": catalog,
    }
    # Staged and complete: swap each folder into place, then the manifest last (it describes them).
    outputs.mark_root(STAGE, args.output)
    for folder in folders:
        if storage.exists(storage.join(staged, folder)):
            storage.publish(storage.join(staged, folder), storage.join(args.output, folder))
        else:
            storage.remove(storage.join(args.output, folder))
    storage.finish_staging(staged)
    storage.write_json(storage.join(args.output, MANIFEST_NAME), manifest)
    LOG.info("sample written to %s in %.1f s: %d lines, %d products", args.output, time.time() - started,
             interactions["lines"], catalog["products"])
    return manifest


if __name__ == "__main__":
    raise SystemExit(run(main))
