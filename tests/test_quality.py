"""The data-quality gate: each suite passes a good frame and names exactly what a bad one breaks."""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
from pyspark.sql import types as T

from jobs.common import quality, quality_metrics
from jobs.common.cli import JobError, job_parser
from schemas import expectations as ex
from schemas import quality_terms as terms
from schemas.quality_terms import ExpectationSpec

ROOT = pathlib.Path(__file__).resolve().parents[1]

RUN_DATE = "2024-03-31"
NAN = float("nan")
HOSTILE = 'a,"b"\n<script>alert(1)</script>;é'


def _schema(*fields: tuple[str, T.DataType]) -> T.StructType:
    return T.StructType([T.StructField(name, dtype, True) for name, dtype in fields])


NCF = _schema(("user_idx", T.IntegerType()), ("item_idx", T.IntegerType()), ("label", T.FloatType()))
RAW = _schema(*((c, T.StringType()) for c in ("event_id", "user_id", "item_id", "event_type", "event_time")))
EMB = _schema(
    ("sku", T.StringType()),
    ("embedding", T.ArrayType(T.FloatType())),
    ("status", T.StringType()),
    ("error", T.StringType()),
)
EDGES = _schema(
    ("src", T.StringType()), ("dst", T.StringType()), ("score", T.DoubleType()), ("rank", T.IntegerType())
)
VERTICES = _schema(("~id", T.StringType()), ("~label", T.StringType()), ("name:String", T.StringType()))
GEDGES = _schema(*((c, T.StringType()) for c in ("~id", "~from", "~to", "~label", "score:Double")))


def _raw(n_bad_users: int, bad_types: list[str]) -> list[tuple]:
    rows = []
    for i in range(10):
        user = None if i < n_bad_users else f"u{i}"
        etype = bad_types[i - 5] if 5 <= i < 5 + len(bad_types) else "view"
        rows.append((f"e{i}", user, HOSTILE if i == 9 else f"i{i}", etype, "2024-03-30T10:00:00Z"))
    return rows


def _embeddings(n_error: int) -> list[tuple]:
    ok = [(f"sku{i}", [float(i), 1.0], "ok", None) for i in range(10 - n_error)]
    return ok + [(f"{HOSTILE}{i}", None, "error", "cannot identify image file") for i in range(n_error)]


# dataset -> (schema, good rows, bad rows, context, descriptions of the expectations the bad rows break)
CASES = {
    quality.RAW_INTERACTIONS: (
        RAW,
        _raw(1, []),  # 10% incomplete is still acceptable at --max-reject-fraction 0.1
        _raw(2, ["refund", "<b>view</b>"]),
        {},
        {"user_id is never blank", "event_type is one of view, click, add_to_cart, purchase"},
    ),
    quality.TRAIN: (
        NCF,
        [(0, 0, 1.0), (0, 1, 0.0), (1, 1, 1.0), (1, 2, 0.0)],
        [(0, 0, 1.0), (0, 0, 0.0), (2, 1, 1.0), (1, None, 1.0), (1, 2, 0.5), (1, 1, 0.0)],
        {quality.N_USERS: 2, quality.N_ITEMS: 3},
        {
            "0 <= user_idx < 2",
            "item_idx is never blank",
            "label is 0 or 1",
            "each (user_idx, item_idx) pair appears once",
        },
    ),
    quality.TEST: (
        NCF,
        [(0, 2, 1.0), (0, 0, 0.0), (1, 0, 1.0), (1, 1, 0.0)],
        [(0, 2, 1.0), (0, 0, 1.0), (1, 0, 0.0), (1, 1, 0.0), (1, 1, 0.0), (-1, 1, 1.0), (-1, 2, 0.0)],
        {quality.N_USERS: 2, quality.N_ITEMS: 3, quality.TEST_NEGATIVES: 1},
        {
            "0 <= user_idx < 2",
            "every test user has exactly one positive (leave-one-out)",
            "a user's test items are distinct (negatives never repeat the positive)",
            "every test user has 1 positive + 1 negatives",
        },
    ),
    quality.EMBEDDINGS: (
        EMB,
        _embeddings(1),
        [
            *_embeddings(2),
            ("sku0", [0.0, 1.0], "ok", None),  # duplicate sku
            ("nan", [NAN, 1.0], "ok", None),
            ("empty", None, "ok", None),
            ("wide", [1.0, 2.0, 3.0], "ok", None),
            ("odd", None, "pending", None),
        ],
        {quality.EMBEDDING_DIM: 2},
        {
            "one row per sku",
            "status is ok or error",
            "every ok row has a finite embedding of 2 floats",
        },
    ),
    quality.SIMILARITY_EDGES: (
        EDGES,
        [("a", "b", 0.9, 1), ("a", HOSTILE, 0.5, 2), ("b", "a", 0.9, 1), (HOSTILE, "a", 0.5, 1)],
        [
            ("a", "a", 1.0, 1),
            ("a", "b", NAN, 2),
            ("b", "a", 0.9, 1),
            ("b", "a", 0.8, 2),
            ("c", "a", None, 3),
            ("d", "a", 0.1, 1),
            ("d", "b", 0.1, 2),
            ("d", "c", 0.1, 2),
        ],
        {quality.TOP_K: 2},
        {
            "score is never blank",
            "no product is its own neighbour (src != dst)",
            "scores are finite (no NaN, no Infinity)",
            "each (src, dst) pair once",
            "1 <= rank <= 2",
            "at most 2 neighbours per product",
        },
    ),
    quality.GREMLIN_VERTICES: (
        VERTICES,
        [("p1", "product", HOSTILE), ("p2", "product", None)],
        [("p1", "product", "x"), ("p1", "product", "y"), (None, "product", "z"), ("p3", None, "w")],
        {},
        {"~id is never blank", "~id is unique (duplicates merge in Neptune)", "~label is never blank"},
    ),
    quality.GREMLIN_EDGES: (
        GEDGES,
        [("e1", "p1", "p2", "similar", "0.9"), ("e2", "p2", "p1", "similar", "-1.5E-3")],
        [
            ("e1", "p1", "p1", "similar", "0.9"),
            ("e1", "p1", "p2", "similar", "abc"),
            ("e3", "p2", None, "similar", "0.1"),
            ("e4", "p2", "p1", "similar", "NaN"),
        ],
        {},
        {
            "~to is never blank",
            "~id is unique",
            "no self-loop edges (~from != ~to)",
            "score:Double is a finite number on every edge",
        },
    ),
}


