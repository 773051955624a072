"""Benchmark: the preprocess job on local[2] against a single-process DuckDB reference of the same steps.

``.venv/bin/python -m bench.preprocess [--quick] [--sizes 1000000 10000000] [--workdir DIR]``

For each size, logs are generated with ``jobs.generate_sample.generate_interactions`` (plain JSON Lines,
1% bad lines, 1% duplicates), then processed twice in the same run:

* ``spark``: ``python -m jobs.preprocess_interactions`` on ``local[2]`` as users run it, a cold process
  with default settings, the quality gate on (parse + checks, rejects, dedup, k-core, index,
  leave-one-out split, 4 train / 99 test negatives, Parquet out, report);
* ``duckdb``: the same steps in SQL, in one cold process limited to 2 threads (read lines as text, JSON checks
  with ``json_type``, dedup, iterated k-core, ``row_number`` index, LOO split, hashed negatives with an
  anti-join, Parquet out).

Both are timed wall-clock from process start to exit. Prints events per second, microseconds per event
and the Spark / DuckDB time ratio.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from typing import Any

from bench.cold import timed_process

LOG = logging.getLogger("bench.preprocess")

END = dt.date(2024, 3, 31)
DAYS = 7
SEED = 7
FULL_SIZES = (1_000_000, 10_000_000)
QUICK_SIZES = (20_000, 100_000)
TRAIN_NEGATIVES = 4
TEST_NEGATIVES = 99
MIN_INTERACTIONS = 5
THREADS = 2
# The counts both implementations report, side by side in each result row.
COMPARED_COUNTS = ("positives_after_k_core", "users", "items", "train_rows", "test_rows", "k_core_rounds")
# DuckDB takes 80% of RAM by default: at 10 M events its negative-sampling step grew past 17 GB and was
# killed on this shared 24 GiB machine. With a limit it spills to its temp directory instead.
DUCKDB_MEMORY_LIMIT = "8GB"


def shape(events: int) -> tuple[int, int]:
    """Users and items for a size: about 50 events per user, items growing slower (a catalog)."""
    users = max(200, events // 50)
    items = max(300, min(50_000, events // 200))
    return users, items


def generate(root: str, events: int) -> dict[str, Any]:
    from jobs.generate_sample import COMPRESSION_NONE, generate_interactions

    users, items = shape(events)
    skus = [f"sku{n:06d}" for n in range(items)]
    return generate_interactions(
        root,
        seed=SEED,
        end_date=END,
        days=DAYS,
        users=users,
        items=skus,
        events=events,
        bad_fraction=0.01,
        compression=COMPRESSION_NONE,
    )


def run_spark(logs: str, out: str) -> tuple[float, dict[str, Any]]:
    """``python -m jobs.preprocess_interactions`` as users run it: a cold process, default settings
    (quality gate on); wall seconds from start to exit, and its run report."""
    reports = os.path.join(out, "_bench_reports")
    seconds, _, _ = timed_process(
        [
            "-m",
            "jobs.preprocess_interactions",
            "--input",
            logs,
            "--output",
            out,
            "--run-date",
            END.isoformat(),
            "--lookback-days",
            str(DAYS - 1),
            "--train-negatives",
            str(TRAIN_NEGATIVES),
            "--test-negatives",
            str(TEST_NEGATIVES),
            "--seed",
            "1",
            "--report-dir",
            reports,
            "--log-level",
            "WARNING",
        ]
    )
    with open(os.path.join(reports, "preprocess", f"dt={END.isoformat()}.json"), encoding="utf-8") as handle:
        return seconds, json.load(handle)


def run_duckdb_process(logs: str, out: str) -> tuple[float, dict[str, Any]]:
    """The reference as a cold process too (interpreter start and the duckdb import included)."""
    code = (
        "import json, sys\n"
        "from bench.preprocess import run_duckdb\n"
        "print(json.dumps(run_duckdb(sys.argv[1], sys.argv[2])[1]))\n"
    )
    seconds, _, output = timed_process(["-c", code, logs, out])
    result = next(line for line in reversed(output.splitlines()) if line.startswith("{"))
    return seconds, json.loads(result)


DUCKDB_STEPS = r"""
CREATE TEMP TABLE lines AS
SELECT line, filename AS input_file
FROM read_csv({files}, columns={{'line': 'VARCHAR'}}, header=false, delim='\x1f', quote='', escape='',
              auto_detect=false, filename=true, null_padding=false, strict_mode=false);

