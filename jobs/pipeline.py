"""The ONE pipeline definition: which stages run, in what order, with which arguments.

``STAGES`` is data: each :class:`Stage` names its job module, the engine it needs (CPU or GPU) and its
arguments as ``(option, template)`` pairs. :func:`plan` renders them for one run
(:class:`PipelineParams`: input root, work root, run date, ...) into the exact ``argv`` each job's
``main`` receives. Every way of running the suite is built from that one plan:

- ``make run`` / ``python -m jobs.pipeline``: :func:`run_local` calls each job's ``main(argv)`` in this
  process, one SparkSession for all of them;
- EMR: ``emr/steps.py`` puts the same argv after ``spark-submit ... dist/entry/<job>.py``;
- Glue: ``glue/jobs.py`` turns the same argv into job-run arguments (``--option value``);
- Airflow: ``dags/stylegraph_nightly.py`` builds its tasks from :func:`plan` with
  ``run_date=AIRFLOW_RUN_DATE`` (the start of the run's data interval: the day that ended).

Production plans (EMR, Glue, the DAG) run GPU stages with ``--device cuda`` and refuse to embed without
real weights; only the local run falls back to ``random:<seed>`` weights and ``--device auto``.

This module must import without pyspark (the Airflow environment imports it): no pyspark, pyarrow or
job-module import at module level. Job modules are imported only when the local runner runs them.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from jobs.common import cli, paths
from jobs.common.cli import JobError

LOG = logging.getLogger("stylegraph.pipeline")

# Where a stage can run. GPU stages go to EMR (Glue has no GPU workers); DRIVER stages are small
# control-plane calls (the Neptune loader, the HTML report) that need no cluster.
CPU = "cpu"
GPU = "gpu"
DRIVER = "driver"

# Where a stage is part of the plan: the local run (`make run`) and/or the production runs (EMR CLI,
# Glue CLI, the nightly DAG).
LOCAL = "local"
PRODUCTION = "production"

# The DAG passes Airflow's template for the run date; it is rendered by Airflow, not by Python. The DAG's
# timetable (CronDataIntervalTimetable) gives the run that fires at D+1 03:00 the interval starting D 03:00:
# its start's date is the day that ended. Unlike ``{{ ds }}`` (the logical date), it is also right for a
# run whose logical date is the moment it was triggered. ``run_day`` is the DAG's filter: that date, or a
# failure for a run without a data interval (rather than ``dt=None``).
AIRFLOW_RUN_DATE = "{{ data_interval_start | run_day }}"
RANDOM_WEIGHTS_PREFIX = "random:"
DEVICE_CUDA = "cuda"
DEVICE_AUTO = "auto"

DEFAULT_SEED = 7
DEFAULT_TOP_K = 10
DEFAULT_METRIC = "cosine"
DEFAULT_MODEL = "resnet152"
DEFAULT_BATCH_SIZE = 16
# Days of logs before the run date that the NCF sets are built from (a week with the run date).
DEFAULT_LOOKBACK_DAYS = 6


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline.

    Attributes:
        name: the stage name used in reports, task ids and CLI ``--stages`` (``preprocess``, ...).
        module: the job module whose ``main(argv)`` runs it (``jobs.preprocess_interactions``).
        engine: ``cpu``, ``gpu`` or ``driver``.
        args: ``(option, template)`` pairs; templates use the fields of :func:`template_values`.
        targets: where the stage is part of the plan (``local``, ``production``).
        writes_report: the job writes ``<reports>/<name>/dt=<run date>.json``.
        uses_spark: the job runs Spark (the local runner starts the run's session only for these).
    """

    name: str
    module: str
    engine: str
    args: tuple[tuple[str, str], ...]
    targets: frozenset[str] = frozenset({LOCAL, PRODUCTION})
    writes_report: bool = True
    uses_spark: bool = True

    @property
    def job_name(self) -> str:
        """The job module's short name (``preprocess_interactions``), used for entry scripts."""
        return self.module.rsplit(".", 1)[-1]


# Every stage also receives these (the shared CLI convention of jobs.common.cli).
COMMON_ARGS: tuple[tuple[str, str], ...] = (("--run-date", "{run_date}"), ("--report-dir", "{reports}"))

