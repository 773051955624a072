"""The run report's page: plain data in, one self-contained HTML page out (inline CSS and SVG, no
script). Pure rendering: no Spark, no I/O; every value that reaches the page is escaped (product names
are hostile input). ``jobs/run_report.py`` gathers the data and writes the page.
"""
from __future__ import annotations

import datetime as dt
import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Section:
    """What a section of the page shows, or why it cannot (``missing``)."""

    data: Any = None
    missing: str | None = None


@dataclass
class Tile:
    """One product in the gallery: its picture (a data URI) or the reason there is none."""

    product_id: str
    sku: str | None
    name: str | None
    brand: str | None
    image_uri: str | None = None
    placeholder: str | None = None
    score: float | None = None
    rank: int | None = None


@dataclass
class GalleryRow:
    product: Tile
    neighbours: list[Tile] = field(default_factory=list)
    note: str | None = None


def esc(value: Any) -> str:
    """Every value that reaches the page goes through here."""
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return esc(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return esc(value)
        return esc(f"{int(value):,}") if value.is_integer() and abs(value) < 1e15 else esc(f"{value:.4g}")
    if isinstance(value, int):
        return esc(f"{value:,}")
    return esc(value)


def _decimals(bins: Sequence[tuple[float, float, int]]) -> int:
    """Enough decimals to tell histogram bin edges apart (random-weight cosines crowd near 1)."""
    width = bins[0][1] - bins[0][0] if bins else 1.0
    return max(2, math.ceil(-math.log10(width)) + 1) if width > 0 else 2


def svg_bars(
    title: str, items: Sequence[tuple[str, float]], *, color: str = "#3b6ea8", width: int = 520
) -> str:
    """A horizontal bar chart: one labelled bar per item, the value at its end."""
    if not items:
        return f'<p class="missing">{esc(title)}: nothing to plot</p>'
    bar_h, gap, label_w, value_w = 18, 6, 170, 80
    height = len(items) * (bar_h + gap) + 28
    top = max((v for _, v in items), default=0) or 1
    scale = (width - label_w - value_w) / top
    parts = [
        f'<svg class="chart" role="img" aria-label="{esc(title)}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
        f'<text x="0" y="14" class="title">{esc(title)}</text>',
    ]
    for i, (label, value) in enumerate(items):
        y = 24 + i * (bar_h + gap)
        w = max(value * scale, 0 if value == 0 else 1)
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end">{esc(label)}</text>'
            f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{color}">'
            f"<title>{esc(label)}: {_fmt(value)}</title></rect>"
            f'<text x="{label_w + w + 4:.1f}" y="{y + 13}">{_fmt(value)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def svg_columns(
    title: str, items: Sequence[tuple[str, float]], *, x_label: str, color: str = "#5b8c5a", width: int = 520
) -> str:
    """A vertical bar chart (histogram look): one column per item, labels under the first/middle/last."""
    if not items:
        return f'<p class="missing">{esc(title)}: nothing to plot</p>'
    height, left, bottom, top_pad = 220, 48, 40, 24
    plot_w, plot_h = width - left - 10, height - bottom - top_pad
    top = max((v for _, v in items), default=0) or 1
    col_w = plot_w / len(items)
    parts = [
        f'<svg class="chart" role="img" aria-label="{esc(title)}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
        f'<text x="0" y="14" class="title">{esc(title)}</text>',
        f'<text x="{left - 4}" y="{top_pad + 10}" text-anchor="end">{_fmt(top)}</text>',
        f'<text x="{left - 4}" y="{top_pad + plot_h}" text-anchor="end">0</text>',
        f'<line x1="{left}" y1="{top_pad + plot_h}" x2="{left + plot_w}" y2="{top_pad + plot_h}" '
        'class="axis"/>',
    ]
    label_at = {0, len(items) // 2, len(items) - 1}
    for i, (label, value) in enumerate(items):
        h = value / top * plot_h
        x = left + i * col_w
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{top_pad + plot_h - h:.1f}" width="{max(col_w - 2, 1):.1f}" '
            f'height="{h:.1f}" fill="{color}"><title>{esc(label)}: {_fmt(value)}</title></rect>'
        )
        if i in label_at:
            # the last label ends at the plot's edge, so a long one is not cut off
            anchor, at = ("end", x + col_w) if i == len(items) - 1 and i > 0 else ("middle", x + col_w / 2)
            parts.append(
                f'<text x="{at:.1f}" y="{top_pad + plot_h + 14}" text-anchor="{anchor}">{esc(label)}</text>'
            )
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle" class="axis-label">'
        f"{esc(x_label)}</text></svg>"
    )
    return "".join(parts)


