"""The sample generator: deterministic bytes, a hostile catalog that round-trips, counts that match the
files (re-parsed here independently), images whose styles can be told apart, broken files as claimed."""
from __future__ import annotations

import collections
import csv
import datetime as dt
import gzip
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps, UnidentifiedImageError

from jobs import generate_sample
from jobs.common.cli import JobError

END_DATE = "2024-03-31"
DAYS = 3
SMALL = ["--end-date", END_DATE, "--days", str(DAYS), "--users", "40", "--products", "24", "--events", "1500",
         "--image-size", "64", "--bad-fraction", "0.05"]
REQUIRED = ("event_id", "user_id", "item_id", "event_type", "event_time")
ID_FIELDS = ("event_id", "user_id", "item_id")
KNOWN_TYPES = {"view", "click", "add_to_cart", "purchase"}
# The contract, written out here rather than taken from the module under test.
TIME_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(Z|[+-]\d{2}:\d{2})$")
HOSTILE_BRANDS = ("Hush Puppies, Inc.", 'The "Original" Muck Boot Company', "Pépé; Chaussures",
                  "Müller\nSchuh", "  Leading Space Co", "Back\\Slash Footwear", "日本の靴", "Sole 👟 Mates",
                  "Trailing Space ")
HOSTILE_NAMES = ("Trail Runner, Wide Fit", 'The "Cloud" Sneaker', "Chelsea Boot\nLimited Edition",
                 "  Leading Space Loafer", "Back\\Slash Sandal \\", "下駄 サンダル 日本", "Party Heel 👠✨",
                 '"Fully quoted"', "Tab\tSeparated Mule")
KINDS = {"invalid_json", "missing_field", "empty_field", "unknown_event_type", "bad_event_time",
         "future_event_time", "non_string_id"}


def _generate(root: Path, seed: int, *extra: str) -> dict:
    return generate_sample.main(["--output", str(root), "--seed", str(seed), *SMALL, *extra])


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("sample") / "S"
    manifest = _generate(root, 7)
    return root, manifest