def _validate(spark, dataset: str, rows: list[tuple], context: dict) -> dict:
    schema = CASES[dataset][0]
    frame = spark.createDataFrame(rows, schema)
    suite = ex.SUITES[dataset](quality.QualityThresholds(), context)
    return quality_metrics.validate_frame(dataset, frame, suite)


@pytest.mark.parametrize("dataset", sorted(CASES))
def test_suite_passes_good_frame_and_names_what_bad_frame_breaks(spark, dataset):
    _, good, bad, context, expected_failures = CASES[dataset]

    good_result = _validate(spark, dataset, good, context)
    assert [c["description"] for c in good_result["expectations"] if not c["success"]] == []
    assert good_result["success"] is True

    bad_result = _validate(spark, dataset, bad, context)
    failed = {c["description"] for c in bad_result["expectations"] if not c["success"]}
    assert failed == expected_failures
    assert bad_result["success"] is False
    assert all(c["exception"] is None for c in bad_result["expectations"])


def test_suite_descriptions_are_unique_per_dataset():
    # The assertions above identify an expectation by its description.
    for dataset, suite in ex.SUITES.items():
        context = {
            quality.N_USERS: 2, quality.N_ITEMS: 3, quality.TEST_NEGATIVES: 1, quality.TOP_K: 2,
            quality.EMBEDDING_DIM: 2,
        }
        descriptions = [e.description for e in suite(quality.QualityThresholds(), context)]
        assert len(descriptions) == len(set(descriptions)), dataset