def _missing(section: Section, title: str) -> str | None:
    return (
        f'<p class="missing">{esc(title)}: not available ({esc(section.missing)})</p>'
        if section.missing
        else None
    )


def render_funnels(reports: Mapping[str, dict[str, Any] | None]) -> str:
    out = ['<section id="funnel"><h2>Stages</h2><div class="cards">']
    for stage, report in reports.items():
        if report is None:
            out.append(
                f'<div class="card"><h3>{esc(stage)}</h3><p class="missing">no report for this run</p></div>'
            )
            continue
        funnel = report.get("funnel") or {}
        items = [("in", funnel.get("rows_in", 0)), ("out", funnel.get("rows_out", 0))]
        items += [(f"rejected: {k}", v) for k, v in sorted((funnel.get("rejected_by_reason") or {}).items())]
        items += [(f"dropped: {k}", v) for k, v in sorted((funnel.get("dropped_by_reason") or {}).items())]
        balanced = funnel.get("is_balanced")
        out.append(
            f'<div class="card"><h3>{esc(stage)}</h3>'
            f'<p class="meta">{_fmt(report.get("seconds"))} s · finished {esc(report.get("finished_at"))}'
            f"{'' if balanced in (None, True) else ' · <b class=bad>funnel does not balance</b>'}</p>"
            f"{svg_bars(f'{stage}: rows', [(k, float(v or 0)) for k, v in items])}</div>"
        )
    out.append("</div></section>")
    return "".join(out)


def _quality_status(result: Mapping[str, Any]) -> tuple[str, str]:
    if result.get("skipped"):
        return "skipped", "off"
    if result.get("failed_critical"):
        return "failed", "bad"
    if result.get("failed_warnings"):
        return "passed with warnings", "warn"
    return "passed", "good"


def render_quality(quality: Mapping[str, dict[str, Any] | None]) -> str:
    out = ['<section id="quality"><h2>Data quality</h2>']
    for stage, result in quality.items():
        if result is None:
            out.append(f'<h3>{esc(stage)}</h3><p class="missing">no quality results for this run</p>')
            continue
        label, css = _quality_status(result)
        out.append(
            f'<h3>{esc(stage)} <span class="badge {css}">{esc(label)}</span></h3>'
            f'<p class="meta">mode {esc(result.get("mode"))} · thresholds {esc(result.get("thresholds"))}'
            f" · {_fmt(result.get('seconds'))} s</p>"
        )
        rows = []
        for dataset, outcome in (result.get("datasets") or {}).items():
            for check in outcome.get("expectations", []):
                state = (
                    "pass"
                    if check.get("success")
                    else ("FAIL" if check.get("severity") == "critical" else "warn")
                )
                css = "good" if state == "pass" else ("bad" if state == "FAIL" else "warn")
                observed = check.get("observed_value")
                seen = check.get("exception") or (
                    f"{check.get('unexpected_count')} of {check.get('element_count')} unexpected"
                    if check.get("unexpected_count") is not None
                    else ("" if observed is None else f"observed {observed}")
                )
                if check.get("unexpected_examples"):
                    seen += f", e.g. {check['unexpected_examples']}"
                rows.append(
                    f'<tr class="{css}"><td>{esc(dataset)}</td><td>{esc(check.get("description"))}</td>'
                    f"<td><code>{esc(check.get('expectation'))}</code></td><td>{esc(check.get('severity'))}</td>"
                    f"<td>{esc(state)}</td><td>{esc(seen)}</td></tr>"
                )
        if rows:
            out.append(
                "<table><thead><tr><th>dataset</th><th>expectation</th><th>check</th><th>severity</th>"
                f"<th>result</th><th>observed</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
            )
    out.append("</section>")
    return "".join(out)


