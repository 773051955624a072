"""Run every benchmark under ``bench/`` and write one results table.

    .venv/bin/python -m bench.run_all [--quick] [--only embed,similarity]    # make bench [QUICK=1]

Each benchmark ``bench/<name>.py`` runs in its own Python process (each builds its own SparkSession
and its own data): through its ``run(quick) -> list[dict]`` when it has one, else as
``python -m bench.<name> [--quick]`` with the end of its output kept. The tables go to
``bench/results/latest.md`` (one section per benchmark, its rows as a table, plus a summary of which
ran, how long and whether they failed) and to stdout. Exit code 1 when any benchmark failed.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

LOG = logging.getLogger("stylegraph.bench")

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results" / "latest.md"
NOT_BENCHMARKS = {"run_all", "__init__"}
OUTPUT_TAIL_LINES = 30
# Runs one benchmark's run(quick) in a child process and writes its rows as JSON.
CHILD = (
    "import importlib, json, sys\n"
    "module = importlib.import_module('bench.' + sys.argv[1])\n"
    "rows = module.run(sys.argv[2] == 'quick')\n"
    "with open(sys.argv[3], 'w', encoding='utf-8') as handle:\n"
    "    json.dump(rows, handle, default=str)\n"
)


def discover(bench_dir: Path = BENCH_DIR) -> list[str]:
    """Every benchmark module name under ``bench/``, sorted."""
    return sorted(path.stem for path in bench_dir.glob("*.py") if path.stem not in NOT_BENCHMARKS)


def has_run_function(name: str, bench_dir: Path = BENCH_DIR) -> bool:
    """True when ``bench/<name>.py`` defines a top-level ``run`` (read, not imported)."""
    source = (bench_dir / f"{name}.py").read_text(encoding="utf-8")
    return re.search(r"^def run\(", source, flags=re.MULTILINE) is not None


def run_one(
    name: str, quick: bool, *, bench_dir: Path = BENCH_DIR, timeout: float | None = None
) -> dict[str, Any]:
    """Run one benchmark in a child process; returns its rows (or output) and how it went."""
    paths = [str(bench_dir.parent), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in paths if path)}
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-run-all-") as tmp:
        rows_file = Path(tmp) / "rows.json"
        if has_run_function(name, bench_dir):
            command = [sys.executable, "-c", CHILD, name, "quick" if quick else "full", str(rows_file)]
        else:
            command = [sys.executable, "-m", f"bench.{name}", *(["--quick"] if quick else [])]
        try:
            completed = subprocess.run(
                command, cwd=bench_dir.parent, env=env, capture_output=True, text=True, timeout=timeout,
                check=False,
            )
            returncode, output = completed.returncode, completed.stdout + completed.stderr
        except subprocess.TimeoutExpired as err:
            returncode, output = -1, f"timed out after {timeout} s\n{err.stdout or ''}{err.stderr or ''}"
        rows = json.loads(rows_file.read_text()) if returncode == 0 and rows_file.exists() else None
    tail = "\n".join(output.strip().splitlines()[-OUTPUT_TAIL_LINES:])
    return {
        "name": name,
        "ok": returncode == 0,
        "returncode": returncode,
        "seconds": round(time.time() - started, 1),
        "rows": rows,
        "output_tail": tail if rows is None or returncode != 0 else "",
    }


def _cell(value: Any) -> str:
    if value is None:
        return ""
    text = f"{value:,.3f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Rows as one markdown table; the columns are every key seen, in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(column)) for column in columns) + " |" for row in rows]
    return "\n".join(lines)


def machine_line() -> str:
    return (
        f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, "
        "shared with other engineers' test runs (timings are noisy; ratios within one run compare peers)"
    )


def render(results: Sequence[dict[str, Any]], quick: bool) -> str:
    """The whole results page."""
    when = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    parts = [
        f"# Benchmarks ({'quick' if quick else 'full'} run, {when})",
        "",
        f"Machine: {machine_line()}.",
        "",
        markdown_table([
            {"benchmark": r["name"], "status": "ok" if r["ok"] else f"FAILED (exit {r['returncode']})",
             "seconds": r["seconds"], "rows": len(r["rows"] or [])}
            for r in results
        ]),
    ]
    for result in results:
        parts += ["", f"## {result['name']}", ""]
        if result["rows"]:
            parts.append(markdown_table(result["rows"]))
        if result["output_tail"]:
            parts += ["```", result["output_tail"], "```"]
    return "\n".join(parts) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.run_all", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--only", default=None, help="comma-separated benchmark names")
    parser.add_argument("--output", default=str(RESULTS), help="results markdown file")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per benchmark")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    names = discover()
    if args.only:
        wanted = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            parser.error(f"unknown benchmark(s) {unknown}: choose from {names}")
        names = [name for name in names if name in wanted]
    results = []
    for name in names:
        LOG.info("bench %s: running (%s)", name, "quick" if args.quick else "full")
        result = run_one(name, args.quick, timeout=args.timeout)
        LOG.info("bench %s: %s in %.1f s", name, "ok" if result["ok"] else "FAILED", result["seconds"])
        results.append(result)
    page = render(results, args.quick)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(page, encoding="utf-8")
    sys.stdout.write(page)
    LOG.info("results written to %s", output)
    return 0 if all(result["ok"] for result in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