CREATE TEMP TABLE parsed AS
WITH j AS (
  SELECT line, input_file, CASE WHEN json_valid(line) THEN line END AS jl FROM lines
), f AS (
  SELECT line, input_file, coalesce(json_type(jl) = 'OBJECT', false) AS ok,
    json_type(jl, '$.event_id') AS t_event, json_type(jl, '$.user_id') AS t_user,
    json_type(jl, '$.item_id') AS t_item, json_type(jl, '$.session_id') AS t_session,
    json_extract_string(jl, '$.event_id') AS event_id,
    json_extract_string(jl, '$.user_id') AS user_id,
    json_extract_string(jl, '$.item_id') AS item_id,
    json_extract_string(jl, '$.event_type') AS event_type,
    json_extract_string(jl, '$.event_time') AS event_time
  FROM j
), t AS (
  SELECT *,
    CASE WHEN regexp_full_match(event_time,
                                '\d{{4}}-\d{{2}}-\d{{2}}T\d{{2}}:\d{{2}}:\d{{2}}(\.\d{{1,6}})?(Z|[+-]\d{{2}}:\d{{2}})')
         THEN TRY_CAST(event_time AS TIMESTAMPTZ) END AS event_ts
  FROM f
)
SELECT line, input_file, event_id, user_id, item_id, event_ts,
  CASE
    WHEN NOT ok THEN 'invalid_json'
    WHEN event_id IS NULL OR user_id IS NULL OR item_id IS NULL OR event_type IS NULL OR event_time IS NULL
      THEN 'missing_field'
    WHEN t_event <> 'VARCHAR' OR t_user <> 'VARCHAR' OR t_item <> 'VARCHAR'
      OR (t_session IS NOT NULL AND t_session NOT IN ('VARCHAR', 'NULL')) THEN 'non_string_id'
    WHEN trim(event_id) = '' OR trim(user_id) = '' OR trim(item_id) = '' OR trim(event_type) = ''
      OR trim(event_time) = '' THEN 'empty_field'
    WHEN event_type NOT IN ('view', 'click', 'add_to_cart', 'purchase') THEN 'unknown_event_type'
    WHEN event_ts IS NULL THEN 'bad_event_time'
    WHEN event_ts >= TIMESTAMPTZ '{end_of_day}' THEN 'future_event_time'
  END AS reason
FROM t;

COPY (SELECT line, input_file, reason FROM parsed WHERE reason IS NOT NULL)
TO '{out}/rejects.parquet' (FORMAT parquet);

CREATE TEMP TABLE positives AS
WITH events AS (
  SELECT event_id, arg_min(user_id, event_ts) AS user_id, arg_min(item_id, event_ts) AS item_id,
         min(event_ts) AS event_ts
  FROM parsed WHERE reason IS NULL GROUP BY event_id
)
SELECT user_id, item_id, max(event_ts) AS event_ts, min(event_ts) AS first_ts, count(*) AS event_count
FROM events GROUP BY user_id, item_id;
"""

DUCKDB_KCORE_ROUND = """
CREATE OR REPLACE TEMP TABLE core_next AS
SELECT * FROM core
WHERE user_id IN (SELECT user_id FROM core GROUP BY user_id HAVING count(*) >= {k})
  AND item_id IN (SELECT item_id FROM core GROUP BY item_id HAVING count(*) >= {k});
"""

DUCKDB_OUTPUT = """
CREATE TEMP TABLE users AS
SELECT p.user_id, (row_number() OVER (ORDER BY min(p.first_ts), p.user_id) - 1)::INT AS user_idx
FROM positives p SEMI JOIN core c ON p.user_id = c.user_id GROUP BY p.user_id;
CREATE TEMP TABLE items AS
SELECT p.item_id, (row_number() OVER (ORDER BY min(p.first_ts), p.item_id) - 1)::INT AS item_idx
FROM positives p SEMI JOIN core c ON p.item_id = c.item_id GROUP BY p.item_id;
COPY users TO '{out}/users.parquet' (FORMAT parquet);
COPY items TO '{out}/items.parquet' (FORMAT parquet);