def render_plots(plots: Mapping[str, Section], sizes: Section) -> str:
    out = ['<section id="plots"><h2>Data</h2><div class="cards">']
    events = plots["events"]
    out.append(
        '<div class="card">'
        + (
            _missing(events, "Events per day")
            or svg_columns(
                "Events per day", [(d or "(no dt= folder)", float(n)) for d, n in events.data], x_label="day"
            )
        )
        + "</div>"
    )
    for key, title, who in (("user_degree", "User degree", "users"), ("item_degree", "Item degree", "items")):
        section = plots[key]
        body = _missing(section, title) or svg_bars(
            f"{title}: {who} by positives (power-of-two buckets)",
            [(f"{b}-{2 * b - 1}" if b > 1 else "1", float(n)) for b, n in section.data],
            color="#8a5ba8",
        )
        out.append(f'<div class="card">{body}</div>')
    body = _missing(sizes, "Train/test sizes") or svg_bars(
        "Train/test rows by label",
        [
            (f"{name} {'positives' if label == 1.0 else 'negatives'}", float(n))
            for name, counts in sizes.data.items()
            for label, n in sorted(counts.items(), reverse=True)
        ],
        color="#c07a2c",
    )
    out.append(f'<div class="card">{body}</div>')
    scores = plots["scores"]
    out.append(
        '<div class="card">'
        + (
            _missing(scores, "Similarity scores")
            or svg_columns(
                "Similarity score distribution",
                [(f"{lo:.{_decimals(scores.data)}f}", float(n)) for lo, _, n in scores.data],
                x_label=plots["score_axis"].data,
            )
        )
        + "</div>"
    )
    neighbours = plots["neighbours"]
    out.append(
        '<div class="card">'
        + (
            _missing(neighbours, "Neighbours per product")
            or svg_bars(
                "Neighbours per product",
                [(f"{k} neighbours", float(n)) for k, n in neighbours.data],
                color="#2c8c8c",
            )
        )
        + "</div>"
    )
    out.append("</div></section>")
    return "".join(out)


def _render_tile(tile: Tile, *, main: bool = False) -> str:
    caption = [f'<div class="name">{esc(tile.name or tile.sku or tile.product_id)}</div>']
    if tile.brand:
        caption.append(f'<div class="brand">{esc(tile.brand)}</div>')
    if tile.score is not None:
        caption.append(f'<div class="score">#{esc(tile.rank)} · score {esc(f"{tile.score:.6g}")}</div>')
    if tile.image_uri:
        picture = f'<img src="{esc(tile.image_uri)}" alt="{esc(tile.name or tile.sku)}" loading="eager">'
    else:
        why = esc(tile.placeholder)
        picture = f'<div class="placeholder" role="img" aria-label="{why}">{why}</div>'
    css = "tile main" if main else "tile"
    return (
        f'<figure class="{css}" title="{esc(tile.product_id)}">{picture}'
        f"<figcaption>{''.join(caption)}</figcaption></figure>"
    )