STAGES: tuple[Stage, ...] = (
    Stage(
        name="preprocess",
        module="jobs.preprocess_interactions",
        engine=CPU,
        args=(
            ("--input", "{input}/interactions"),
            ("--output", "{work}/ncf"),
            ("--lookback-days", "{lookback_days}"),
            ("--seed", "{seed}"),
        ),
    ),
    Stage(
        name="embed",
        module="jobs.embed_images",
        engine=GPU,
        args=(
            ("--catalog", "{catalog}"),
            ("--images-root", "{input}/images"),
            ("--output", "{work}/style"),
            ("--model", "{model}"),
            ("--weights", "{weights}"),
            ("--batch-size", "{batch_size}"),
            ("--device", "{device}"),
        ),
    ),
    Stage(
        name="similarity",
        module="jobs.similarity",
        engine=CPU,
        args=(
            ("--input", "{embeddings}"),
            ("--output", "{work}/style"),
            ("--top-k", "{top_k}"),
            ("--metric", "{metric}"),
        ),
    ),
    Stage(
        name="export",
        module="jobs.export_gremlin",
        engine=CPU,
        args=(
            ("--catalog", "{catalog}"),
            ("--edges", "{similarity}"),
            ("--embeddings", "{embeddings}"),
            ("--output", "{export}"),
            ("--compression", "gzip"),
            ("--metric", "{metric}"),
        ),
    ),
    Stage(
        name="validate",
        module="jobs.validate_gremlin_csv",
        engine=CPU,
        args=(("--vertices", "{export}/vertices"), ("--edges", "{export}/edges")),
        uses_spark=False,
    ),
    Stage(
        name="report",
        module="jobs.run_report",
        engine=DRIVER,
        args=(
            ("--workdir", "{work}"),
            ("--reports", "{reports}"),
            ("--interactions", "{input}/interactions"),
            ("--output", "{work}/report"),
        ),
        targets=frozenset({LOCAL}),
        writes_report=False,
    ),
    Stage(
        name="neptune_load",
        module="jobs.neptune_load",
        engine=DRIVER,
        args=(
            ("--source", "{export}/"),
            ("--endpoint", "{neptune_endpoint}"),
            ("--iam-role-arn", "{neptune_iam_role_arn}"),
            ("--region", "{region}"),
        ),
        targets=frozenset({PRODUCTION}),
        writes_report=False,
        uses_spark=False,
    ),
)

STAGE_NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)
STAGES_BY_NAME: dict[str, Stage] = {stage.name: stage for stage in STAGES}


@dataclass(frozen=True)
class PipelineParams:
    """What one run of the pipeline needs to know. Roots are URIs (local path, file://, s3://).

    ``input_root`` has the sample's layout (``interactions/dt=*/``, ``catalog/catalog.csv``, ``images/``);
    ``work_root`` receives every output; reports go to ``reports_root`` (default ``<work>/_reports``).
    ``run_date`` is ``YYYY-MM-DD`` or, for the DAG, :data:`AIRFLOW_RUN_DATE`. ``weights`` None means
    ``random:<seed>`` (local runs only); ``device`` None means ``cuda`` in production, ``auto`` locally.
    """

    input_root: str
    work_root: str
    run_date: str
    reports_root: str | None = None
    seed: int = DEFAULT_SEED
    top_k: int = DEFAULT_TOP_K
    metric: str = DEFAULT_METRIC
    model: str = DEFAULT_MODEL
    weights: str | None = None
    device: str | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    lookback_days: int = DEFAULT_LOOKBACK_DAYS
    neptune_endpoint: str = ""
    neptune_iam_role_arn: str = ""
    region: str = ""

    def __post_init__(self) -> None:
        if self.run_date != AIRFLOW_RUN_DATE:
            try:
                cli.run_date(str(self.run_date))
            except argparse.ArgumentTypeError as err:
                raise JobError(f"pipeline: {err}") from None
        for name in ("input_root", "work_root"):
            if not str(getattr(self, name)).strip():
                raise JobError(f"pipeline: {name} must not be empty")

    def replace(self, **changes: Any) -> PipelineParams:
        return dataclasses.replace(self, **changes)


