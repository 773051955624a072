"""The EMR bootstrap action: shellcheck-clean, installs a node's own wheelhouse from S3 only (``pip
--no-index``), and fails a GPU node whose torch sees no GPU (here: a fake ``nvidia-smi`` on PATH and this
machine's torch, which has no GPU to see). AWS, sudo and pip are stand-ins on PATH that record what they
were asked; the Python check at the end is the real one, run with the real torch."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
BOOTSTRAP = ROOT / "emr" / "bootstrap.sh"
SHELLCHECK = Path(sys.executable).parent / "shellcheck"
WHEELHOUSE = "s3://shop-artifacts/stylegraph/wheelhouse/0123456789ab"
WHEEL = "s3://shop-artifacts/stylegraph/artifacts/abc/stylegraph-0.1.0-py3-none-any.whl"


def write_script(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    path.chmod(0o755)


@pytest.fixture
def node(tmp_path: Path) -> dict[str, Path]:
    """A fake node: S3 as a folder, stand-in aws/sudo, a python whose pip only records its arguments."""
    s3 = tmp_path / "s3"
    for kind in ("cpu", "gpu"):
        folder = s3 / "shop-artifacts" / "stylegraph" / "wheelhouse" / "0123456789ab" / kind
        folder.mkdir(parents=True)
        (folder / "requirements.txt").write_text(f"torch==2.14.1{'+cpu' if kind == 'cpu' else ''}\n")
        (folder / f"torch-2.14.1-{kind}.whl").write_bytes(b"wheel")
    wheel_dir = s3 / "shop-artifacts" / "stylegraph" / "artifacts" / "abc"
    wheel_dir.mkdir(parents=True)
    (wheel_dir / "stylegraph-0.1.0-py3-none-any.whl").write_bytes(b"wheel")
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    write_script(bin_dir / "aws", f"""#!/bin/bash
# aws s3 cp [--only-show-errors] [--recursive] s3://SRC DST, served from {s3}
echo "aws $*" >> {log}
args=(); for a in "$@"; do [[ $a == --* || $a == s3 || $a == cp ]] || args+=("$a"); done
src="{s3}/${{args[0]#s3://}}"; mkdir -p "${{args[1]}}"
if [[ " $* " == *" --recursive "* ]]; then cp -r "$src/." "${{args[1]}}"; else cp "$src" "${{args[1]}}"; fi
""")
    python = bin_dir / "python3.11"
    write_script(python, f"""#!/bin/bash
if [[ "$1 $2" == "-m pip" ]]; then
  echo "pip $*" >> {log}
  for a in "$@"; do [[ $a == */requirements.txt ]] && sed 's/^/requirement /' "$a" >> {log}; done
  exit 0
fi
PYTHONPATH={ROOT} exec {sys.executable} "$@"
""")
    write_script(bin_dir / "sudo", f"""#!/bin/bash
echo "sudo $*" >> {log}
[[ "$1" == {python} ]] && exec "$@"
exit 0
""")
    return {"bin": bin_dir, "log": log, "python": python, "tmp": tmp_path}


def run_bootstrap(node: dict[str, Path], *, gpu: bool) -> subprocess.CompletedProcess[str]:
    if gpu:
        write_script(node["bin"] / "nvidia-smi", "#!/bin/bash\necho 'NVIDIA-SMI 580.00'\n")
    env = {
        "PATH": f"{node['bin']}:/usr/bin:/bin",
        "HOME": str(node["tmp"]),
        "STYLEGRAPH_PYTHON": str(node["python"]),
        "STYLEGRAPH_SCRATCH": str(node["tmp"]),
    }
    return subprocess.run(
        ["bash", str(BOOTSTRAP), WHEELHOUSE, WHEEL],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )


def test_bootstrap_is_shellcheck_clean() -> None:
    completed = subprocess.run([str(SHELLCHECK), str(BOOTSTRAP)], capture_output=True, text=True, check=False)
    assert completed.returncode == 0, completed.stdout


def test_a_cpu_node_installs_its_own_wheelhouse_from_s3_only(node: dict[str, Path]) -> None:
    completed = run_bootstrap(node, gpu=False)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines()[-1] == (
        f"stylegraph bootstrap ok: cpu node, torch {torch.__version__} on CPU"
    )
    calls = node["log"].read_text().splitlines()
    assert [line.split()[:4] for line in calls if line.startswith("aws")] == [
        ["aws", "s3", "cp", "--only-show-errors"]
    ] * 2
    assert f"{WHEELHOUSE}/cpu/" in calls[0] and WHEEL in calls[1]
    pips = [line for line in calls if line.startswith("pip")]
    assert len(pips) == 2 and all("--no-index" in line for line in pips)
    assert "--find-links" in pips[0] and pips[0].endswith("/wheels/requirements.txt")
    assert "--no-deps" in pips[1] and pips[1].endswith("/stylegraph-0.1.0-py3-none-any.whl")
    assert [line for line in calls if line.startswith("requirement")] == ["requirement torch==2.14.1+cpu"]
    assert not any("mount" in line for line in calls)  # no GPU cgroups on a CPU node
    assert sorted(p.name for p in node["tmp"].iterdir()) == ["bin", "calls.log", "s3"]  # scratch removed


def test_a_gpu_node_whose_torch_sees_no_gpu_fails_its_bootstrap(node: dict[str, Path]) -> None:
    assert not torch.cuda.is_available()
    completed = run_bootstrap(node, gpu=True)
    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines()[-1] == (
        f"stylegraph bootstrap: GPU node, but torch {torch.__version__} (CUDA {torch.version.cuda}) sees no "
        "GPU: check the NVIDIA driver against that CUDA version; failing the node instead of running on CPU"
    )
    calls = node["log"].read_text().splitlines()
    assert f"{WHEELHOUSE}/gpu/" in calls[0]
    assert [line for line in calls if line.startswith("requirement")] == ["requirement torch==2.14.1"]
    assert not any("mount" in line for line in calls)
