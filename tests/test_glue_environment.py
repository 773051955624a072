"""Every Glue stage imports, and the validate stage runs, in an environment holding only what the Glue job
definition ships: the standard library, what Glue 5.0 provides (``GLUE_PROVIDED_MODULES``), the pinned
``--additional-python-modules`` with their dependencies, and the project's zip. Anything else (torch,
threadpoolctl, petastorm...) is missing there, as it is on a Glue worker.

The environment is a ``sitecustomize`` on ``PYTHONPATH`` that installs an import blocker before anything
else is imported, in the driver and in every Spark Python worker the job starts."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

from glue import jobs as glue_jobs

ROOT = Path(__file__).resolve().parent.parent
PROJECT_PACKAGES = ("jobs", "udfs", "schemas", "emr", "glue")
RUN_DATE = "2024-03-31"

SITECUSTOMIZE = textwrap.dedent(
    '''
    """Glue's module set: a top-level module outside STYLEGRAPH_ALLOWED_MODULES cannot be imported."""
    import os
    import sys

    _ALLOWED = frozenset(os.environ["STYLEGRAPH_ALLOWED_MODULES"].split(","))


    class _GlueModulesOnly:
        def find_spec(self, name, path=None, target=None):
            top = name.partition(".")[0]
            if top in _ALLOWED or top in sys.stdlib_module_names or top.startswith("_"):
                return None
            raise ModuleNotFoundError(f"No module named {name!r} (not shipped to Glue)", name=name)


    sys.meta_path.insert(0, _GlueModulesOnly())
    '''
)


def _requirement_name(requirement: str) -> str | None:
    """The distribution a ``Requires-Dist`` line names, or None when it only applies to an extra."""
    name, _, marker = requirement.partition(";")
    if "extra ==" in marker:
        return None
    return re.split(r"[\s\[<>=!~(]", name.strip(), maxsplit=1)[0]


def _top_level_modules(dist: metadata.Distribution) -> set[str]:
    names = set()
    top_level = dist.read_text("top_level.txt")
    if top_level:
        names |= {line.strip() for line in top_level.splitlines() if line.strip()}
    for file in dist.files or []:
        first = file.parts[0]
        if first.endswith((".dist-info", ".data")) or first == "..":
            continue
        names.add(first.removesuffix(".py").split(".")[0])
    return {name for name in names if name.isidentifier()}


def glue_modules() -> set[str]:
    """Top-level modules of Glue's provided modules and the additional modules, with their dependencies
    (as installed here, from their metadata), plus the project's packages."""
    wanted = [*glue_jobs.GLUE_PROVIDED_MODULES]
    wanted += [_requirement_name(spec) for spec in glue_jobs.ADDITIONAL_PYTHON_MODULES]
    seen: set[str] = set()
    modules = set(PROJECT_PACKAGES)
    while wanted:
        name = wanted.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # a dependency of another platform (markers are not evaluated here)
        modules |= _top_level_modules(dist)
        wanted += [dep for dep in map(_requirement_name, dist.requires or []) if dep]
    return modules


@pytest.fixture(scope="module")
def glue_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    site = tmp_path_factory.mktemp("glue-site")
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("PYSPARK_GATEWAY", "SPARK_"))
    }
    env.update(
        PYTHONPATH=f"{site}{os.pathsep}{ROOT}",
        STYLEGRAPH_ALLOWED_MODULES=",".join(sorted(glue_modules())),
        PYSPARK_PYTHON=sys.executable,
        PYSPARK_DRIVER_PYTHON=sys.executable,
        SPARK_LOCAL_IP="127.0.0.1",
    )
    return env


def run_python(code: str, env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=300, check=False,
    )


def test_what_the_glue_job_ships_has_no_torch(glue_env: dict[str, str]) -> None:
    allowed = set(glue_env["STYLEGRAPH_ALLOWED_MODULES"].split(","))
    assert {"pyspark", "py4j", "boto3", "pyarrow", "numpy", "pandas", "great_expectations", "PIL"} <= allowed
    assert not allowed & {"torch", "torchvision", "threadpoolctl", "petastorm"}
    blocked = run_python("import torch", glue_env)
    assert blocked.returncode == 1
    assert "No module named 'torch' (not shipped to Glue)" in blocked.stderr


@pytest.mark.parametrize("stage", [stage.name for stage in glue_jobs.GLUE_STAGES])
def test_every_glue_stage_imports_with_only_what_glue_ships(glue_env: dict[str, str], stage: str) -> None:
    module = glue_jobs.glue_stage(stage).module
    code = f"import glue.entry, {module}; import sys; print(sorted(m for m in sys.modules if '.' not in m))"
    completed = run_python(code, glue_env)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "torch" not in completed.stdout


def test_the_similarity_stage_would_not_import_there(glue_env: dict[str, str]) -> None:
    """Why similarity runs on EMR: its tasks need what Glue does not ship (what Glue would have said)."""
    completed = run_python("import jobs.similarity", glue_env)
    assert completed.returncode == 1
    assert "(not shipped to Glue)" in completed.stderr.splitlines()[-1]
    assert "similarity" in glue_jobs.NOT_ON_GLUE and "similarity" not in glue_jobs.WORKERS


def test_the_validate_stage_runs_its_glue_script_with_only_what_glue_ships(
    glue_env: dict[str, str], tmp_path: Path
) -> None:
    """The driver and Spark's Python workers both run under the blocker: a lazy import of something Glue
    does not ship anywhere on the stage's path fails the run. The project comes from its zip, as on Glue
    (``--extra-py-files``), and the home folder is new: the compiled scan must cache itself outside the
    zip (numba's user-wide cache) on a machine that never ran it."""
    from emr import dist

    (tmp_path / "dist").mkdir()
    project_zip = dist.build_zip(tmp_path / "dist")
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **glue_env,
        "PYTHONPATH": glue_env["PYTHONPATH"].replace(str(ROOT), str(project_zip)),
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / ".cache"),  # numba's user-wide cache folder
    }
    export, reports = tmp_path / "export", tmp_path / "reports"
    (export / "vertices").mkdir(parents=True)
    (export / "edges").mkdir(parents=True)
    (export / "vertices" / "part-0.csv").write_text(
        "~id,~label,name:String\na,product,Runner\nb,product,\"Boot, \"\"Original\"\"\"\n", encoding="utf-8"
    )
    (export / "edges" / "part-0.csv").write_text(
        "~id,~from,~to,~label,score:Double\na-b,a,b,similar,0.93\nb-a,b,a,similar,0.93\n", encoding="utf-8"
    )
    argv = [
        str(ROOT / "glue" / "scripts" / "validate_gremlin_csv.py"), "--JOB_NAME", "stylegraph-validate",
        "--vertices", str(export / "vertices"), "--edges", str(export / "edges"),
        "--run-date", RUN_DATE, "--report-dir", str(reports),
    ]
    code = f"import runpy, sys; sys.argv = {argv!r}; runpy.run_path(sys.argv[0], run_name='__main__')"
    completed = run_python(code, env, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads((reports / "validate" / f"dt={RUN_DATE}.json").read_text())
    assert (report["ok"], report["funnel"]["rows_in"]) == (True, 4)
    assert list((home / ".cache").rglob("*.nbi"))  # numba cached the scan in the home folder
    where = run_python("import udfs.plain_records as p; print(p.__file__)", env, cwd=tmp_path)
    assert where.stdout.startswith(str(project_zip))  # the stage ran from the zip
