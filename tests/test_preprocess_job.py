"""End-to-end tests of jobs/preprocess_interactions.py on generated logs, checked by a plain-Python oracle.

One module-scoped sequence of runs over the same small sample (3 days, 40 users, 50 items):

1. ``first``: run date 03-30 with one look-back day, 2 shuffle partitions -> ``W``.
2. ``other``: the same logs re-cut into other files, lines shuffled, 8 partitions -> ``W2``.
3. ``failed``: a rerun of 03-30 on ``W`` that fails after staging -> ``W`` must be unchanged.
4. ``rerun``: a good rerun of 03-30 on ``W`` -> the same bytes as after ``first``.
5. ``next_night``: run date 03-31 with two look-back days on ``W`` -> 03-30 untouched, index extended.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import os
import random
import re
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import jobs.preprocess_interactions as job
from jobs.common import quality
from jobs.common.cli import JobError
from jobs.generate_sample import generate_interactions
from schemas import interactions as S

SEED = 5
END = dt.date(2024, 3, 31)
FIRST_DATE = dt.date(2024, 3, 30)
TEST_NEGATIVES = 5
TRAIN_NEGATIVES = 4
MIN_USER, MIN_ITEM = 3, 3
ITEMS = [f"sku{n:04d}" for n in range(50)]
TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$")


# ------------------------------------------------------------------------------------------ the oracle


def oracle_reason(line: str, run_date: dt.date) -> str | None:
    """The reject reason of a line, by the input contract, in plain Python."""
    try:
        obj = json.loads(line)
    except ValueError:
        return S.REASON_INVALID_JSON
    if not isinstance(obj, dict):
        return S.REASON_INVALID_JSON
    if any(obj.get(f) is None for f in S.REQUIRED_FIELDS):
        return S.REASON_MISSING_FIELD
    if any(not isinstance(obj[f], str) for f in S.ID_FIELDS) or not isinstance(
        obj.get(S.SESSION_ID) or "", str
    ):
        return S.REASON_NON_STRING_ID
    if any(isinstance(obj[f], str) and not obj[f].strip() for f in S.REQUIRED_FIELDS):
        return S.REASON_EMPTY_FIELD
    if obj[S.EVENT_TYPE] not in S.EVENT_TYPES:
        return S.REASON_UNKNOWN_EVENT_TYPE
    when = oracle_time(obj[S.EVENT_TIME])
    if when is None:
        return S.REASON_BAD_EVENT_TIME
    end = dt.datetime.combine(run_date + dt.timedelta(days=1), dt.time(0), tzinfo=dt.UTC)
    return S.REASON_FUTURE_EVENT_TIME if when >= end else None


def oracle_time(text: object) -> dt.datetime | None:
    if not isinstance(text, str) or not TIME_RE.match(text):
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def read_lines(root: Path, run_date: dt.date, lookback: int) -> list[str]:
    lines = []
    for back in range(lookback + 1):
        folder = root / f"dt={run_date - dt.timedelta(days=back)}"
        for path in sorted(folder.glob("*")):
            opener = gzip.open if path.name.endswith(".gz") else open
            with opener(path, "rt", encoding="utf-8") as handle:
                lines.extend(handle.read().splitlines())
    return lines


def oracle(root: Path, run_date: dt.date, lookback: int) -> dict:
    """Rejects, duplicates and the k-core positives {(user_id, item_id): latest time} by the contract."""
    reasons: Counter = Counter()
    events: dict[str, tuple] = {}
    duplicates = 0
    lines = read_lines(root, run_date, lookback)
    for line in lines:
        reason = oracle_reason(line, run_date)
        if reason:
            reasons[reason] += 1
            continue
        obj = json.loads(line)
        if obj[S.EVENT_ID] in events:
            duplicates += 1
            continue
        events[obj[S.EVENT_ID]] = (obj[S.USER_ID], obj[S.ITEM_ID], oracle_time(obj[S.EVENT_TIME]))
    positives: dict[tuple[str, str], dt.datetime] = {}
    first_seen: dict[str, dict[str, dt.datetime]] = {"user": {}, "item": {}}
    for user, item, when in events.values():
        positives[(user, item)] = max(when, positives.get((user, item), when))
        for kind, key in (("user", user), ("item", item)):
            first_seen[kind][key] = min(when, first_seen[kind].get(key, when))
    n_positives = len(positives)
    while True:
        users = Counter(u for u, _ in positives)
        items = Counter(i for _, i in positives)
        kept = {k: v for k, v in positives.items() if users[k[0]] >= MIN_USER and items[k[1]] >= MIN_ITEM}
        if len(kept) == len(positives):
            break
        positives = kept
    return {
        "lines": len(lines),
        "reasons": reasons,
        "duplicates": duplicates,
        "positives": positives,
        "n_positives": n_positives,
        "events": len(events),
        "first_seen": first_seen,
    }


# ----------------------------------------------------------------------------------------- the runs


def args(inp: Path, out: Path, run_date: dt.date, lookback: int, reports: Path) -> list[str]:
    return [
        "--input",
        str(inp),
        "--output",
        str(out),
        "--run-date",
        run_date.isoformat(),
        "--lookback-days",
        str(lookback),
        "--min-user-interactions",
        str(MIN_USER),
        "--min-item-interactions",
        str(MIN_ITEM),
        "--train-negatives",
        str(TRAIN_NEGATIVES),
        "--test-negatives",
        str(TEST_NEGATIVES),
        "--seed",
        "3",
        "--report-dir",
        str(reports),
        "--log-level",
        "WARNING",
    ]


def recut(src: Path, dst: Path) -> None:
    """The same lines in other files: shuffled order, three files a day, plain and gzip, names reversed."""
    rng = random.Random(99)
    for day in sorted(src.iterdir()):
        lines = read_lines(src, dt.date.fromisoformat(day.name[3:]), 0)
        rng.shuffle(lines)
        (dst / day.name).mkdir(parents=True)
        for n, chunk in enumerate((lines[0::3], lines[1::3], lines[2::3])):
            data = "\n".join(chunk) + "\n"
            name = f"z-{9 - n}.jsonl"
            if n == 1:
                with gzip.open(dst / day.name / (name + ".gz"), "wt", encoding="utf-8") as handle:
                    handle.write(data)
            else:
                (dst / day.name / name).write_text(data, encoding="utf-8")


NEW_USERS = {
    "new-b": "2024-03-31T01:00:00Z",
    "new-a": "2024-03-31T02:00:00+00:00",
    "new-c": "2024-03-31T03:00:00Z",
}
NEW_ITEMS = ("sku-new-2", "sku-new-1", "sku-new-3")


def add_new_ids(day: Path) -> None:
    """Three users first seen on the last day (new-b first), each with the three new items and four old."""
    lines = []
    for n, (user, first) in enumerate(NEW_USERS.items()):
        start = dt.datetime.fromisoformat(first.replace("Z", "+00:00"))
        for k, item in enumerate((*NEW_ITEMS, *ITEMS[:4])):
            when = (start + dt.timedelta(minutes=k)).isoformat()
            lines.append(
                json.dumps(
                    {
                        S.EVENT_ID: f"new-{n}-{k}",
                        S.USER_ID: user,
                        S.ITEM_ID: item,
                        S.EVENT_TYPE: "click",
                        S.EVENT_TIME: when,
                    }
                )
            )
    (day / "part-extra.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def snapshot(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every data file (hidden and _ files left out)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not any(p.startswith((".", "_")) for p in rel.parts):
            out[str(rel)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def contents(snap: dict[str, str], folder: str) -> list[str]:
    """The file hashes under a folder, names left out (Spark names files with a random id)."""
    return sorted(h for rel, h in snap.items() if rel.startswith(folder + "/"))


def rows(folder: Path, columns=(S.USER_IDX, S.ITEM_IDX, S.LABEL)) -> list[tuple]:
    table = pq.read_table(str(folder), columns=list(columns))
    return sorted(zip(*(table.column(c).to_pylist() for c in columns), strict=True))


def index_map(out: Path, kind: str) -> dict[str, int]:
    key, idx = (S.USER_ID, S.USER_IDX) if kind == "users" else (S.ITEM_ID, S.ITEM_IDX)
    table = pq.read_table(str(out / "index" / kind))
    return dict(zip(table.column(key).to_pylist(), table.column(idx).to_pylist(), strict=True))


@pytest.fixture(scope="module")
def runs(spark, tmp_path_factory):
    base = tmp_path_factory.mktemp("preprocess")
    manifest = generate_interactions(
        str(base / "sample"),
        seed=SEED,
        end_date=END,
        days=3,
        users=40,
        items=ITEMS,
        events=1500,
        bad_fraction=0.03,
    )
    logs = base / "sample" / "interactions"
    recut(logs, base / "recut")
    out, out2, reports = base / "W", base / "W2", base / "R"
    partitions = spark.conf.get("spark.sql.shuffle.partitions")
    result = {"manifest": manifest, "logs": logs, "out": out, "out2": out2, "reports": reports}
    try:
        spark.conf.set("spark.sql.shuffle.partitions", "2")
        result["first"] = job.main(args(logs, out, FIRST_DATE, 1, reports))
        result["first_snapshot"] = snapshot(out)
        result["first_users"], result["first_items"] = index_map(out, "users"), index_map(out, "items")

        spark.conf.set("spark.sql.shuffle.partitions", "8")
        result["other"] = job.main(args(base / "recut", out2, FIRST_DATE, 1, base / "R2"))

        spark.conf.set("spark.sql.shuffle.partitions", "2")
        original_check = job.check_staged

        def fail_after_staging(staged, counts):
            original_check(staged, counts)
            assert all(os.path.isdir(uri) for uri in staged.values())
            raise RuntimeError("injected failure after staging")

        job.check_staged = fail_after_staging
        try:
            with pytest.raises(RuntimeError, match="injected failure"):
                job.main(args(logs, out, FIRST_DATE, 1, base / "R-failed"))
        finally:
            job.check_staged = original_check
        result["failed_snapshot"] = snapshot(out)
        result["failed_reports"] = base / "R-failed"

        result["rerun"] = job.main(args(logs, out, FIRST_DATE, 1, reports))
        result["rerun_snapshot"] = snapshot(out)

        add_new_ids(logs / f"dt={END}")
        result["next"] = job.main(args(logs, out, END, 2, reports))
        result["next_snapshot"] = snapshot(out)
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", partitions)
    return result


def _by_user(rows_: list[tuple]) -> dict[int, dict[float, list[int]]]:
    out: dict[int, dict[float, list[int]]] = defaultdict(lambda: {0.0: [], 1.0: []})
    for user, item, label in rows_:
        out[user][label].append(item)
    return out


def test_report_funnel_matches_the_oracle_and_the_manifest(runs):
    expected = oracle(runs["logs"], FIRST_DATE, 1)
    report = runs["first"]
    funnel = report["funnel"]
    assert funnel["rows_in"] == expected["lines"]
    assert funnel["rejected_by_reason"] == dict(expected["reasons"])
    assert funnel["dropped_by_reason"] == {job.DUPLICATE_REASON: expected["duplicates"]}
    assert funnel["rows_out"] == expected["events"]
    assert report["positives"] == expected["n_positives"]
    assert report["positives_after_k_core"] == len(expected["positives"])
    assert report["removed_by_k_core"] == expected["n_positives"] - len(expected["positives"])
    assert report["users"] == len({u for u, _ in expected["positives"]})
    assert report["items"] == len({i for _, i in expected["positives"]})
    # The generator's own count of what it injected, for the two days read.
    days = {d["dt"]: d for d in runs["manifest"]["per_day"]}
    read = [days[str(FIRST_DATE)], days[str(FIRST_DATE - dt.timedelta(days=1))]]
    injected = Counter()
    for day in read:
        injected.update({k: v for k, v in day["bad_lines"].items() if v})
    assert funnel["rejected_by_reason"] == dict(injected)
    assert funnel["dropped_by_reason"][job.DUPLICATE_REASON] == sum(d["duplicate_lines"] for d in read)
    written = json.loads((runs["reports"] / "preprocess" / f"dt={END}.json").read_text())
    assert written["run_date"] == str(END)


def test_each_bad_line_lands_in_rejects_with_its_reason(runs):
    expected = sorted(
        (line, reason)
        for line in read_lines(runs["logs"], FIRST_DATE, 1)
        if (reason := oracle_reason(line, FIRST_DATE))
    )
    table = pq.read_table(str(runs["out"] / "rejects" / f"dt={FIRST_DATE}"))
    actual = sorted(zip(table.column(S.LINE).to_pylist(), table.column(S.REASON).to_pylist(), strict=True))
    assert actual == expected
    assert {r for _, r in actual} == set(S.REJECT_REASONS) - {S.REASON_FUTURE_EVENT_TIME}
    files = set(table.column(S.INPUT_FILE).to_pylist())
    assert all(f"/dt={FIRST_DATE - dt.timedelta(days=b)}/" in "".join(files) for b in (0, 1))
    # future events sit in the last day's folder: the 03-31 run rejects them.
    future = pq.read_table(str(runs["out"] / "rejects" / f"dt={END}")).column(S.REASON).to_pylist()
    assert (
        future.count(S.REASON_FUTURE_EVENT_TIME) == runs["manifest"]["bad_lines_by_kind"]["future_event_time"]
    )


def test_split_properties(runs):
    out = runs["out"]
    expected = oracle(runs["logs"], FIRST_DATE, 1)["positives"]
    users, items = runs["first_users"], runs["first_items"]
    train = _by_user(rows(out / "train" / f"dt={FIRST_DATE}"))
    test = _by_user(rows(out / "test" / f"dt={FIRST_DATE}"))
    positives_by_user: dict[int, set[int]] = defaultdict(set)
    for user, item in expected:
        positives_by_user[users[user]].add(items[item])
    # Train and test positives together are exactly the filtered positives, each once.
    together = sorted((u, i) for part in (train, test) for u, by in part.items() for i in by[1.0])
    assert together == sorted((users[u], items[i]) for u, i in expected)
    latest: dict[str, tuple] = {}
    for (user, item), when in expected.items():
        latest[user] = max(latest.get(user, (when, item)), (when, item))
    n_items = len({i for _, i in expected})
    for user, item_set in positives_by_user.items():
        user_id = next(u for u, idx in users.items() if idx == user)
        assert test[user][1.0] == [items[latest[user_id][1]]]  # the latest positive, ties by item_id
        negs = test[user][0.0]
        assert len(negs) == len(set(negs)) == min(TEST_NEGATIVES, n_items - len(item_set))
        assert not set(negs) & item_set
        assert not set(train[user][0.0]) & item_set
        assert len(train[user][0.0]) == TRAIN_NEGATIVES * len(train[user][1.0])
    schema = pq.read_schema(next((out / "train" / f"dt={FIRST_DATE}").glob("*.parquet")))
    assert [(f.name, str(f.type)) for f in schema] == [
        ("user_idx", "int32"),
        ("item_idx", "int32"),
        ("label", "float"),
    ]


def test_ids_are_contiguous_and_ordered_by_first_seen(runs):
    expected = oracle(runs["logs"], FIRST_DATE, 1)["positives"]
    assert sorted(runs["first_users"]) == sorted({u for u, _ in expected})
    assert sorted(runs["first_users"].values()) == list(range(len(runs["first_users"])))
    assert sorted(runs["first_items"].values()) == list(range(len(runs["first_items"])))
    first_seen: dict[str, dt.datetime] = {}
    events = [
        json.loads(line)
        for line in read_lines(runs["logs"], FIRST_DATE, 1)
        if oracle_reason(line, FIRST_DATE) is None
    ]
    for obj in events:
        if obj[S.USER_ID] in runs["first_users"]:
            when = oracle_time(obj[S.EVENT_TIME])
            first_seen[obj[S.USER_ID]] = min(first_seen.get(obj[S.USER_ID], when), when)
    assert sorted(runs["first_users"], key=runs["first_users"].get) == sorted(
        first_seen, key=lambda u: (first_seen[u], u)
    )


def test_same_output_with_other_partitions_and_file_order(runs):
    day = f"dt={FIRST_DATE}"
    for folder in ("train", "test"):
        assert rows(runs["out2"] / folder / day) == rows(runs["out"] / folder / day)
    reject_cols = (S.LINE, S.REASON)
    assert rows(runs["out2"] / "rejects" / day, reject_cols) == rows(
        runs["out"] / "rejects" / day, reject_cols
    )
    assert index_map(runs["out2"], "users") == runs["first_users"]
    assert index_map(runs["out2"], "items") == runs["first_items"]
    assert runs["other"]["funnel"] == runs["first"]["funnel"]


def test_quality_gate_passed_the_run_and_fails_bad_sets_read_uncached(runs, spark, tmp_path):
    results = json.loads((runs["reports"] / "preprocess" / f"dt={FIRST_DATE}.quality.json").read_text())
    assert results["success"] is True
    # Decided on the counts of the tasks that read the staged files back: no Spark query over the sets.
    assert {name: dataset["counted_by"] for name, dataset in results["datasets"].items()} == {
        quality.TRAIN: "readers",
        quality.TEST: "readers",
        quality.FUNNEL_DATASET: "driver",
    }

    # The job's gate path (staged Parquet re-read per metric, not cached) still fails bad sets: one test
    # user gets a second positive that is also a repeat of a negative, one train index is out of range.
    day = f"dt={FIRST_DATE}"
    test_df = spark.read.parquet(str(runs["out"] / "test" / day))
    user, negative = test_df.filter("label = 0").orderBy("user_idx", "item_idx").first()[:2]
    bad_test = test_df.unionByName(spark.createDataFrame([(user, negative, 1.0)], test_df.schema))
    bad_test.write.parquet(str(tmp_path / "test"))
    train_df = spark.read.parquet(str(runs["out"] / "train" / day))
    n_items = runs["first"]["items_index_size"]
    bad_train = train_df.unionByName(spark.createDataFrame([(user, n_items, 0.0)], train_df.schema))
    bad_train.write.parquet(str(tmp_path / "train"))
    frames = {name: spark.read.parquet(str(tmp_path / name)) for name in (quality.TRAIN, quality.TEST)}
    with pytest.raises(quality.QualityGateError) as caught:
        quality.run_gate(
            job.STAGE,
            frames,
            reports_root=str(tmp_path / "R"),
            run_date=FIRST_DATE,
            context={
                quality.N_USERS: runs["first"]["users_index_size"],
                quality.N_ITEMS: n_items,
                quality.TEST_NEGATIVES: TEST_NEGATIVES,
            },
            cache_frames=False,
        )
    failed = json.loads((tmp_path / "R" / "preprocess" / f"dt={FIRST_DATE}.quality.json").read_text())
    assert [line.split(" [")[1].split("]")[0] for line in failed["failed_critical"]] == [
        f"0 <= item_idx < {n_items}",
        "every test user has exactly one positive (leave-one-out)",
        "a user's test items are distinct (negatives never repeat the positive)",
    ]
    assert str(caught.value).count("\n  - ") == 3
    # Nothing was cached on the way: neither by the gate nor by great-expectations' own batch persist.
    levels = [frame.storageLevel for frame in frames.values()]
    assert [(level.useMemory, level.useDisk) for level in levels] == [(False, False)] * 2
    # Read back and counted by tasks as the job does: the counts do not pass the bad sets (the added rows
    # are in files of their own, so a user's rows are in two files); Spark's gate gives the same failures.
    context = {
        quality.N_USERS: runs["first"]["users_index_size"],
        quality.N_ITEMS: n_items,
        quality.TEST_NEGATIVES: TEST_NEGATIVES,
    }
    thresholds = quality.QualityThresholds()
    read_back = {
        name: quality.read_back(spark, str(tmp_path / name), quality.suite_of(name, thresholds, context))
        for name in (quality.TRAIN, quality.TEST)
    }
    with pytest.raises(quality.QualityGateError):
        quality.run_gate(
            job.STAGE, read_back, reports_root=str(tmp_path / "R2"), run_date=FIRST_DATE, context=context
        )
    again = json.loads((tmp_path / "R2" / "preprocess" / f"dt={FIRST_DATE}.quality.json").read_text())
    assert again["failed_critical"] == failed["failed_critical"]
    assert {name: again["datasets"][name]["counted_by"] for name in read_back} == {
        quality.TRAIN: "spark",
        quality.TEST: "spark",
    }


def test_failed_run_leaves_previous_output_and_no_staging(runs):
    assert runs["failed_snapshot"] == runs["first_snapshot"]
    assert not list((runs["out"] / "_staging").rglob("*.parquet"))
    assert not runs["failed_reports"].exists()


def test_rerun_gives_identical_files(runs):
    first, rerun = runs["first_snapshot"], runs["rerun_snapshot"]
    for folder in ("train", "test", "rejects", "index/users", "index/items"):
        assert contents(rerun, folder) == contents(first, folder), folder
        assert contents(first, folder)
    assert runs["rerun"]["funnel"] == runs["first"]["funnel"]


def test_next_night_keeps_earlier_partitions_and_ids(runs):
    first, after = runs["rerun_snapshot"], runs["next_snapshot"]
    for folder in ("train", "test", "rejects"):
        assert contents(after, f"{folder}/dt={FIRST_DATE}") == contents(first, f"{folder}/dt={FIRST_DATE}")
        assert contents(after, f"{folder}/dt={END}")
    users_after, items_after = index_map(runs["out"], "users"), index_map(runs["out"], "items")
    for before, now in ((runs["first_users"], users_after), (runs["first_items"], items_after)):
        assert {k: now[k] for k in before} == before  # no id changed meaning
        assert sorted(now.values()) == list(range(len(now)))  # new ids appended contiguously
    expected = oracle(runs["logs"], END, 2)["positives"]
    assert {u for u, _ in expected} <= set(users_after)
    assert set(NEW_USERS) <= set(users_after) and set(NEW_ITEMS) <= set(items_after)
    # New ids follow the old ones, by first-seen time then id (new-b was seen before new-a).
    seen = oracle(runs["logs"], END, 2)["first_seen"]
    for before, now, kind in (
        (runs["first_users"], users_after, "user"),
        (runs["first_items"], items_after, "item"),
    ):
        new = [k for k in now if k not in before]
        assert sorted(new, key=now.get) == sorted(new, key=lambda k, kind=kind: (seen[kind][k], k))
    assert users_after["new-b"] < users_after["new-a"]
    assert items_after["sku-new-2"] < items_after["sku-new-1"] < items_after["sku-new-3"]
    together = sorted(
        (u, i) for part in ("train", "test") for u, i, y in rows(runs["out"] / part / f"dt={END}") if y == 1.0
    )
    assert together == sorted((users_after[u], items_after[i]) for u, i in expected)


@pytest.mark.parametrize(
    "case",
    ["missing_input", "missing_day", "bad_date", "empty_day", "chrono_without_fraction"],
)
def test_clear_errors_write_nothing(tmp_path, case):
    logs = tmp_path / "logs"
    (logs / "dt=2024-03-30").mkdir(parents=True)
    (logs / "dt=2024-03-30" / "part-0.jsonl").write_text("")
    out = tmp_path / "out"
    argv = ["--input", str(logs), "--output", str(out), "--run-date", "2024-03-30"]
    if case == "missing_input":
        argv[1] = str(tmp_path / "nowhere")
    elif case == "missing_day":
        argv[5] = "2024-03-29"
    elif case == "bad_date":
        argv[5] = "2024-3-30"
    elif case == "chrono_without_fraction":
        (logs / "dt=2024-03-30" / "part-0.jsonl").write_text('{"a":1}\n')
        argv += ["--split", "chrono"]
    with pytest.raises(JobError) as err:
        job.main(argv)
    message = str(err.value)
    assert {
        "missing_input": "nowhere",
        "missing_day": "dt=2024-03-29",
        "bad_date": "2024-3-30",
        "empty_day": "empty",
        "chrono_without_fraction": "--test-fraction",
    }[case] in message
    assert not out.exists()
