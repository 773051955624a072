"""``make bench``'s collector: each benchmark in its own process, rows or output kept, one table."""
from __future__ import annotations

import textwrap
from pathlib import Path

from bench import run_all


def write_benchmarks(bench_dir: Path) -> None:
    bench_dir.mkdir()
    (bench_dir / "alpha.py").write_text(textwrap.dedent('''
        def run(quick):
            size = 10 if quick else 1000
            return [{"impl": "peer", "n": size, "seconds": 2.0},
                    {"impl": "ours | fast", "n": size, "seconds": 0.5, "ratio": 4.0}]
    '''))
    (bench_dir / "beta.py").write_text(textwrap.dedent('''
        import sys
        if __name__ == "__main__":
            print("beta table", "quick" if "--quick" in sys.argv else "full")
    '''))
    (bench_dir / "gamma.py").write_text("def run(quick):\n    raise RuntimeError('no GPU here')\n")
    (bench_dir / "run_all.py").write_text("raise SystemExit('the collector is not a benchmark')\n")


def test_each_benchmark_runs_apart_and_the_page_has_every_result(tmp_path: Path) -> None:
    bench_dir = tmp_path / "bench"
    write_benchmarks(bench_dir)
    assert run_all.discover(bench_dir) == ["alpha", "beta", "gamma"]
    results = [run_all.run_one(name, True, bench_dir=bench_dir) for name in run_all.discover(bench_dir)]
    assert [(r["name"], r["ok"], r["rows"]) for r in results] == [
        ("alpha", True, [{"impl": "peer", "n": 10, "seconds": 2.0},
                         {"impl": "ours | fast", "n": 10, "seconds": 0.5, "ratio": 4.0}]),
        ("beta", True, None),
        ("gamma", False, None),
    ]
    assert results[1]["output_tail"] == "beta table quick"
    assert results[2]["output_tail"].endswith("RuntimeError: no GPU here")

    machines = {name: f"machine of {name}" for name in ("alpha", "beta", "gamma")}
    def earlier(name: str, rows: list[dict]) -> dict:
        return {"name": name, "ok": True, "returncode": 0, "seconds": 1.0, "rows": rows, "output_tail": ""}

    previous = run_all.render(
        [earlier("alpha", [{"old": 1}]), earlier("delta", [{"kept": 1}])],
        {"alpha": "old machine", "delta": "delta machine"},
    )
    page = run_all.render(results, machines, previous)
    # every section of this run replaces its old one; a benchmark not run keeps its section
    assert [line for line in page.splitlines() if line.startswith("## ")] == [
        "## alpha", "## beta", "## delta", "## gamma (FAILED, exit 1)",
    ]
    assert "old machine" not in page and "| old |" not in page
    assert "delta machine; 1.0 s in all.\n\n| kept |\n|---|\n| 1 |" in page
    alpha = page.split("## alpha\n\nmachine of alpha; ")[1].split("\n\n")[1].splitlines()
    assert alpha == [
        "| impl | n | seconds | ratio |",
        "|---|---|---|---|",
        "| peer | 10 | 2 |  |",
        "| ours \\| fast | 10 | 0.5 | 4 |",
    ]
    assert "## beta\n\nmachine of beta; " in page and "```\nbeta table quick\n```" in page
    assert "RuntimeError: no GPU here" in page.split("## gamma")[1]