def _catalog_rows(root: Path) -> list[dict[str, str]]:
    with open(root / "catalog" / "catalog.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _classify(line: str, folder_date: dt.date, last_date: dt.date) -> str:
    """What the line is, judged from the input contract alone: 'good' or a bad kind."""
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return "invalid_json"
    if any(field not in event for field in REQUIRED):
        return "missing_field"
    if any(not isinstance(event[field], str) for field in ID_FIELDS):
        return "non_string_id"
    if any(event[field] == "" for field in REQUIRED):
        return "empty_field"
    if event["event_type"] not in KNOWN_TYPES:
        return "unknown_event_type"
    text = event["event_time"]
    try:
        instant = dt.datetime.fromisoformat(text.replace("Z", "+00:00")) if TIME_PATTERN.match(text) else None
    except ValueError:
        instant = None
    if instant is None:
        return "bad_event_time"
    utc_date = instant.astimezone(dt.UTC).date()
    if utc_date > last_date:
        return "future_event_time"
    assert utc_date == folder_date, f"dt rule broken: {text} in dt={folder_date}"
    return "good"


def _read_lines(path: Path) -> list[str]:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    text = data.decode("utf-8")
    assert text.endswith("\n")
    return text[:-1].split("\n")


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    first = _tree_bytes(_generate_and_root(tmp_path / "a", 11))
    second = _tree_bytes(_generate_and_root(tmp_path / "b", 11))
    other = _tree_bytes(_generate_and_root(tmp_path / "c", 12))
    assert first == second
    # 24 products - 2 missing images, the catalog, 3 gzip day parts + 1 plain part, the manifest, the
    # owner marker.
    assert len(first) == 22 + 1 + 4 + 1 + 1
    assert "sample_manifest.json" in first
    assert json.loads(first["_STYLEGRAPH_OWNER"]) == {"owner": "sample", "kind": "root"}
    assert not any(name.startswith("_staging") for name in first)
    changed = {name for name in first if first[name] != other.get(name)}
    assert "catalog/catalog.csv" in changed
    assert any(name.startswith("interactions/") for name in changed)
    assert "sample_manifest.json" in changed


def _generate_and_root(root: Path, seed: int) -> Path:
    _generate(root, seed)
    return root


def test_rerun_replaces_the_previous_sample(tmp_path):
    root = tmp_path / "S"
    _generate(root, 7)
    stale = root / "interactions" / "dt=2000-01-01"
    stale.mkdir()
    (stale / "part-00000.jsonl").write_text("{}\n")
    _generate(root, 7, "--no-images")
    assert not stale.exists()
    assert not (root / "images").exists()
    assert sorted(p.name for p in (root / "interactions").iterdir()) == [
        "dt=2024-03-29", "dt=2024-03-30", "dt=2024-03-31"
    ]
    assert json.loads((root / "sample_manifest.json").read_text())["catalog"]["images_written"] is False


def test_catalog_round_trips_with_hostile_values_and_image_paths(sample):
    root, manifest = sample
    rows = _catalog_rows(root)
    with open(root / "catalog" / "catalog.csv", encoding="utf-8", newline="") as handle:
        header = handle.readline()
    assert header == "sku,name,brand,category,subcategory,image_path\r\n"
    assert len(rows) == 24
    assert all(len(row) == 6 and None not in row for row in rows)
    skus = [row["sku"] for row in rows]
    assert len(set(skus)) == 24 and all(re.fullmatch(r"7\d{6}", sku) for sku in skus)
    brands = {row["brand"] for row in rows}
    # Every hostile brand survives the CSV round trip byte for byte.
    for hostile in HOSTILE_BRANDS:
        assert hostile in brands
    names = {row["name"] for row in rows}
    for hostile in HOSTILE_NAMES:
        assert hostile in names
    categories = {"Shoes", "Boots", "Sandals", "Slippers"}
    assert {row["category"] for row in rows} == categories
    broken = manifest["catalog"]["broken_images"]
    missing = {entry["sku"] for entry in broken if entry["kind"] == "missing_file"}
    assert len(missing) == 2
    for row in rows:
        category, subcategory, folder, file_name = row["image_path"].split("/")
        assert (category, subcategory) == (row["category"], row["subcategory"])
        assert file_name in (f"{row['sku']}.jpg", f"{row['sku']}.png")
        assert folder and folder == folder.strip() and not set(folder) & set("\n\r\"'\\/;,")
        assert folder.isascii()
        assert (root / "images" / row["image_path"]).is_file() == (row["sku"] not in missing)
    # One folder per brand, never two brands in one folder.
    folder_of = {(row["brand"], row["image_path"].split("/")[2]) for row in rows}
    assert len(folder_of) == len(brands) == len({folder for _, folder in folder_of})


def test_catalog_reads_the_same_in_spark(sample, spark):
    from schemas.catalog import CATALOG_CSV_OPTIONS, CATALOG_SCHEMA

    root, _ = sample
    expected = [tuple(row.values()) for row in _catalog_rows(root)]
    catalog_df = (
        spark.read.options(**CATALOG_CSV_OPTIONS).schema(CATALOG_SCHEMA).csv(f"file://{root}/catalog/catalog.csv")
    )
    assert sorted(tuple(row) for row in catalog_df.collect()) == sorted(expected)


def test_manifest_counts_match_the_files(sample):
    root, manifest = sample
    counted = manifest["interactions"]
    end = dt.date.fromisoformat(END_DATE)
    totals = collections.Counter()
    seen_ids: dict[str, str] = {}
    good_events = []
    folders = sorted((root / "interactions").iterdir())
    assert [folder.name for folder in folders] == [f"dt={end - dt.timedelta(days=d)}" for d in (2, 1, 0)]
    plain_parts = [p for p in (root / "interactions").rglob("*.jsonl")]
    assert len(plain_parts) == 1
    for folder, expected in zip(folders, counted["per_day"], strict=True):
        folder_date = dt.date.fromisoformat(folder.name[3:])
        assert expected["dt"] == folder_date.isoformat()
        day = collections.Counter()
        for part in sorted(folder.iterdir()):
            lines = _read_lines(part)
            assert expected["files"][part.name] == len(lines)
            for line in lines:
                kind = _classify(line, folder_date, end)
                if kind == "good":
                    event = json.loads(line)
                    # Compact JSON, exactly as json.dumps writes it (the fast renderer must agree).
                    assert line == json.dumps(event, separators=(",", ":"), ensure_ascii=False)
                    if event["event_id"] in seen_ids:
                        assert seen_ids[event["event_id"]] == line  # an exact duplicate, not a clash
                        kind = "duplicate"
                    else:
                        seen_ids[event["event_id"]] = line
                        good_events.append(event)
                day[kind] += 1
        assert day["good"] == expected["good_events"]
        assert day["duplicate"] == expected["duplicate_lines"]
        assert {kind: day[kind] for kind in KINDS} == expected["bad_lines"]
        assert sum(day.values()) == expected["lines"]
        totals.update(day)
    assert totals["good"] == counted["good_events"] == 1500
    assert totals["duplicate"] == counted["duplicate_lines"] > 0
    assert {kind: totals[kind] for kind in KINDS} == counted["bad_lines_by_kind"]
    assert all(totals[kind] >= 1 for kind in KINDS)
    assert sum(totals[kind] for kind in KINDS) == counted["bad_lines"] == round(0.05 * 1500)
    # Future events sit only in the last day's folder.
    assert all(day["bad_lines"]["future_event_time"] == 0 for day in counted["per_day"][:-1])
    # The good events use the whole contract: every type, several offsets incl. Z, optional session_id,
    # unknown extra fields, ids from the catalog.
    skus = {row["sku"] for row in _catalog_rows(root)}
    assert {event["item_id"] for event in good_events} <= skus
    assert collections.Counter(e["event_type"] for e in good_events) == collections.Counter(
        {k: v for k, v in counted["event_types"].items()}
    )
    offsets = {re.search(r"(Z|[+-]\d{2}:\d{2})$", e["event_time"]).group(1) for e in good_events}
    assert "Z" in offsets and len(offsets) >= 5
    assert any("session_id" not in e for e in good_events)
    assert any(e.get("session_id") is None and "session_id" in e for e in good_events)
    assert any(set(e) - set(REQUIRED) - {"session_id"} for e in good_events)


def test_five_core_filter_removes_some_users_and_items_but_keeps_most(sample):
    root, manifest = sample
    end = dt.date.fromisoformat(END_DATE)
    pairs = {}
    for part in sorted((root / "interactions").rglob("part-*")):
        folder_date = dt.date.fromisoformat(part.parent.name[3:])
        for line in _read_lines(part):
            if _classify(line, folder_date, end) == "good":
                event = json.loads(line)
                pairs[event["event_id"]] = (event["user_id"], event["item_id"])
    events = list(pairs.values())
    users, items = {u for u, _ in events}, {i for _, i in events}
    assert len(users) == 40 and len(items) == 24
    assert len(set(events)) < len(events)  # repeated (user, item) interactions
    while True:
        per_user = collections.Counter(u for u, _ in events)
        per_item = collections.Counter(i for _, i in events)
        kept = [(u, i) for u, i in events if per_user[u] >= 5 and per_item[i] >= 5]
        if len(kept) == len(events):
            break
        events = kept
    kept_users, kept_items = {u for u, _ in events}, {i for _, i in events}
    assert 0.8 * len(users) <= len(kept_users) < len(users)
    assert 0.8 * len(items) <= len(kept_items) < len(items)


def _load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float32)


