"""Kill the pipeline at random moments; a rerun must publish exactly the rows of an uninterrupted run.

    .venv/bin/python -m bench.fault_injection [--kills 20] [--seed 1] [--sample S] [--keep DIR]

One uninterrupted ``python -m jobs.pipeline`` run on the sample data gives the reference rows of every
published dataset (the NCF sets, index maps and rejects; embeddings, similarity edges and their rejects;
the Gremlin export's rows). Then, ``--kills`` times, on one work folder: start the pipeline, SIGKILL its
process group (the Python driver and Spark's JVM, as a lost node would) at a random moment within the
length of the previous full run, check that every dataset a reader can see is whole (equal to the reference
rows: a rerun of the same date publishes the same rows, so old and new are equal and any mix or
duplicate shows), then rerun the pipeline to the end and check that every dataset equals the reference
and that no staging folder is left. The report page (it carries its generation time) is not compared.
"""
from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from jobs.common import storage

ROOT = Path(__file__).resolve().parent.parent
RUN_DATE = "2024-03-31"
SEED = 7
DATA_SUFFIXES = (".parquet", ".csv", ".csv.gz")


def pipeline(work: Path, sample: Path) -> subprocess.Popen:
    """Start ``python -m jobs.pipeline`` in a session of its own (so its whole process group can die);
    its log goes to ``<work>.log``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "0"}
    work.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{work}.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "jobs.pipeline", "--workdir", str(work), "--sample", str(sample),
             "--run-date", RUN_DATE, "--seed", str(SEED)],
            cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True,
        )


def run_to_end(work: Path, sample: Path) -> float:
    started = time.time()
    process = pipeline(work, sample)
    if process.wait() != 0:
        with open(f"{work}.log", "rb") as log:
            tail = log.read()[-2000:].decode(errors="replace")
        raise RuntimeError(f"pipeline exited {process.returncode}: {tail}")
    return time.time() - started


def _rows(uri: str) -> list[str]:
    if uri.endswith(".parquet"):
        table = pq.read_table(storage.local_path(uri))
        return [json.dumps(row, sort_keys=True, default=str) for row in table.to_pylist()]
    opener = gzip.open if uri.endswith(".gz") else open
    with opener(storage.local_path(uri), "rt", encoding="utf-8") as handle:
        return handle.read().splitlines()


def published_rows(work: Path) -> dict[str, list[str]]:
    """Every published dataset under ``work`` as its sorted rows, keyed by its folder (a reader's view:
    hidden names skipped). CSV headers are kept as rows, so a file counted twice shows."""
    out: dict[str, list[str]] = {}
    for uri in storage.list_files(str(work), DATA_SUFFIXES):
        rel = os.path.relpath(storage.local_path(uri), work)
        if rel.startswith("report"):
            continue
        out.setdefault(os.path.dirname(rel), []).extend(_rows(uri))
    return {folder: sorted(rows) for folder, rows in out.items()}


def staging_left(work: Path) -> list[str]:
    return sorted(str(p.relative_to(work)) for p in work.rglob(storage.STAGING_DIR))


def kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):  # already finished
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def run(quick: bool = False, *, kills: int | None = None, seed: int = 1, keep: Path | None = None,
        sample: Path | None = None) -> list[dict[str, Any]]:
    """The benchmark: ``kills`` (default 20, 1 when ``quick``) kills, each followed by a rerun."""
    kills = kills if kills is not None else (1 if quick else 20)
    rng = random.Random(seed)
    base = keep or Path(tempfile.mkdtemp(prefix="stylegraph-faults-"))
    sample = sample or base / "sample"
    reference_seconds = run_to_end(base / "reference", sample)  # generates the sample when missing
    reference = published_rows(base / "reference")
    work = base / "work"
    rows = []
    run_seconds = reference_seconds  # a rerun is shorter than a first run: kills land within the last
    for n in range(1, kills + 1):
        at = rng.uniform(0.5, run_seconds)
        process = pipeline(work, sample)
        time.sleep(at)
        finished_first = process.poll() is not None
        kill_group(process)
        seen = published_rows(work)
        torn = sorted(folder for folder, got in seen.items() if got != reference.get(folder))
        left_by_kill = staging_left(work)
        rerun_seconds = run_to_end(work, sample)
        run_seconds = rerun_seconds
        after = published_rows(work)
        differs = sorted(f for f in set(after) | set(reference) if after.get(f) != reference.get(f))
        row = {
            "kill": n,
            "at_s": round(at, 1),
            "finished_before_kill": finished_first,
            "datasets_visible_after_kill": len(seen),
            "torn_after_kill": torn,
            "staging_after_kill": len(left_by_kill),
            "rerun_s": round(rerun_seconds, 1),
            "differs_after_rerun": differs,
            "staging_after_rerun": staging_left(work),
            "ok": not torn and not differs and not staging_left(work),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    if keep is None:
        shutil.rmtree(base, ignore_errors=True)
    summary = {
        "kills": kills,
        "ok": sum(r["ok"] for r in rows),
        "reference_s": round(reference_seconds, 1),
        "datasets": len(reference),
        "rows": sum(len(v) for v in reference.values()),
        "load": os.getloadavg()[0],
    }
    print(json.dumps(summary), flush=True)
    return [{**summary, "failed_kills": [r["kill"] for r in rows if not r["ok"]]}]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="one kill")
    parser.add_argument("--keep", type=Path, default=None, help="work here and keep it")
    parser.add_argument("--sample", type=Path, default=None, help="an existing sample (default: generated)")
    args = parser.parse_args(argv)
    result = run(args.quick, kills=1 if args.quick else args.kills, seed=args.seed, keep=args.keep,
                 sample=args.sample)
    return 0 if result[0]["ok"] == result[0]["kills"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