def template_values(params: PipelineParams, target: str = LOCAL) -> dict[str, str]:
    """The names stage templates may use, derived from the run's parameters and the plan's target."""
    input_root = str(params.input_root).rstrip("/")
    work = str(params.work_root).rstrip("/")
    day = str(params.run_date)
    export = paths.partition_uri(work, "style/gremlin", day)
    return {
        "input": input_root,
        "work": work,
        "run_date": str(params.run_date),
        "reports": str(params.reports_root or f"{work}/_reports").rstrip("/"),
        "catalog": f"{input_root}/catalog/catalog.csv",
        "embeddings": paths.partition_uri(work, "style/embeddings", day),
        "similarity": paths.partition_uri(work, "style/similarity", day),
        "export": export,
        "model": params.model,
        "weights": params.weights or f"{RANDOM_WEIGHTS_PREFIX}{params.seed}",
        "device": params.device or (DEVICE_CUDA if target == PRODUCTION else DEVICE_AUTO),
        "batch_size": str(params.batch_size),
        "top_k": str(params.top_k),
        "metric": params.metric,
        "seed": str(params.seed),
        "lookback_days": str(params.lookback_days),
        "neptune_endpoint": params.neptune_endpoint,
        "neptune_iam_role_arn": params.neptune_iam_role_arn,
        "region": params.region,
    }


@dataclass(frozen=True)
class StageCall:
    """One stage rendered for one run: the job module and the exact argv its ``main`` receives."""

    stage: Stage
    argv: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.stage.name

    def option_pairs(self) -> list[tuple[str, str]]:
        """The argv as ``(option, value)`` pairs (every stage option takes exactly one value)."""
        return list(zip(self.argv[::2], self.argv[1::2], strict=True))


def parse_stages(value: str | Iterable[str] | None, target: str) -> tuple[Stage, ...]:
    """The stages to run, in pipeline order: all of ``target``'s, or the named ones.

    Raises:
        JobError: an unknown stage name, or one that is not part of ``target``.
    """
    if value is None or value == "" or value == "all":
        return tuple(stage for stage in STAGES if target in stage.targets)
    names = [part.strip() for part in (value.split(",") if isinstance(value, str) else value)]
    names = [name for name in names if name]
    unknown = [name for name in names if name not in STAGES_BY_NAME]
    if unknown:
        raise JobError(
            f"unknown stage(s) {', '.join(map(repr, unknown))}: choose from {', '.join(STAGE_NAMES)}"
        )
    wrong_target = [name for name in names if target not in STAGES_BY_NAME[name].targets]
    if wrong_target:
        raise JobError(f"stage(s) {', '.join(map(repr, wrong_target))} do not run in a {target} run")
    wanted = set(names)
    return tuple(stage for stage in STAGES if stage.name in wanted)


def stage_argv(stage: Stage, params: PipelineParams, target: str = LOCAL) -> tuple[str, ...]:
    """The argv a stage's ``main`` receives for this run."""
    values = template_values(params, target)
    argv: list[str] = []
    for option, template in (*stage.args, *COMMON_ARGS):
        argv += [option, template.format(**values)]
    return tuple(argv)


def plan(
    params: PipelineParams,
    *,
    target: str = PRODUCTION,
    stages: str | Iterable[str] | None = None,
) -> list[StageCall]:
    """Every stage of ``target`` (or the named ones), in order, with its argv for this run.

    Raises:
        JobError: a production plan that embeds without real weights (none, or ``random:*``).
    """
    chosen = parse_stages(stages, target)
    if target == PRODUCTION and any("{weights}" in template for s in chosen for _, template in s.args):
        check_production_weights(params.weights)
    return [StageCall(stage, stage_argv(stage, params, target)) for stage in chosen]


def check_production_weights(weights: str | None) -> None:
    """Refuse what a production embedding must never use: no weights, or seeded random ones."""
    if not weights or not str(weights).strip():
        raise JobError(
            "production runs need real embedding weights: pass --weights imagenet or a state_dict path "
            "or s3:// URI (random weights are for the local sample run only)"
        )
    if str(weights).strip().startswith(RANDOM_WEIGHTS_PREFIX):
        raise JobError(
            f"production runs refuse --weights {weights}: random weights make a meaningless similarity "
            "graph (pass imagenet or a state_dict path or s3:// URI)"
        )