def test_gate_on_empty_frame_and_missing_column_fails_with_clear_message(spark, tmp_path):
    empty_test = spark.createDataFrame([], NCF)
    no_item_train = spark.createDataFrame([(0, 1.0), (1, 0.0)], "user_idx int, label float")
    reports = str(tmp_path / "reports")

    with pytest.raises(quality.QualityGateError) as caught:
        quality.run_gate(
            "preprocess",
            {quality.TRAIN: no_item_train, quality.TEST: empty_test},
            reports_root=reports,
            run_date=RUN_DATE,
            context={quality.N_USERS: 2, quality.N_ITEMS: 3},
        )
    assert isinstance(caught.value, JobError)  # the CLI wrapper turns it into exit code 2, one log line
    message = str(caught.value)
    assert message.startswith("preprocess: data-quality gate failed, output not published")
    lines = [line.strip() for line in message.splitlines()[1:]]
    assert lines == [
        "- train: expect_column_to_exist(column='item_idx') [column item_idx exists]: "
        "column 'item_idx' is missing",
        "- train: expect_column_values_to_not_be_null(column='item_idx') [item_idx is never blank] "
        'could not be evaluated: Error: The column "item_idx" in BatchData does not exist.',
        "- train: expect_column_values_to_be_between(column='item_idx', min_value=0.0, max_value=2.0) "
        "[0 <= item_idx < 3] could not be evaluated: "
        'Error: The column "item_idx" in BatchData does not exist.',
        "- test: expect_table_row_count_to_be_between(min_value=1) [not empty]: observed 0",
    ]

    written = json.loads((tmp_path / "reports" / "preprocess" / f"dt={RUN_DATE}.quality.json").read_text())
    assert written["success"] is False
    assert written["failed_critical"] == [line[2:] for line in lines]
    assert written["datasets"][quality.TEST]["success"] is False
    assert written["datasets"][quality.TRAIN]["success"] is False
    # The empty test frame passes everything that holds vacuously; only the row count fails.
    test_checks = written["datasets"][quality.TEST]["expectations"]
    assert [c["description"] for c in test_checks if not c["success"]] == ["not empty"]


SHARE_10 = "at most 10% of input rows rejected"


@pytest.mark.parametrize(
    ("rows_in", "rows_rejected", "max_reject_fraction", "failed_critical", "failed_warnings"),
    [
        (100, 10, 0.1, [], []),
        (100, 11, 0.1, [SHARE_10], []),
        (0, 0, 0.1, ["the stage read at least one row"], []),
        (99, 50, 0.1, [], [SHARE_10]),  # too few rows for the share to be enforced: recorded only
    ],
)
def test_gate_checks_the_reject_share(
    spark, tmp_path, rows_in, rows_rejected, max_reject_fraction, failed_critical, failed_warnings
):
    kwargs = dict(
        reports_root=str(tmp_path),
        run_date=RUN_DATE,
        thresholds=quality.QualityThresholds(max_reject_fraction=max_reject_fraction),
        context={"rows_in": rows_in, "rows_rejected": rows_rejected},
    )
    if failed_critical:
        with pytest.raises(quality.QualityGateError, match="1 critical expectation"):
            quality.run_gate("similarity", {}, **kwargs)
    else:
        assert quality.run_gate("similarity", {}, **kwargs)["success"] is True
    written = json.loads((tmp_path / "similarity" / f"dt={RUN_DATE}.quality.json").read_text())
    checks = written["datasets"][quality.FUNNEL_DATASET]["expectations"]
    assert [c["description"] for c in checks if not c["success"] and c["severity"] == "critical"] == (
        failed_critical
    )
    assert [c["description"] for c in checks if not c["success"] and c["severity"] == "warning"] == (
        failed_warnings
    )
    assert written["success"] is not bool(failed_critical)
    assert len(written["failed_warnings"]) == len(failed_warnings)
    assert written["context"] == {"rows_in": rows_in, "rows_rejected": rows_rejected}
    share_check = next(c for c in checks if c["expectation"] == "expect_column_values_to_be_between")
    assert share_check["kwargs"] == {
        "column": "reject_fraction", "min_value": 0.0, "max_value": max_reject_fraction
    }


def test_warn_mode_records_failures_without_raising_and_off_mode_skips(spark, tmp_path):
    bad_edges = spark.createDataFrame([("a", "a", 1.0, 1)], EDGES).cache()
    warned = quality.run_gate(
        "similarity",
        {quality.SIMILARITY_EDGES: bad_edges},
        reports_root=str(tmp_path),
        run_date=RUN_DATE,
        thresholds=quality.QualityThresholds(mode=quality.MODE_WARN),
    )
    assert warned["success"] is False
    assert warned["failed_critical"] == [
        "similarity_edges: unexpected_rows_expectation [no product is its own neighbour (src != dst)]: "
        "1 offending row(s)"
    ]
    skipped = quality.run_gate(
        "similarity",
        {quality.SIMILARITY_EDGES: bad_edges},
        reports_root=str(tmp_path),
        run_date=RUN_DATE,
        thresholds=quality.QualityThresholds(mode=quality.MODE_OFF),
    )
    assert (skipped["skipped"], skipped["success"], skipped["datasets"]) == (True, True, {})
    assert bad_edges.is_cached  # the gate persists frames for its own metrics, never unpersists the caller's
    bad_edges.unpersist()
    written = json.loads((tmp_path / "similarity" / f"dt={RUN_DATE}.quality.json").read_text())
    assert (written["skipped"], written["mode"]) == (True, "off")