def test_images_of_one_style_are_closer_than_images_of_different_styles(sample):
    root, manifest = sample
    broken = {entry["sku"] for entry in manifest["catalog"]["broken_images"]}
    rows = [row for row in _catalog_rows(root) if row["sku"] not in broken]
    for row in rows:
        with Image.open(root / "images" / row["image_path"]) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (64, 64))
    pixels = np.stack([_load_rgb(root / "images" / row["image_path"]).ravel() for row in rows])
    style = np.array([manifest["catalog"]["styles"][row["sku"]] for row in rows])
    distance = np.abs(pixels[:, None, :] - pixels[None, :, :]).mean(axis=-1)
    same = style[:, None] == style[None, :]
    np.fill_diagonal(same, False)
    different = style[:, None] != style[None, :]
    assert same.any() and different.any()
    assert distance[same].mean() < 0.8 * distance[different].mean()
    # Products of a style are alike, not copies.
    assert distance[same].min() > 0


def test_broken_images_are_what_the_manifest_claims(sample):
    root, manifest = sample
    broken = manifest["catalog"]["broken_images"]
    assert sorted(entry["kind"] for entry in broken) == sorted(
        ["truncated_jpeg", "zero_bytes", "text_as_jpeg", "grayscale_jpeg", "rgba_png", "cmyk_jpeg",
         "exif_orientation", "decompression_bomb", "missing_file", "missing_file"]
    )
    should_embed = {"grayscale_jpeg", "rgba_png", "cmyk_jpeg", "exif_orientation"}
    for entry in broken:
        assert entry["expected_ok"] == (entry["kind"] in should_embed)
        path = root / "images" / entry["image_path"]
        kind = entry["kind"]
        if kind == "missing_file":
            assert not path.exists()
        elif kind == "zero_bytes":
            assert path.stat().st_size == 0
            with pytest.raises(UnidentifiedImageError):
                Image.open(path)
        elif kind == "text_as_jpeg":
            assert path.suffix == ".jpg"
            with pytest.raises(UnidentifiedImageError):
                Image.open(path)
        elif kind == "truncated_jpeg":
            with Image.open(path) as image, pytest.raises(OSError, match="truncated"):
                image.load()
        elif kind == "decompression_bomb":
            assert path.suffix == ".png" and path.stat().st_size < 200_000
            with pytest.raises(Image.DecompressionBombError):
                Image.open(path)
        else:
            with Image.open(path) as image:
                image.load()
                mode, fmt = image.mode, image.format
                orientation = image.getexif().get(0x0112)
                upright = np.asarray(ImageOps.exif_transpose(image).convert("RGB"), dtype=np.float32)
            expected = {
                "grayscale_jpeg": ("L", "JPEG"),
                "rgba_png": ("RGBA", "PNG"),
                "cmyk_jpeg": ("CMYK", "JPEG"),
                "exif_orientation": ("RGB", "JPEG"),
            }[kind]
            assert (mode, fmt) == expected
            assert path.suffix == (".png" if kind == "rgba_png" else ".jpg")
            assert orientation == (6 if kind == "exif_orientation" else None)
            assert upright.shape == (64, 64, 3)
    # The upright EXIF image looks like its own style more than like the other styles.
    rotated = next(e for e in broken if e["kind"] == "exif_orientation")
    styles = manifest["catalog"]["styles"]
    broken_skus = {e["sku"] for e in broken}
    with Image.open(root / "images" / rotated["image_path"]) as image:
        upright = np.asarray(ImageOps.exif_transpose(image).convert("RGB"), dtype=np.float32)
        as_stored = np.asarray(image.convert("RGB"), dtype=np.float32)
    peers = [
        _load_rgb(root / "images" / row["image_path"])
        for row in _catalog_rows(root)
        if row["sku"] not in broken_skus and styles[row["sku"]] == styles[rotated["sku"]]
    ]
    upright_distance = np.mean([np.abs(upright - peer).mean() for peer in peers])
    stored_distance = np.mean([np.abs(as_stored - peer).mean() for peer in peers])
    assert upright_distance < stored_distance