# ----------------------------------------------------------------------------------------------
# The local runner (`make run`)
# ----------------------------------------------------------------------------------------------

@dataclass
class StageResult:
    """What the local runner saw of one stage."""

    name: str
    seconds: float
    report: dict[str, Any] | None
    outputs: dict[str, str] = field(default_factory=dict)


def _read_report(reports_root: str, stage: str, run_day: str) -> dict[str, Any] | None:
    path = paths.report_uri(reports_root, stage, run_day)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def progress_line(name: str, report: dict[str, Any] | None, seconds: float) -> str:
    """``stage: rows in, rows out, rejected, seconds`` as read from the stage's report JSON."""
    funnel = (report or {}).get("funnel") or {}
    if not funnel:
        return f"{name:<11} done in {seconds:6.1f} s (no funnel in its report)"
    rejected = funnel.get("rows_rejected", sum((funnel.get("rejected_by_reason") or {}).values()))
    dropped = funnel.get("rows_dropped", sum((funnel.get("dropped_by_reason") or {}).values()))
    job_seconds = report.get("seconds", seconds) if report else seconds
    return (
        f"{name:<11} in={funnel.get('rows_in', 0):>8} out={funnel.get('rows_out', 0):>8} "
        f"rejected={rejected:>6} dropped={dropped:>6} seconds={float(job_seconds):6.1f}"
    )


def _ensure_sample(sample: str, seed: int, end_date: str) -> None:
    """Generate the sample dataset unless it is already there (its manifest is written last)."""
    if os.path.exists(os.path.join(sample, "sample_manifest.json")):
        LOG.info("sample      present at %s (delete it to regenerate)", sample)
        return
    started = time.time()
    generate = importlib.import_module("jobs.generate_sample")
    generate.main(["--output", sample, "--seed", str(seed), "--end-date", end_date])
    LOG.info("sample      generated at %s in %.1f s", sample, time.time() - started)


def _load_main(module: str) -> Callable[[Sequence[str] | None], Any]:
    try:
        return importlib.import_module(module).main
    except ModuleNotFoundError as err:
        if err.name == module:
            raise JobError(f"job module {module} is not installed") from err
        raise


def run_local(
    params: PipelineParams,
    *,
    sample: str | None = None,
    stages: str | Iterable[str] | None = None,
) -> list[StageResult]:
    """Run the local plan stage after stage in this process (one SparkSession for every job).

    Args:
        params: the run; ``input_root`` is the sample root.
        sample: generate the sample here first when it is missing (``None``: don't).
        stages: a subset of stage names (default: every local stage).

    Returns:
        One :class:`StageResult` per stage, in order.

    Raises:
        JobError: a stage failed with a clear error (the message names the stage); a stage's own
            exceptions (bugs) propagate.
    """
    calls = plan(params, target=LOCAL, stages=stages)  # refuses unknown stages before any work
    # Spark's Python workers must run this interpreter (the venv's), not whatever python3 is on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if sample is not None:
        _ensure_sample(sample, params.seed, str(params.run_date))
    # The one session every Spark stage runs in, sized for the rows its JVM reads, the logs' and the
    # catalog's (a sample-sized run's JVM compiles with C1 only: jobs.common.spark.SMALL_INPUT_BYTES; the
    # images only Python workers read). It starts while the jobs import.
    values = template_values(params)
    starting = None
    if any(call.stage.uses_spark for call in calls):
        starting = importlib.import_module("jobs.common.spark").start_spark(
            "stylegraph-pipeline", inputs=[f"{values['input']}/interactions", values["catalog"]]
        )
    reports = values["reports"]
    results: list[StageResult] = []
    mains = [_load_main(call.stage.module) for call in calls]
    if starting is not None:
        starting.result()
    for call, main in zip(calls, mains, strict=True):
        LOG.info("%-11s running %s %s", call.name, call.stage.module, " ".join(call.argv))
        started = time.time()
        try:
            returned = main(list(call.argv))
        except JobError as err:
            raise JobError(f"stage {call.name} failed: {err}") from err
        seconds = time.time() - started
        report = _read_report(reports, call.name, str(params.run_date)) if call.stage.writes_report else None
        if report is None and isinstance(returned, dict):
            report = returned
        LOG.info("%s", progress_line(call.name, report, seconds))
        results.append(StageResult(call.name, seconds, report, outputs=stage_outputs(call.name, params)))
    return results


