"""The one argument convention: parsing, clear errors and exit codes."""
from __future__ import annotations

import datetime as dt
import logging

import pytest

from jobs.common import cli


def test_run_date_accepts_only_exact_iso_dates() -> None:
    assert cli.run_date("2024-02-29") == dt.date(2024, 2, 29)
    for bad in ["2024-2-29", "2023-02-29", "20240229", "2024-02-29T00:00", " 2024-02-29", ""]:
        with pytest.raises(Exception, match="YYYY-MM-DD"):
            cli.run_date(bad)


@pytest.mark.parametrize(
    ("convert", "good", "expected", "bad"),
    [
        (cli.positive_int, "3", 3, ["0", "-1", "x", "1.5"]),
        (cli.non_negative_int, "0", 0, ["-1", "x"]),
        (cli.fraction, "0.25", 0.25, ["1.5", "-0.1", "nan?"]),
    ],
)
def test_numeric_types(convert, good, expected, bad) -> None:
    assert convert(good) == expected
    for value in bad:
        with pytest.raises(Exception, match="expected"):
            convert(value)


def test_job_parser_shared_options_and_reports_root() -> None:
    parser = cli.job_parser("demo", "demo job", run_date_required=True)
    parser.add_argument("--output", required=True)
    args = parser.parse_args(["--output", "s3://bucket/out/", "--run-date", "2024-03-31"])
    assert args.run_date == dt.date(2024, 3, 31)
    assert cli.reports_root(args) == "s3://bucket/out/_reports"
    args = parser.parse_args(["--output", "o", "--run-date", "2024-03-31", "--report-dir", "/r"])
    assert cli.reports_root(args) == "/r"


def test_parser_errors_are_job_errors_naming_the_argument() -> None:
    parser = cli.job_parser("demo", "demo job", run_date_required=True)
    with pytest.raises(cli.JobError, match="--run-date"):
        parser.parse_args([])
    with pytest.raises(cli.JobError, match="2024-13-01"):
        parser.parse_args(["--run-date", "2024-13-01"])


def test_run_maps_outcomes_to_exit_codes(caplog: pytest.LogCaptureFixture) -> None:
    def ok(argv):
        return {"fine": True}

    def expected_failure(argv):
        raise cli.JobError("input folder s3://b/x does not exist")

    def bug(argv):
        raise ZeroDivisionError("oops")

    assert cli.run(ok, []) == cli.EXIT_OK
    with caplog.at_level(logging.ERROR):
        assert cli.run(expected_failure, []) == cli.EXIT_JOB_ERROR
    assert "s3://b/x does not exist" in caplog.text
    assert cli.run(bug, []) == cli.EXIT_BUG
