"""``make dist``'s artifacts run a real job through the real ``spark-submit`` (the one pyspark ships)
from an empty directory holding nothing but those artifacts."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from emr.dist import build, download_command, job_modules

ROOT = Path(__file__).resolve().parent.parent
SPARK_SUBMIT = Path(sys.executable).parent / "spark-submit"
RUN_DATE = "2024-03-31"

# Five products in 3-d: a, b, c close together, d on the other side, e the same as d, plus a hostile sku
# (comma, quote, unicode) and a failed image (status "error", dropped on purpose by the similarity job).
EMBEDDINGS = {
    "a": [1.0, 0.0, 0.0],
    "b": [0.9, 0.1, 0.0],
    'c,"ç"': [0.8, 0.3, 0.1],
    "d": [-1.0, 0.2, 0.0],
    "e": [-2.0, 0.4, 0.0],
}


def write_embeddings(path: Path) -> None:
    skus = [*EMBEDDINGS, "broken"]
    table = pa.table(
        {
            "sku": pa.array(skus, pa.string()),
            "image_path": pa.array([f"{sku}.jpg" for sku in skus], pa.string()),
            "embedding": pa.array([*EMBEDDINGS.values(), None], pa.list_(pa.float32())),
            "status": pa.array(["ok"] * len(EMBEDDINGS) + ["error"], pa.string()),
            "error": pa.array([None] * len(EMBEDDINGS) + ["decode_error: truncated"], pa.string()),
            "model": pa.array(["resnet152"] * len(skus), pa.string()),
            "weights_sha256": pa.array(["0" * 64] * len(skus), pa.string()),
        }
    )
    path.mkdir(parents=True)
    pq.write_table(table, path / "part-00000.parquet")


def expected_top2() -> list[tuple[str, str, int]]:
    """(src, dst, rank) of the two most cosine-similar products of each product, by numpy."""
    skus = list(EMBEDDINGS)
    vectors = np.array(list(EMBEDDINGS.values()), dtype=np.float64)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = unit @ unit.T
    rows = []
    for i, src in enumerate(skus):
        others = sorted((j for j in range(len(skus)) if j != i), key=lambda j: -scores[i, j])
        rows += [(src, skus[j], rank) for rank, j in enumerate(others[:2], start=1)]
    return sorted(rows)


def test_build_writes_every_artifact(tmp_path: Path) -> None:
    manifest = build(tmp_path / "dist")
    dist = tmp_path / "dist"
    jobs = job_modules()
    assert {"preprocess_interactions", "embed_images", "similarity", "export_gremlin"} <= set(jobs)
    assert "pipeline" not in jobs
    expected = {
        "stylegraph.zip", "stylegraph-0.1.0-py3-none-any.whl", "requirements.txt", "emr/bootstrap.sh",
        *(f"entry/{job}.py" for job in jobs),
        "glue/export_gremlin.py", "glue/preprocess_interactions.py", "glue/validate_gremlin_csv.py",
        "wheelhouse/cpu/requirements.txt", "wheelhouse/gpu/requirements.txt",
    }
    assert set(manifest["artifacts"]) == expected
    assert json.loads((dist / "manifest.json").read_text()) == manifest
    with zipfile.ZipFile(dist / "stylegraph.zip") as archive:
        names = set(archive.namelist())
    tracked = {
        path.relative_to(ROOT).as_posix()
        for package in ("jobs", "udfs", "schemas", "readers", "emr", "glue")
        for path in (ROOT / package).rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert tracked <= names
    assert not any(name.startswith(("tests/", "dags/", "bench/")) for name in names)
    with zipfile.ZipFile(dist / "stylegraph-0.1.0-py3-none-any.whl") as wheel:
        metadata = next(n for n in wheel.namelist() if n.endswith("METADATA"))
        lines = wheel.read(metadata).decode().splitlines()
    requires = [line for line in lines if line.startswith("Requires-Dist")]
    assert {"Requires-Dist: pyspark==3.5.8", "Requires-Dist: torch==2.14.1"} <= set(requires)
    assert (dist / "requirements.txt").read_text() == (ROOT / "requirements" / "base.txt").read_text()
    # Two builds of the same code give the same zip, byte for byte (its S3 folder is named by its hash).
    assert build(tmp_path / "again", wheel=False)["artifacts"]["stylegraph.zip"] == (
        manifest["artifacts"]["stylegraph.zip"]
    )


def test_each_emr_node_kind_gets_its_own_requirements_without_pyspark(tmp_path: Path) -> None:
    manifest = build(tmp_path / "dist", wheel=False)
    base = [
        line for line in (ROOT / "requirements" / "base.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    gpu = (tmp_path / "dist" / "wheelhouse" / "gpu" / "requirements.txt").read_text().splitlines()
    cpu = (tmp_path / "dist" / "wheelhouse" / "cpu" / "requirements.txt").read_text().splitlines()
    # EMR provides Spark; GPU nodes take PyPI's CUDA build of torch, CPU nodes its CPU build.
    assert gpu == [line for line in base if not line.startswith("pyspark")]
    assert cpu == [f"{line}+cpu" if line.startswith(("torch==", "torchvision==")) else line for line in gpu]
    assert "torch==2.14.1+cpu" in cpu and "torchvision==0.29.2+cpu" in cpu
    cpu_download = download_command("cpu", tmp_path)
    assert cpu_download[cpu_download.index("--extra-index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    assert "--extra-index-url" not in download_command("gpu", tmp_path)
    assert "--only-binary=:all:" in cpu_download and "manylinux_2_28_x86_64" in cpu_download
    # The wheelhouse is named by its requirements: the same pins, the same S3 folder.
    again = build(tmp_path / "again", wheel=False)
    assert again["wheelhouse"] == manifest["wheelhouse"] and len(manifest["wheelhouse"]) == 12


def test_spark_submit_runs_a_job_from_an_empty_directory_with_only_the_artifacts(tmp_path: Path) -> None:
    build(tmp_path / "dist", wheel=False)
    here = tmp_path / "empty"
    here.mkdir()
    shutil.copy(tmp_path / "dist" / "stylegraph.zip", here)
    shutil.copytree(tmp_path / "dist" / "entry", here / "entry")
    data = tmp_path / "data"
    write_embeddings(data / "embeddings")
    env = {
        key: value for key, value in os.environ.items()
        if not key.startswith(("PYSPARK_GATEWAY", "SPARK_", "PYTHONPATH"))
    }
    env.update(PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    env.update(SPARK_LOCAL_IP="127.0.0.1")
    completed = subprocess.run(
        [
            str(SPARK_SUBMIT), "--master", "local[2]", "--conf", "spark.ui.enabled=false",
            "--conf", "spark.sql.shuffle.partitions=2", "--py-files", "stylegraph.zip",
            "entry/similarity.py",
            "--input", str(data / "embeddings"), "--output", str(data / "style"),
            "--top-k", "2", "--run-date", RUN_DATE, "--report-dir", str(data / "reports"),
        ],
        cwd=here, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-4000:]
    # The project came from the zip, not from the checkout the venv has installed in editable mode.
    # spark-submit's PythonRunner sends the driver's stderr (where the job logs) to its stdout.
    lines = (completed.stdout + completed.stderr).splitlines()
    loaded = [line.split(": ", 1)[1] for line in lines if " stylegraph.entry: " in line]
    assert loaded == [f"jobs.similarity loaded from {here}/stylegraph.zip/jobs/__init__.py"]
    assert sorted(p.name for p in here.iterdir()) == ["entry", "stylegraph.zip"]

    edges = pq.read_table(data / "style" / "similarity" / f"dt={RUN_DATE}").to_pylist()
    assert sorted((row["src"], row["dst"], row["rank"]) for row in edges) == expected_top2()
    report = json.loads((data / "reports" / "similarity" / f"dt={RUN_DATE}.json").read_text())
    assert report["funnel"]["rows_in"] == 6
    assert report["funnel"]["dropped_by_reason"] == {"embedding_status_error": 1}
