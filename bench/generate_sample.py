"""How fast the sample generator writes interaction logs, against the obvious peer.

The peer is what one would write first: one dict per event and ``json.dumps`` per line. Ours renders a
whole chunk of lines as a numpy byte matrix (``jobs.generate_sample._LineRenderer``). Both write the
same good-event lines of the same day (checked byte for byte before timing), plain ``.jsonl``.
End-to-end rows time ``generate_interactions`` (sampling, duplicates, bad lines, writing) at full size.

Run: ``.venv/bin/python -m bench.generate_sample [--quick]``. Times are CPU seconds of this process
(``time.process_time``) and wall seconds; the machine is shared, so wall time depends on the neighbours.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import tempfile
import time
from typing import Any

import numpy as np

from jobs import generate_sample as gs

LOG = logging.getLogger("stylegraph.bench.generate_sample")
PRODUCTS = 5_000
SEED = 7
END_DATE = dt.date(2024, 3, 31)


def _columns(events: int) -> tuple[dict[str, np.ndarray], list[str], int]:
    """One day of good events with every column the renderer needs."""
    rng = np.random.default_rng(SEED)
    rows, _ = gs.build_catalog(seed=SEED, products=PRODUCTS)
    items = [row.sku for row in rows]
    users = max(400, events // 50)
    epoch0 = int(dt.datetime(2024, 3, 31, tzinfo=dt.UTC).timestamp())
    second = np.sort(rng.integers(gs.SECONDS_PER_DAY, size=events))
    columns = {
        "seq": np.arange(events, dtype=np.int64),
        "user": rng.integers(users, size=events),
        "item": rng.integers(len(items), size=events),
        "type": rng.integers(len(gs.EVENT_TYPES), size=events),
        "utc": epoch0 + second,
        "tz": rng.integers(len(gs.TZ_SUFFIXES), size=events),
        "second": second,
        "session": rng.choice(3, size=events, p=gs.SESSION_STATE_WEIGHTS),
        "extra": np.where(rng.random(events) < gs.EXTRA_FIELD_SHARE, 0, -1),
    }
    return columns, items, users


def _peer_lines(columns: dict[str, np.ndarray], items: list[str], user_width: int) -> bytes:
    """The straightforward way: a dict per event, json.dumps per line."""
    times = gs._time_strings(columns["utc"], columns["tz"])
    extra_key, extra_value = "client", {"app": "ios", "version": "5.2.1"}
    out = []
    for i, (seq, user, item, event_type, session, extra, second) in enumerate(zip(
        columns["seq"].tolist(), columns["user"].tolist(), columns["item"].tolist(), columns["type"].tolist(),
        columns["session"].tolist(), columns["extra"].tolist(), columns["second"].tolist(), strict=True,
    )):
        event: dict[str, Any] = {
            gs.EVENT_ID: f"e{seq:010d}",
            gs.USER_ID: f"u{user:0{user_width}d}",
            gs.ITEM_ID: items[item],
            gs.EVENT_TYPE: gs.EVENT_TYPES[event_type],
            gs.EVENT_TIME: times[i],
        }
        if session == gs.SESSION_PRESENT:
            event[gs.SESSION_ID] = f"s{user:0{user_width}d}-0-{second // gs.SESSION_SECONDS:02d}"
        elif session == gs.SESSION_NULL:
            event[gs.SESSION_ID] = None
        if extra >= 0:
            event[extra_key] = extra_value
        out.append(json.dumps(event, separators=(",", ":")))
    return ("\n".join(out) + "\n").encode("utf-8")


def _ours_lines(columns: dict[str, np.ndarray], items: list[str], user_width: int) -> bytes:
    renderer = gs._LineRenderer(items=items, user_width=user_width, seq_width=10, days=1)
    rows = np.arange(len(columns["seq"]))
    return b"".join(
        renderer.render(columns, 0, rows[at: at + gs.RENDER_CHUNK_ROWS], len(rows), [])
        for at in range(0, len(rows), gs.RENDER_CHUNK_ROWS)
    )


def _timed(fn, *args) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args)
    return result, time.process_time() - cpu, time.perf_counter() - wall


def _end_to_end(events: int) -> dict[str, Any]:
    rows, _ = gs.build_catalog(seed=SEED, products=PRODUCTS)
    items = [row.sku for row in rows]
    with tempfile.TemporaryDirectory(prefix="bench-generate-") as out_dir:
        manifest, cpu, wall = _timed(
            lambda: gs.generate_interactions(
                out_dir, seed=SEED, end_date=END_DATE, days=7, users=max(400, events // 50), items=items,
                events=events, bad_fraction=0.03, compression=gs.COMPRESSION_NONE,
            )
        )
    return {"case": f"generate_interactions end to end, {events:,} events, 7 days, plain",
            "lines": manifest["lines"], "cpu_s": round(cpu, 2), "wall_s": round(wall, 2),
            "lines_per_cpu_s": round(manifest["lines"] / cpu)}


def run(quick: bool) -> list[dict[str, Any]]:
    """Result rows: peer vs ours on rendering one day, then end-to-end runs of ours."""
    render_events = 100_000 if quick else 1_000_000
    columns, items, users = _columns(render_events)
    user_width = max(6, len(str(users - 1)))
    peer, peer_cpu, peer_wall = _timed(_peer_lines, columns, items, user_width)
    ours, ours_cpu, ours_wall = _timed(_ours_lines, columns, items, user_width)
    if ours != peer:
        raise AssertionError("the renderer's lines differ from json.dumps's")
    results = [
        {"case": f"render {render_events:,} lines: peer json.dumps per event", "lines": render_events,
         "cpu_s": round(peer_cpu, 2), "wall_s": round(peer_wall, 2),
         "lines_per_cpu_s": round(render_events / peer_cpu)},
        {"case": f"render {render_events:,} lines: ours numpy byte matrix", "lines": render_events,
         "cpu_s": round(ours_cpu, 2), "wall_s": round(ours_wall, 2),
         "lines_per_cpu_s": round(render_events / ours_cpu),
         "speedup_vs_peer_cpu": round(peer_cpu / ours_cpu, 1)},
    ]
    for events in ((200_000,) if quick else (1_000_000, 10_000_000)):
        results.append(_end_to_end(events))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results = run(args.quick)
    print(f"machine: {os.cpu_count()} cores, shared with other engineers' test runs; "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| case | lines | CPU s | wall s | lines per CPU s | CPU speed-up vs peer |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in results:
        print(f"| {row['case']} | {row['lines']:,} | {row['cpu_s']} | {row['wall_s']} | "
              f"{row['lines_per_cpu_s']:,} | {row.get('speedup_vs_peer_cpu', '')} |")


if __name__ == "__main__":
    main()