CREATE TEMP TABLE pos AS
SELECT u.user_idx, i.item_idx,
  row_number() OVER (PARTITION BY u.user_idx ORDER BY c.event_ts DESC, c.item_id DESC) = 1 AS is_test
FROM core c JOIN users u USING (user_id) JOIN items i USING (item_id);

CREATE TEMP TABLE stats AS
SELECT user_idx, count(*) AS n_pos, count(*) FILTER (WHERE NOT is_test) AS n_train FROM pos GROUP BY user_idx;

-- Hashed candidates per user, minus the positives, first distinct ones kept in draw order.
CREATE TEMP TABLE cand AS
WITH n AS (SELECT count(*) AS n_items FROM items),
draws AS (
  SELECT s.user_idx, kind, j, (hash({seed}, kind, s.user_idx, j) % n.n_items)::INT AS item_idx, wanted
  FROM stats s, n,
  LATERAL (SELECT 'test' AS kind, least({test_neg}, n.n_items - s.n_pos) AS wanted
           UNION ALL SELECT 'train', least({train_neg} * s.n_train, n.n_items - s.n_pos)) w,
  LATERAL range(CAST(ceil(w.wanted * n.n_items / greatest(n.n_items - s.n_pos, 1) * 1.5) + 32 AS BIGINT)) r(j)
  WHERE w.wanted > 0
), kept AS (
  SELECT d.* FROM draws d ANTI JOIN pos p ON d.user_idx = p.user_idx AND d.item_idx = p.item_idx
), firsts AS (
  SELECT user_idx, kind, item_idx, min(j) AS j, any_value(wanted) AS wanted FROM kept GROUP BY ALL
)
SELECT user_idx, kind, item_idx FROM firsts
QUALIFY row_number() OVER (PARTITION BY user_idx, kind ORDER BY j) <= wanted;

