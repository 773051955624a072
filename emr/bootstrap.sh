#!/bin/bash
# EMR bootstrap action: runs on every node before YARN starts. Argument 1: the S3 URI of the
# stylegraph wheel (built by `make dist`). Installs Python 3.11 and the wheel with its pinned
# dependencies (requirements/base.txt, recorded in the wheel's metadata), so executors import the same
# stack as the tests. On GPU nodes it also mounts the cgroup-v1 devices hierarchy that YARN's GPU
# isolation needs on Amazon Linux 2023 (EMR 7.x).
set -euo pipefail

WHEEL_URI="${1:?usage: bootstrap.sh s3://bucket/prefix/stylegraph-<version>-py3-none-any.whl}"
PYTHON=python3.11
WORK="$(mktemp -d)"

sudo dnf install -y -q "${PYTHON}" "${PYTHON}-pip" "${PYTHON}-devel" gcc
aws s3 cp --only-show-errors "${WHEEL_URI}" "${WORK}/"
sudo "${PYTHON}" -m pip install --quiet --upgrade pip
sudo "${PYTHON}" -m pip install --quiet "${WORK}"/stylegraph-*.whl

if command -v nvidia-smi >/dev/null 2>&1; then
  sudo mkdir -p /spark-rapids-cgroup/devices
  sudo mount -t cgroup -o devices cgroupv1-devices /spark-rapids-cgroup/devices || true
  sudo chmod a+rwx -R /spark-rapids-cgroup
fi

"${PYTHON}" -c "import jobs, torch, pyarrow; print('stylegraph bootstrap ok, torch', torch.__version__)"