def stage_outputs(name: str, params: PipelineParams) -> dict[str, str]:
    """Where a stage's outputs land for this run (what the runner prints at the end)."""
    values = template_values(params)
    ncf = paths.join(values["work"], "ncf")
    outputs = {
        "preprocess": {
            "train": paths.partition_uri(ncf, "train", params.run_date),
            "test": paths.partition_uri(ncf, "test", params.run_date),
            "index": paths.join(ncf, "index"),
            "rejects": paths.partition_uri(ncf, "rejects", params.run_date),
        },
        "embed": {"embeddings": values["embeddings"]},
        "similarity": {"similarity": values["similarity"]},
        "export": {
            "vertices": f"{values['export']}/vertices",
            "edges": f"{values['export']}/edges",
            "manifest": f"{values['export']}/manifest.json",
        },
        "validate": {},
        "report": {"html report": f"{values['work']}/report/index.html"},
    }.get(name, {})
    if STAGES_BY_NAME[name].writes_report:
        outputs["run report"] = paths.report_uri(values["reports"], name, params.run_date)
    return outputs


def _summary(results: Sequence[StageResult], total_seconds: float) -> str:
    lines = [f"pipeline done in {total_seconds:.1f} s; outputs:"]
    for result in results:
        for label, where in result.outputs.items():
            lines.append(f"  {result.name:<11} {label:<11} {where}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = cli.job_parser(
        "pipeline",
        "Run the whole pipeline on local Spark: sample (generated if missing), preprocess, embed, "
        "similarity, export, validate, report.",
        run_date_required=True,
    )
    parser.add_argument("--workdir", required=True, help="work root: every output goes below it")
    parser.add_argument("--sample", required=True, help="sample root (generated here if missing)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="sample and random-weights seed")
    parser.add_argument("--stages", default=None, help=f"comma-separated subset of {','.join(STAGE_NAMES)}")
    parser.add_argument("--top-k", type=int, default=DEFAULT_TOP_K)
    parser.add_argument("--metric", default=DEFAULT_METRIC)
    parser.add_argument("--weights", default=None, help="embedding weights (default random:<seed>)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument(
        "--lookback-days", type=cli.non_negative_int, default=DEFAULT_LOOKBACK_DAYS,
        help="days of logs before the run date the NCF sets use",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``python -m jobs.pipeline --workdir W --sample S --run-date D --seed 7`` (what ``make run`` calls)."""
    args = build_parser().parse_args(argv)
    cli.configure_logging(args.log_level)
    params = PipelineParams(
        input_root=os.path.abspath(args.sample),
        work_root=os.path.abspath(args.workdir),
        run_date=args.run_date.isoformat(),
        reports_root=os.path.abspath(args.report_dir) if args.report_dir else None,
        seed=args.seed,
        top_k=args.top_k,
        metric=args.metric,
        weights=args.weights,
        batch_size=args.batch_size,
        lookback_days=args.lookback_days,
    )
    weights = template_values(params)["weights"]
    is_random_weights = weights.startswith(RANDOM_WEIGHTS_PREFIX)
    started = time.time()
    results = run_local(params, sample=params.input_root, stages=args.stages)
    LOG.info("%s", _summary(results, time.time() - started))
    if is_random_weights:
        LOG.warning(
            "embeddings use random weights (%s): the similarity graph shows the pipeline works, not "
            "which products look alike; production runs refuse random weights", weights
        )
    return {
        "run_date": params.run_date,
        "weights": weights,
        "is_random_weights": is_random_weights,
        "stages": [
            {"name": r.name, "seconds": round(r.seconds, 3), "outputs": r.outputs}
            for r in results
        ],
    }


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