def test_unknown_dataset_is_a_bug_not_a_pass(spark, tmp_path):
    frame = spark.createDataFrame([(1,)], "x int")
    with pytest.raises(ValueError, match=r"no expectation suite for dataset\(s\) \['trian'\]"):
        quality.run_gate("preprocess", {"trian": frame}, reports_root=str(tmp_path), run_date=RUN_DATE)
    assert not (tmp_path / "preprocess").exists()


def test_quality_flags_are_the_same_on_every_job_parser():
    parser = quality.add_quality_args(job_parser("some_job", "test"))
    args = parser.parse_args(["--max-reject-fraction", "0.25", "--quality", "warn"])
    assert quality.thresholds_from_args(args) == quality.QualityThresholds(0.25, quality.MODE_WARN, 100)
    args = parser.parse_args(["--reject-check-min-rows", "0"])
    assert quality.thresholds_from_args(args) == quality.QualityThresholds(0.1, quality.MODE_ENFORCE, 0)
    defaults = quality.thresholds_from_args(parser.parse_args([]))
    assert defaults == quality.QualityThresholds(0.1, quality.MODE_ENFORCE, 100)
    assert quality.thresholds_from_args(argparse.Namespace()) == defaults
    with pytest.raises(JobError, match="expected a number in"):
        parser.parse_args(["--max-reject-fraction", "1.5"])
    with pytest.raises(JobError, match="invalid choice"):
        parser.parse_args(["--quality", "lenient"])


def _by_description(checks: list[dict]) -> dict[str, dict]:
    # Which duplicated rows a LIMIT returns first is Spark's choice; the multiset of examples is not.
    return {
        c["description"]: {**c, "unexpected_examples": sorted(map(repr, c["unexpected_examples"]))}
        for c in checks
    }


ALL_CONTEXT = {
    quality.N_USERS: 2, quality.N_ITEMS: 3, quality.TEST_NEGATIVES: 1, quality.TOP_K: 2,
    quality.EMBEDDING_DIM: 2, quality.ROWS_IN: 50,
}


@pytest.mark.parametrize("dataset", sorted(ex.SUITES))
def test_every_spec_is_the_great_expectations_expectation_it_names(dataset):
    # The results list a spec's kwargs as they are; great-expectations would list its own (defaults left
    # out, bounds as floats): the two must be the same, in the same order.
    for spec in ex.SUITES[dataset](quality.QualityThresholds(), ALL_CONTEXT):
        config = quality_metrics.to_gx_expectation(spec).configuration
        assert (config.type, list(config.kwargs.items())) == (spec.type, list(spec.kwargs.items()))
        assert (config.severity, config.description) == (spec.severity, spec.description)


# A column the bad frame of each dataset lacks (the expectations on it cannot be evaluated).
DROPPED = {
    quality.RAW_INTERACTIONS: "user_id",
    quality.TRAIN: "label",
    quality.TEST: "label",
    quality.EMBEDDINGS: "status",
    quality.SIMILARITY_EDGES: "rank",
    quality.GREMLIN_VERTICES: "~label",
    quality.GREMLIN_EDGES: "~to",
}


@pytest.mark.parametrize("variant", ["good", "bad", "missing_column"])
@pytest.mark.parametrize("dataset", sorted(CASES))
def test_gate_gives_the_results_of_great_expectations_own_spark_engine(spark, dataset, variant):
    # The oracle: great-expectations computing every metric itself, one Spark job or more per expectation,
    # on the same frame with the same expectations (counts, shares and examples differ from zero on the
    # bad frame; the missing column makes some expectations impossible to evaluate).
    schema, good, bad, context, _ = CASES[dataset]
    frame = spark.createDataFrame(good if variant == "good" else bad, schema)
    if variant == "missing_column":
        frame = frame.drop(DROPPED[dataset])
    suite = ex.SUITES[dataset](quality.QualityThresholds(), context)
    compiled = quality_metrics.validate_frame(dataset, frame, suite)["expectations"]
    native = quality_metrics.validate_with_gx_engine(dataset, frame, suite)
    assert [c["description"] for c in compiled] == [e.description for e in suite]
    assert [c["description"] for c in native] == [e.description for e in suite]
    if variant == "missing_column":
        # Spark's error for a query naming a missing column is the engine's to word; both say which.
        for check in (*compiled, *native):
            if check["expectation"] == terms.UNEXPECTED_ROWS and check["exception"]:
                assert DROPPED[dataset] in check["exception"]
                check["exception"] = "query failed"
        assert any(c["exception"] for c in native)
    assert _by_description(compiled) == _by_description(native)


