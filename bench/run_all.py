"""Run every benchmark under ``bench/`` and write one results table.

    .venv/bin/python -m bench.run_all [--quick] [--only embed,similarity]    # make bench [QUICK=1]

Each benchmark ``bench/<name>.py`` runs in its own Python process (each builds its own SparkSession
and its own data): through its ``run(quick) -> list[dict]`` when it has one, else as
``python -m bench.<name> [--quick]`` with the end of its output kept. A full run updates
``bench/RESULTS.md``: one section per benchmark (its rows as a table, under one line naming the machine,
the date and the load), replacing only the sections of the benchmarks it ran. A quick run writes
``bench/results/quick.md`` instead. The page is also printed. Exit code 1 when any benchmark failed.
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
RESULTS = BENCH_DIR / "RESULTS.md"
QUICK_RESULTS = BENCH_DIR / "results" / "quick.md"
PAGE_TITLE = "# Benchmark results"
PAGE_INTRO = (
    "Each section is the latest full run of one benchmark (`make bench`, or `python -m bench.run_all --only "
    "NAME`), against the peer a user would otherwise pick, in the same run; ratios compare within one run. "
    "How each benchmark is built: its module docstring under `bench/`."
)
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


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line() -> str:
    """The machine, the date and the load, in one line."""
    when = dt.datetime.now(dt.UTC).isoformat(timespec="minutes")
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return (
        f"{when}, {os.cpu_count()} cores ({_cpu_model()}), Python {platform.python_version()}, "
        f"load average before the benchmark {load}"
    )


def render_section(result: dict[str, Any], machine: str) -> str:
    """One benchmark's section: a heading, the machine line, its table (or its output when it failed)."""
    status = "" if result["ok"] else f" (FAILED, exit {result['returncode']})"
    parts = [f"## {result['name']}{status}", "", f"{machine}; {result['seconds']} s in all.", ""]
    if result["rows"]:
        parts.append(markdown_table(result["rows"]))
    if result["output_tail"]:
        parts += ["```", result["output_tail"], "```"]
    return "\n".join(parts).rstrip() + "\n"


def split_sections(page: str) -> dict[str, str]:
    """The ``## <name>`` sections of a results page, by benchmark name, in page order."""
    sections: dict[str, str] = {}
    for chunk in re.split(r"^(?=## )", page, flags=re.MULTILINE)[1:]:
        name = chunk.split("\n", 1)[0][3:].split(" ", 1)[0]
        sections[name] = chunk.rstrip() + "\n"
    return sections


def render(results: Sequence[dict[str, Any]], machines: dict[str, str], previous: str = "") -> str:
    """The results page: ``previous``'s sections with those of ``results`` replaced or added."""
    sections = split_sections(previous)
    for result in results:
        sections[result["name"]] = render_section(result, machines[result["name"]])
    body = "\n".join(sections[name] for name in sorted(sections))
    return f"{PAGE_TITLE}\n\n{PAGE_INTRO}\n\n{body}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.run_all", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--only", default=None, help="comma-separated benchmark names")
    parser.add_argument(
        "--output", default=None, help=f"results page (default {RESULTS}; quick: {QUICK_RESULTS})"
    )
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
    machines = {}
    for name in names:
        LOG.info("bench %s: running (%s)", name, "quick" if args.quick else "full")
        machines[name] = machine_line()
        result = run_one(name, args.quick, timeout=args.timeout)
        LOG.info("bench %s: %s in %.1f s", name, "ok" if result["ok"] else "FAILED", result["seconds"])
        results.append(result)
    output = Path(args.output or (QUICK_RESULTS if args.quick else RESULTS))
    previous = output.read_text(encoding="utf-8") if output.exists() and not args.quick else ""
    page = render(results, machines, previous)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(page, encoding="utf-8")
    sys.stdout.write(page)
    LOG.info("results written to %s", output)
    return 0 if all(result["ok"] for result in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