def test_expected_embed_counts(sample):
    root, manifest = sample
    catalog = manifest["catalog"]
    failing = sum(1 for entry in catalog["broken_images"] if not entry["expected_ok"])
    assert catalog["expected_embed"] == {"ok": 24 - failing, "error": failing}
    files = [p for p in (root / "images").rglob("*") if p.is_file()]
    assert len(files) == catalog["image_files"] == 24 - 2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--products", "5"], "--products"),
        (["--image-size", "8"], "--image-size"),
        (["--events", "10"], "--events"),
        (["--end-date", "2024-3-31"], "YYYY-MM-DD"),
    ],
)
def test_bad_arguments_are_job_errors_and_write_nothing(tmp_path, argv, message):
    root = tmp_path / "S"
    base = ["--output", str(root), "--seed", "1", "--end-date", END_DATE, "--users", "40", "--products", "24",
            "--events", "1500", "--image-size", "64"]
    with pytest.raises(JobError, match=message):
        generate_sample.main(base + argv)
    assert not root.exists() or not any(p.is_file() for p in root.rglob("*"))


def test_plain_compression_writes_only_plain_parts(tmp_path):
    root = tmp_path / "S"
    manifest = _generate(root, 7, "--compression", "none", "--no-images")
    parts = sorted(str(p.relative_to(root / "interactions")) for p in (root / "interactions").rglob("*"))
    assert [p for p in parts if "/" in p] == [
        f"dt={d}/part-00000.jsonl" for d in ("2024-03-29", "2024-03-30", "2024-03-31")
    ]
    lines = sum(len(_read_lines(p)) for p in (root / "interactions").rglob("*.jsonl"))
    assert lines == manifest["interactions"]["lines"]
    assert os.path.exists(root / "catalog" / "catalog.csv")