def test_every_suite_expectation_is_computed_by_the_gate_not_left_to_the_slow_engine(spark):
    # An expectation the gate cannot plan still runs (through great-expectations' engine), only slower
    # and after importing great-expectations: the shipped suites must all be planned.
    context = {**ALL_CONTEXT, quality.ROWS_IN: 100}
    for dataset, (schema, *_rest) in CASES.items():
        unplanned = [
            e.description
            for e in ex.SUITES[dataset](quality.QualityThresholds(), context)
            if quality_metrics.plan_expectation(e, set(schema.names)) is None
        ]
        assert unplanned == [], dataset
    funnel = ex.SUITES[quality.FUNNEL_DATASET](quality.QualityThresholds(), context)
    assert all(quality_metrics.plan_expectation(e, {quality.REJECT_FRACTION}) for e in funnel)
    # A missing column is planned as a failure naming it (see the empty/missing test).
    not_null = ex.SUITES[quality.TRAIN](quality.QualityThresholds(), context)[4]
    assert not_null.description == "user_idx is never blank"
    assert quality_metrics.plan_expectation(not_null, {"item_idx", "label"}).missing == "user_idx"
    assert quality_metrics.plan_expectation(not_null, {"user_idx"}).missing is None
    # Types and kwargs the gate does not compile are left to great-expectations' engine.
    conditioned = ExpectationSpec(
        terms.EXPECT_VALUES_NOT_NULL, {"column": "user_idx", "row_condition": 'col("label") > 0'}
    )
    assert quality_metrics.plan_expectation(conditioned, {"user_idx", "label"}) is None
    dated = ExpectationSpec(terms.EXPECT_VALUES_BETWEEN, {"column": "user_idx", "min_value": "2024-01-01"})
    assert quality_metrics.plan_expectation(dated, {"user_idx"}) is None


def test_a_check_that_cannot_run_fails_alone_and_the_others_are_still_evaluated(spark):
    frame = spark.createDataFrame([(0, 0, 1.0), (1, None, 0.0), (1, None, 1.0)], NCF)
    suite = [
        ExpectationSpec(terms.EXPECT_VALUES_NOT_NULL, {"column": "item_idx"}, "critical", "item set"),
        ExpectationSpec(
            terms.UNEXPECTED_ROWS, {"unexpected_rows_query": "SELECT no_such_column FROM {batch}"}, "warning",
            "bad sql",
        ),
        ExpectationSpec(
            # Parses, then fails at run time (on the row with label 1).
            terms.UNEXPECTED_ROWS,
            {"unexpected_rows_query": "SELECT * FROM {batch} WHERE assert_true(label < 1) IS NULL"},
            "critical",
            "raises",
        ),
        ExpectationSpec(
            terms.EXPECT_VALUES_IN_SET, {"column": "label", "mostly": 0.5, "value_set": [0.0]}, "critical",
            "mostly zero",
        ),
    ]
    result = quality_metrics.validate_frame("train", frame, suite)
    checks = {c["description"]: c for c in result["expectations"]}
    assert list(checks) == ["item set", "bad sql", "raises", "mostly zero"]
    assert (checks["item set"]["success"], checks["item set"]["unexpected_count"]) == (False, 2)
    assert checks["item set"]["unexpected_examples"] == [None, None]
    assert checks["item set"]["exception"] is None
    assert (checks["bad sql"]["success"], checks["bad sql"]["severity"]) == (False, "warning")
    assert "no_such_column" in checks["bad sql"]["exception"]
    assert (checks["raises"]["success"], checks["raises"]["severity"]) == (False, "critical")
    assert "is not true!" in checks["raises"]["exception"]
    assert "\n" not in checks["raises"]["exception"]  # the first line, not the JVM stack trace
    # 2 of 3 labels are 1.0: a third in the set is under mostly=0.5.
    assert (checks["mostly zero"]["success"], checks["mostly zero"]["unexpected_count"]) == (False, 2)
    assert checks["mostly zero"]["unexpected_examples"] == [1.0, 1.0]
    assert result["success"] is False


