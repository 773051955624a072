"""Layers point down only, and no module or package imports itself back (docs/architecture.md).

Every import of every module is read with ``ast``, including imports inside functions and under
``TYPE_CHECKING``: a late import that hides a circle is still a circle. From the bottom up:

    0 schemas                     what the data is: StructTypes, column names, the quality suites
    1 jobs/common                 the ground floor every job stands on: CLI, Spark, storage, report, gate
    2 udfs, jobs/transforms       UDF kernels and their writers; pure DataFrame -> DataFrame transforms;
      jobs/render                 pure rendering of what a job gathered (HTML, SVG)
      readers                     the outputs read outside Spark (the NCF sets into PyTorch)
    3 jobs                        the jobs you run (one module each, ``main(argv=None)``)
    4 emr, glue, dags, bench      what runs the jobs: EMR steps, Glue scripts, the Airflow DAG, benchmarks

A module may import its own layer and the layers below. Beyond that: the packages of one layer import
each other one way only (``jobs/transforms`` -> ``udfs``: kernels know no transform), and a job never
imports another job (what two jobs share belongs on a floor below them).
"""
from __future__ import annotations

import ast
import pathlib
from collections.abc import Iterable, Mapping

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOP_PACKAGES = ("schemas", "jobs", "udfs", "readers", "emr", "glue", "dags", "bench")

# (package prefix, layer), most specific first; a module belongs to the first prefix it starts with.
LAYERS = (
    ("schemas", 0),
    ("jobs.common", 1),
    ("udfs", 2),
    ("jobs.transforms", 2),
    ("jobs.render", 2),
    ("readers", 2),
    ("jobs", 3),
    ("emr", 4),
    ("glue", 4),
    ("dags", 4),
    ("bench", 4),
)
LAYER_NAMES = {
    0: "schemas",
    1: "jobs/common",
    2: "udfs + jobs/transforms + jobs/render + readers",
    3: "jobs",
    4: "emr/glue/dags/bench",
}
JOBS_LAYER = 3


def package_of(module: str) -> str:
    """The layer package a module belongs to (``jobs.common``, ``udfs``, ``jobs``...)."""
    for prefix, _ in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    raise KeyError(f"{module} is in no layer: add its package to LAYERS (and to docs/architecture.md)")


def layer_of(module: str) -> int:
    return dict(LAYERS)[package_of(module)]


def find_modules(root: pathlib.Path, packages: Iterable[str] = TOP_PACKAGES) -> dict[str, pathlib.Path]:
    """Every module under the given top-level packages: dotted name -> file."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _known(name: str, modules: Mapping[str, pathlib.Path]) -> str | None:
    """The deepest project module a dotted name lies in (None: not ours)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, path: pathlib.Path, modules: Mapping[str, pathlib.Path]) -> set[str]:
    """The project modules one module imports, anywhere in its file (functions included)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                source = ".".join(part for part in (base, node.module) if part)
            else:
                source = node.module or ""
            # ``from pkg import mod`` imports the module pkg.mod; ``from mod import name`` imports mod.
            targets = [
                f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                for alias in node.names
            ]
        else:
            continue
        found.update(target for target in map(lambda name: _known(name, modules), targets) if target)
    found.discard(module)
    return found


def import_graph(root: pathlib.Path, packages: Iterable[str] = TOP_PACKAGES) -> dict[str, set[str]]:
    modules = find_modules(root, packages)
    return {module: imports_of(module, path, modules) for module, path in modules.items()}


def upward_imports(graph: Mapping[str, set[str]]) -> list[str]:
    """Imports that point to a higher layer, or from one job to another."""
    problems = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if layer_of(target) > layer_of(module):
                problems.append(
                    f"{module} ({LAYER_NAMES[layer_of(module)]}) imports {target} "
                    f"({LAYER_NAMES[layer_of(target)]}): a layer may import only its own and those below"
                )
            elif (
                package_of(module) == package_of(target) == "jobs"
                and layer_of(module) == JOBS_LAYER
                and target != "jobs"
                and not module.startswith(target + ".")
            ):
                problems.append(f"{module} imports {target}: a job never imports another job")
    return problems


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one node (a circle), each sorted (Tarjan's)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def package_graph(graph: Mapping[str, set[str]]) -> dict[str, set[str]]:
    """The module graph folded onto layer packages (``udfs`` -> ``jobs.common`` ...)."""
    folded: dict[str, set[str]] = {}
    for module, targets in graph.items():
        source = package_of(module)
        folded.setdefault(source, set()).update(
            package_of(target) for target in targets if package_of(target) != source
        )
    return folded


def problems_in(graph: Mapping[str, set[str]]) -> list[str]:
    return [
        *upward_imports(graph),
        *(f"import circle between modules: {' <-> '.join(group)}" for group in cycles(graph)),
        *(f"import circle between packages: {' <-> '.join(group)}" for group in cycles(package_graph(graph))),
    ]


# --------------------------------------------------------------------------------------------- the tests
def test_the_project_layers_point_down_without_circles() -> None:
    problems = problems_in(import_graph(ROOT))
    assert problems == [], "\n".join(problems)


def test_the_graph_sees_imports_inside_functions_and_from_package_imports() -> None:
    graph = import_graph(ROOT)
    # A few edges the rules rest on, of each kind the parser must read.
    assert "schemas.expectations" in graph["jobs.common.quality"]  # from schemas import expectations
    assert "schemas.quality_terms" in graph["schemas.expectations"]  # from schemas.quality_terms import (...)
    assert "jobs.neptune_load" in graph["dags.stylegraph_nightly"]  # imported inside a task function
    assert "udfs.similarity.tasks" in graph["jobs.transforms.similarity"]
    assert {package_of(module) for module in graph} == {prefix for prefix, _ in LAYERS}


def _tree(root: pathlib.Path, files: Mapping[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_rules_catch_upward_imports_job_to_job_imports_and_circles(tmp_path: pathlib.Path) -> None:
    _tree(
        tmp_path,
        {
            "schemas/__init__.py": "",
            "schemas/terms.py": "def suite():\n    from jobs.common import gate  # late, hiding a circle\n",
            "jobs/__init__.py": "",
            "jobs/common/__init__.py": "",
            "jobs/common/gate.py": "from schemas import terms\n",
            "jobs/transforms/__init__.py": "from ..transforms import rows\n",
            "jobs/transforms/rows.py": "from udfs.kernel import KERNEL\n",
            "udfs/__init__.py": "",
            "udfs/kernel.py": "import jobs.transforms.rows\nKERNEL = 1\n",
            "jobs/export.py": "from jobs.validate import files\nfrom . import pipeline\n",
            "jobs/validate.py": "from jobs.common import gate\n",
            "jobs/pipeline.py": "",
            "emr/__init__.py": "from jobs import export\n",
        },
    )
    graph = import_graph(tmp_path, ("schemas", "jobs", "udfs", "emr"))

    assert graph["jobs.transforms"] == {"jobs.transforms.rows"}  # a relative import, resolved
    assert problems_in(graph) == [
        "jobs.export imports jobs.pipeline: a job never imports another job",
        "jobs.export imports jobs.validate: a job never imports another job",
        "schemas.terms (schemas) imports jobs.common.gate (jobs/common): "
        "a layer may import only its own and those below",
        "import circle between modules: jobs.common.gate <-> schemas.terms",
        "import circle between modules: jobs.transforms.rows <-> udfs.kernel",
        "import circle between packages: jobs.common <-> schemas",
        "import circle between packages: jobs.transforms <-> udfs",
    ]
