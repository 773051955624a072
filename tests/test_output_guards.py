"""An ``--output`` a job must not replace is refused with exit 2 and one line, before anything is written:
a file, another job's folder, an input (equal, containing or inside), for every job."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobs import (
    embed_images,
    export_gremlin,
    generate_sample,
    preprocess_interactions,
    run_report,
    similarity,
)
from jobs.common import cli, outputs, storage
from jobs.common.cli import JobError

DAY = "2024-03-31"


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its content hash: what "nothing was written" compares."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*")) if path.is_file()
    }


def _touch(path: Path, text: str = "x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A work root as the pipeline leaves it (written before owner markers existed: none), a sample
    root and a stray file."""
    for rel in (
        f"ncf/train/dt={DAY}/part-00000.parquet", f"ncf/test/dt={DAY}/part-00000.parquet",
        "ncf/index/users/part-00000.parquet", f"ncf/rejects/dt={DAY}/part-00000.parquet",
        f"style/embeddings/dt={DAY}/part-00000.parquet", f"style/similarity/dt={DAY}/part-00000.parquet",
        f"style/rejects/embed/dt={DAY}/part-00000.parquet", f"style/gremlin/dt={DAY}/vertices/v.csv.gz",
        f"sample/interactions/dt={DAY}/part-00000.jsonl", "sample/catalog/catalog.csv",
        "sample/images/a/1.jpg", "sample/sample_manifest.json", "_reports/embed/dt=2024-03-31.json",
        "notes.txt",
    ):
        _touch(tmp_path / rel)
    return tmp_path


def _argv(work: Path, job: str, output: str) -> list[str]:
    w = str(work)
    return {
        "preprocess": ["--input", f"{w}/sample/interactions", "--output", output, "--run-date", DAY],
        "embed": ["--catalog", f"{w}/sample/catalog/catalog.csv", "--images-root", f"{w}/sample/images",
                  "--output", output, "--run-date", DAY, "--model", "resnet18"],
        "similarity": ["--input", f"{w}/style/embeddings/dt={DAY}", "--output", output, "--run-date", DAY,
                       "--top-k", "5"],
        "export": ["--catalog", f"{w}/sample/catalog/catalog.csv",
                   "--edges", f"{w}/style/similarity/dt={DAY}",
                   "--embeddings", f"{w}/style/embeddings/dt={DAY}", "--output", output, "--run-date", DAY],
        "report": ["--output", output, "--workdir", w, "--run-date", DAY],
        "sample": ["--output", output, "--run-date", DAY],
    }[job]


MAINS = {
    "preprocess": preprocess_interactions.main,
    "embed": embed_images.main,
    "similarity": similarity.main,
    "export": export_gremlin.main,
    "report": run_report.main,
    "sample": generate_sample.main,
}

# (job, --output relative to the work root, what the refusal says)
REFUSED = [
    *[(job, "notes.txt", "is a file") for job in MAINS],
    ("export", "style", "overlaps the input --edges"),  # the folder embed and similarity write
    ("export", f"style/similarity/dt={DAY}", "overlaps the input --edges"),  # the --edges folder itself
    ("export", "ncf", "did not create"),
    ("export", "", "overlaps the input --catalog"),
    ("report", "ncf", "overlaps the input"),  # replaced 94 files with one index.html
    ("report", "sample", "did not create"),
    ("preprocess", "style", "holds another job's data"),
    ("preprocess", "sample", "holds another job's data"),
    ("embed", "ncf", "holds another job's data"),
    ("embed", "sample", "holds another job's data"),
    ("similarity", "sample", "holds another job's data"),
    ("similarity", f"style/embeddings/dt={DAY}", "overlaps the input"),  # --output = --input
    ("sample", "ncf", "holds another job's data"),
    ("sample", "style", "holds another job's data"),
    ("preprocess", "sample/interactions", "overlaps the input"),  # the logs it reads
]


@pytest.mark.parametrize(("job", "output", "says"), REFUSED, ids=[f"{j}-{o or 'W'}" for j, o, _ in REFUSED])
def test_an_output_the_job_does_not_own_is_refused_before_anything_is_written(
    work: Path, job: str, output: str, says: str
) -> None:
    if job == "similarity" and "embeddings" not in output:
        outputs.mark_root("embed", str(work / "style"))  # the marker embed's first run leaves
    before = _snapshot(work)
    with pytest.raises(JobError, match=says) as refused:
        MAINS[job](_argv(work, job, str(work / output)))
    assert "\n" not in str(refused.value)
    assert _snapshot(work) == before


def test_an_output_inside_another_roots_dataset_is_refused(work: Path) -> None:
    for stage, root in (("preprocess", "ncf"), ("embed", "style")):
        outputs.mark_root(stage, str(work / root))
    before = _snapshot(work)
    for job, output in (("export", "style/embeddings/dt=2024-01-01/x"), ("similarity", "ncf/index"),
                        ("embed", "ncf/train")):
        with pytest.raises(JobError, match="lies inside"):
            MAINS[job](_argv(work, job, str(work / output)))
    assert _snapshot(work) == before


def test_a_marked_root_refuses_another_family_and_accepts_its_own(work: Path) -> None:
    outputs.mark_root("embed", str(work / "style"))
    outputs.check_output("similarity", str(work / "style"))  # same family: embed and similarity
    with pytest.raises(JobError, match="the style output root"):
        outputs.check_output("preprocess", str(work / "style"))
    with pytest.raises(JobError, match="the style output root"):
        outputs.check_output("export", str(work / "style"))


def test_export_replaces_only_a_folder_it_marked(tmp_path: Path) -> None:
    folder = tmp_path / "gremlin" / f"dt={DAY}"
    outputs.check_output("export", str(folder))  # new: fine
    folder.mkdir(parents=True)
    outputs.check_output("export", str(folder))  # empty: fine
    _touch(folder / "vertices" / "v.csv")
    with pytest.raises(JobError, match="did not create"):
        outputs.check_output("export", str(folder))
    _touch(folder / storage.OWNER_MARKER, outputs.folder_marker("export"))
    outputs.check_output("export", str(folder))  # its own, from an earlier publish
    with pytest.raises(JobError, match="the export output"):
        outputs.check_output("report", str(folder))


def test_the_default_report_dir_of_the_export_is_outside_what_it_replaces(tmp_path: Path) -> None:
    output = str(tmp_path / "style" / "gremlin" / f"dt={DAY}")
    argv = ["--catalog", "c", "--edges", "e", "--output", output, "--run-date", DAY]
    args = export_gremlin.parse_args(argv)
    assert not outputs.is_within(cli.reports_root(args), output)
    assert cli.reports_root(args) == str(tmp_path / "style" / "gremlin" / "_reports")
    with pytest.raises(JobError, match="--report-dir .* lies in"):
        outputs.check_output("export", output, report_dir=f"{output}/_reports")


def test_the_refusal_is_one_line_and_exit_2(work: Path) -> None:
    (work / "out.csv").write_text("keep me")
    result = subprocess.run(
        [sys.executable, "-m", "jobs.export_gremlin", *_argv(work, "export", str(work / "out.csv"))],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()}, timeout=120,
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "out.csv is a file" in result.stderr
    assert (work / "out.csv").read_text() == "keep me"