def test_an_expectation_the_gate_does_not_compute_runs_on_gx_engine_in_suite_order(spark):
    frame = spark.createDataFrame([(0, 0, 1.0), (1, 2, 0.0), (1, None, 0.0)], NCF)
    suite = [
        ExpectationSpec(terms.EXPECT_VALUES_NOT_NULL, {"column": "item_idx"}, "critical", "item set"),
        # The gate does not compile a column mean: great-expectations' engine evaluates it.
        ExpectationSpec(
            "expect_column_mean_to_be_between", {"column": "user_idx", "min_value": 0.9}, "warning", "mean"
        ),
        ExpectationSpec(
            terms.EXPECT_VALUES_IN_SET,
            {"column": "row_condition_free", "value_set": [1]},
            "critical",
            "missing column",
        ),
        ExpectationSpec(
            terms.EXPECT_TABLE_ROW_COUNT_BETWEEN, {"min_value": 1, "max_value": 2}, "critical", "rows"
        ),
    ]
    unplanned = [quality_metrics.plan_expectation(e, frame.columns) is None for e in suite]
    assert unplanned == [False, True, False, False]
    checks = quality_metrics.validate_frame("train", frame, suite)["expectations"]
    assert [(c["description"], c["success"], c["severity"], c["observed_value"]) for c in checks] == [
        ("item set", False, "critical", None),
        ("mean", False, "warning", 2 / 3),
        ("missing column", False, "critical", None),
        ("rows", False, "critical", 3),
    ]
    assert checks[0]["unexpected_count"] == 1
    assert checks[2]["exception"] == 'Error: The column "row_condition_free" in BatchData does not exist.'


GATE_IN_A_FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    from jobs.common import quality
    from jobs.common.spark import get_spark

    spark = get_spark("gate-alone", master="local[1]", conf={"spark.sql.shuffle.partitions": "2"})
    schema = "src string, dst string, score double, rank int"
    good = spark.createDataFrame([("a", "b", 0.9, 1), ("b", "a", 0.8, 1), ("b", "c", 0.7, 2)], schema)
    bad = spark.createDataFrame(
        [("a", "a", 1.0, 1), ("a", "a", float("nan"), 3), ("b", None, 0.5, 1)], schema
    )
    top_k = {quality.TOP_K: 2}
    passed = quality.run_gate(
        "similarity", {quality.SIMILARITY_EDGES: good}, reports_root=sys.argv[1], run_date="2024-03-31",
        context={**top_k, quality.ROWS_IN: 200, quality.ROWS_REJECTED: 1},
    )
    warned = quality.run_gate(
        "similarity", {quality.SIMILARITY_EDGES: bad}, reports_root=sys.argv[1], run_date="2024-04-01",
        thresholds=quality.QualityThresholds(mode=quality.MODE_WARN), context=top_k,
    )
    spark.stop()
    loaded = sorted(m for m in sys.modules if m.split(".")[0] == "great_expectations")
    print(json.dumps({"passed": passed["success"], "failed": warned["failed_critical"], "loaded": loaded}))
    """
)


def test_a_job_gate_runs_without_importing_great_expectations(tmp_path):
    # A job is a cold process: importing great-expectations would cost it seconds of CPU for nothing.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYSPARK_PYTHON": sys.executable}
    done = subprocess.run(
        [sys.executable, "-c", GATE_IN_A_FRESH_PROCESS, str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["loaded"] == []
    assert outcome["passed"] is True
    assert [line.split(": ", 1)[1].split(" [")[1].split("]")[0] for line in outcome["failed"]] == [
        "dst is never blank",
        "no product is its own neighbour (src != dst)",
        "scores are finite (no NaN, no Infinity)",
        "each (src, dst) pair once",
        "1 <= rank <= 2",
    ]
    written = json.loads((tmp_path / "similarity" / "dt=2024-04-01.quality.json").read_text())
    assert written["failed_critical"] == outcome["failed"]


def test_the_funnel_frame_uses_the_session_built_on_another_thread(spark, monkeypatch):
    """A job whose session was built by start_spark's thread has no active session on its main thread:
    a failing funnel is still checked with Spark (exit 2 with examples), not a RuntimeError."""
    from pyspark.sql import SparkSession

    monkeypatch.setattr(SparkSession, "getActiveSession", classmethod(lambda cls: None))
    assert quality._active_session() is spark
    monkeypatch.setattr(SparkSession, "_instantiatedSession", None)
    with pytest.raises(RuntimeError, match="needs a SparkSession"):
        quality._active_session()