def render_gallery(section: Section, *, higher_is_closer: bool, neighbours: int) -> str:
    direction = "higher is closer" if higher_is_closer else "lower is closer"
    out = [
        f'<section id="gallery"><h2>Gallery</h2><p class="meta">each product beside its {neighbours} '
        f"most similar products, best first ({esc(direction)}), as read back from the Gremlin export</p>"
    ]
    if section.missing:
        out.append(f'<p class="missing">not available ({esc(section.missing)})</p>')
    for row in section.data or []:
        rest = "".join(_render_tile(t) for t in row.neighbours)
        if row.note:
            rest += f'<p class="note">{esc(row.note)}</p>'
        out.append(
            f'<div class="row">{_render_tile(row.product, main=True)}<div class="arrow">→</div>{rest}</div>'
        )
    out.append("</section>")
    return "".join(out)


CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:22px;margin:0 0 4px}
h2{border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:32px}
.meta{color:#666;font-size:12px;margin:2px 0 8px}.missing{color:#8a6d3b;font-style:italic}
.cards{display:flex;flex-wrap:wrap;gap:16px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:12px}.card h3{margin:0 0 4px}
svg.chart{font:11px sans-serif;display:block}svg .title{font-weight:bold;font-size:12px}svg .axis{stroke:#888}
table{border-collapse:collapse;background:#fff;margin-bottom:12px;font-size:12px}
td,th{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top;max-width:520px}
td{overflow-wrap:anywhere}tr.bad td{background:#fbe3e3}tr.warn td{background:#fff4d6}
.badge{font-size:12px;padding:2px 8px;border-radius:10px;color:#fff;vertical-align:middle}
.badge.good{background:#3c8c3c}.badge.bad{background:#b03030}.badge.warn{background:#c08a00}
.badge.off{background:#888}b.bad{color:#b03030}
.row{display:flex;align-items:flex-start;gap:8px;margin:12px 0;flex-wrap:wrap}
.arrow{font-size:28px;color:#999;align-self:center}
figure.tile{margin:0;width:__PX__px;background:#fff;border:1px solid #ddd;border-radius:4px;padding:4px}
figure.tile.main{border:2px solid #3b6ea8}
figure.tile img{width:__PX__px;height:__PX__px;object-fit:contain;display:block}
.placeholder{width:__PX__px;height:__PX__px;display:flex;align-items:center;justify-content:center;
text-align:center;color:#7a2e2e;font-size:11px;overflow:hidden;overflow-wrap:anywhere;padding:4px;
box-sizing:border-box;background:repeating-linear-gradient(45deg,#eee,#eee 8px,#e4e4e4 8px,#e4e4e4 16px)}
figcaption{font-size:11px;margin-top:4px;overflow-wrap:anywhere}.name{font-weight:bold}.brand{color:#555}
.score{color:#3b6ea8}.note{color:#7a2e2e;font-style:italic;align-self:center}
"""


def render_weights_notice(embed_report: Mapping[str, Any] | None) -> str:
    """A warning line when the embeddings come from random weights (the local sample run's default)."""
    weights = str((embed_report or {}).get("weights") or "")
    if not weights.startswith("random:"):
        return ""
    return (
        f'<p class="missing" id="random-weights">embeddings use random weights ({esc(weights)}): the graph '
        "shows that the pipeline works, not which products look alike; production runs refuse them</p>"
    )


def render_page(
    *,
    run_date: str,
    workdir: str,
    reports: Mapping[str, Any],
    quality: Mapping[str, Any],
    plots: Mapping[str, Section],
    sizes: Section,
    gallery_section: Section,
    higher_is_closer: bool,
    neighbours: int,
    px: int,
) -> str:
    generated = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>stylegraph run {esc(run_date)}</title>"
        f"<style>{CSS.replace('__PX__', str(px))}</style></head><body>"
        f"<h1>stylegraph run {esc(run_date)}</h1>"
        f'<p class="meta">work root {esc(workdir)} · generated {esc(generated)}</p>'
        + render_weights_notice(reports.get("embed"))
        + render_funnels(reports)
        + render_quality(quality)
        + render_plots(plots, sizes)
        + render_gallery(gallery_section, higher_is_closer=higher_is_closer, neighbours=neighbours)
        + "</body></html>\n"
    )