COPY (
  SELECT user_idx, item_idx, 1.0::FLOAT AS label FROM pos WHERE NOT is_test
  UNION ALL SELECT user_idx, item_idx, 0.0::FLOAT FROM cand WHERE kind = 'train'
) TO '{out}/train.parquet' (FORMAT parquet);
COPY (
  SELECT user_idx, item_idx, 1.0::FLOAT AS label FROM pos WHERE is_test
  UNION ALL SELECT user_idx, item_idx, 0.0::FLOAT FROM cand WHERE kind = 'test'
) TO '{out}/test.parquet' (FORMAT parquet);
"""


def run_duckdb(logs: str, out: str) -> tuple[float, dict[str, Any]]:
    """The reference: the same steps in one DuckDB process (train negatives distinct per user, as Spark's)."""
    import duckdb

    from jobs.common import storage

    files = [f for f in storage.list_files(logs) if f.endswith(".jsonl")]
    os.makedirs(out, exist_ok=True)
    end_of_day = f"{END + dt.timedelta(days=1)} 00:00:00+00"
    started = time.perf_counter()
    con = duckdb.connect()
    con.execute(f"SET threads={THREADS}")
    con.execute(f"SET memory_limit='{DUCKDB_MEMORY_LIMIT}'")
    con.execute(f"SET temp_directory='{out}/tmp'")
    con.execute(DUCKDB_STEPS.format(files=json.dumps(files), out=out, end_of_day=end_of_day))
    con.execute("CREATE TEMP TABLE core AS SELECT * FROM positives")
    count = con.execute("SELECT count(*) FROM core").fetchone()[0]
    rounds = 0
    while True:
        rounds += 1
        con.execute(DUCKDB_KCORE_ROUND.format(k=MIN_INTERACTIONS))
        new_count = con.execute("SELECT count(*) FROM core_next").fetchone()[0]
        con.execute("CREATE OR REPLACE TEMP TABLE core AS SELECT * FROM core_next")
        if new_count == count:
            break
        count = new_count
    con.execute(DUCKDB_OUTPUT.format(out=out, seed=1, test_neg=TEST_NEGATIVES, train_neg=TRAIN_NEGATIVES))
    seconds = time.perf_counter() - started
    result = {
        "lines": con.execute("SELECT count(*) FROM parsed").fetchone()[0],
        "rejected": con.execute("SELECT count(*) FROM parsed WHERE reason IS NOT NULL").fetchone()[0],
        "positives_after_k_core": count,
        "k_core_rounds": rounds,
        "users": con.execute("SELECT count(*) FROM users").fetchone()[0],
        "items": con.execute("SELECT count(*) FROM items").fetchone()[0],
        "train_rows": con.execute(f"SELECT count(*) FROM '{out}/train.parquet'").fetchone()[0],
        "test_rows": con.execute(f"SELECT count(*) FROM '{out}/test.parquet'").fetchone()[0],
    }
    con.close()
    return seconds, result


def run(
    quick: bool, sizes: tuple[int, ...] | None = None, workdir: str | None = None
) -> list[dict[str, Any]]:
    """Generate, run both, return one row per size."""
    os.environ.setdefault("STYLEGRAPH_SPARK_MASTER", f"local[{THREADS}]")  # the job's processes inherit it
    sizes = sizes or (QUICK_SIZES if quick else FULL_SIZES)
    root = workdir or tempfile.mkdtemp(prefix="bench-preprocess-")
    rows = []
    try:
        for events in sizes:
            base = os.path.join(root, f"n{events}")
            shutil.rmtree(base, ignore_errors=True)
            t0 = time.perf_counter()
            manifest = generate(base, events)
            gen_s = time.perf_counter() - t0
            logs = os.path.join(base, "interactions")
            lines = manifest["lines"]
            spark_s, report = run_spark(logs, os.path.join(base, "spark"))
            duck_s, duck = run_duckdb_process(logs, os.path.join(base, "duckdb"))
            row = {
                "bench": "preprocess",
                "events": events,
                "lines": lines,
                "generate_s": round(gen_s, 1),
                "spark_s": round(spark_s, 1),
                "duckdb_s": round(duck_s, 1),
                "ratio_spark_over_duckdb": round(spark_s / duck_s, 2),
                "spark_events_per_s": round(lines / spark_s),
                "duckdb_events_per_s": round(lines / duck_s),
                "spark_us_per_event": round(1e6 * spark_s / lines, 2),
                "duckdb_us_per_event": round(1e6 * duck_s / lines, 2),
                "spark_counts": {k: report[k] for k in COMPARED_COUNTS},
                "duckdb_counts": {k: duck[k] for k in COMPARED_COUNTS},
                "spark_phase_seconds": report.get("seconds_by_phase", {}),
                "load_average_1_5_15": [round(x, 1) for x in os.getloadavg()],
                "machine": f"{os.cpu_count()} cores, {platform.machine()}, shared with other work",
            }
            LOG.info("%s", row)
            rows.append(row)
            shutil.rmtree(base, ignore_errors=True)
    finally:
        if workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| events | lines | spark s | duckdb s | spark/duckdb | spark ev/s | duckdb ev/s | spark us/ev "
        "| duckdb us/ev |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(
            f"| {r['events']:,} | {r['lines']:,} | {r['spark_s']} | {r['duckdb_s']} "
            f"| {r['ratio_spark_over_duckdb']}x "
            f"| {r['spark_events_per_s']:,} | {r['duckdb_events_per_s']:,} | {r['spark_us_per_event']} "
            f"| {r['duckdb_us_per_event']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", type=int, nargs="*")
    parser.add_argument("--workdir")
    ns = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    LOG.setLevel(logging.INFO)  # the job sets the root logger to its own --log-level
    rows = run(ns.quick, tuple(ns.sizes) if ns.sizes else None, ns.workdir)
    out = [format_table(rows)]
    for r in rows:
        out.append(f"{r['events']:,} events: spark {r['spark_counts']} | duckdb {r['duckdb_counts']}")
        out.append(f"{r['events']:,} events: spark phases (s) {r['spark_phase_seconds']}")
        out.append(f"{r['events']:,} events: load average after the run {r['load_average_1_5_15']}")
    out.append(
        f"machine: {os.cpu_count()} cores, local[{THREADS}] vs DuckDB threads={THREADS}, "
        "shared with other work"
    )
    print("\n".join(out))  # noqa: T201 - a benchmark's table is its output


if __name__ == "__main__":
    main()
