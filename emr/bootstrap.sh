#!/bin/bash
# EMR bootstrap action: runs on every node before YARN starts. Nodes live in a private subnet without
# internet egress, so everything comes from S3 (through the VPC's S3 gateway endpoint):
#   $1  the wheelhouse folder (s3://.../wheelhouse/<digest>, built by `make dist`), holding cpu/ and gpu/,
#       each a requirements.txt and its wheels (CPU nodes: torch's CPU build; GPU nodes: its CUDA build);
#   $2  the stylegraph wheel (s3://.../stylegraph-<version>-py3-none-any.whl).
# A node with nvidia-smi is a GPU node. Installs the node kind's pinned stack with `pip --no-index` into
# Python 3.11 (Amazon Linux 2023's package, whose repositories are served from S3 too), then the project
# without dependencies (EMR provides Spark). A GPU node whose torch cannot see its GPU fails the bootstrap,
# so the cluster never starts with GPU executors that would compute on CPU. On GPU nodes it then mounts
# the cgroup-v1 devices hierarchy YARN's GPU isolation needs on Amazon Linux 2023 (EMR 7.x).
set -euo pipefail

WHEELHOUSE_URI="${1:?usage: bootstrap.sh s3://bucket/prefix/wheelhouse/<digest> s3://bucket/prefix/stylegraph.whl}"
WHEEL_URI="${2:?usage: bootstrap.sh s3://bucket/prefix/wheelhouse/<digest> s3://bucket/prefix/stylegraph.whl}"
PYTHON="${STYLEGRAPH_PYTHON:-/usr/bin/python3.11}"
CGROUP_ROOT=/spark-rapids-cgroup

if command -v nvidia-smi >/dev/null 2>&1; then
  KIND=gpu
else
  KIND=cpu
fi
# /mnt is the node's data volume: the GPU wheelhouse (GBs) does not fill the root volume.
SCRATCH="${STYLEGRAPH_SCRATCH:-/mnt}"
[[ -d "${SCRATCH}" && -w "${SCRATCH}" ]] || SCRATCH="${TMPDIR:-/tmp}"
WORK="$(mktemp -d -p "${SCRATCH}" stylegraph-bootstrap.XXXXXX)"
trap 'rm -rf "${WORK}"' EXIT
echo "stylegraph bootstrap: ${KIND} node, wheelhouse ${WHEELHOUSE_URI%/}/${KIND}/"

if [[ ! -x "${PYTHON}" ]]; then
  sudo dnf install -y -q python3.11 python3.11-pip
fi
aws s3 cp --only-show-errors --recursive "${WHEELHOUSE_URI%/}/${KIND}/" "${WORK}/wheels/"
aws s3 cp --only-show-errors "${WHEEL_URI}" "${WORK}/"
sudo "${PYTHON}" -m pip install --quiet --no-index --find-links "${WORK}/wheels" \
  -r "${WORK}/wheels/requirements.txt"
sudo "${PYTHON}" -m pip install --quiet --no-index --no-deps "${WORK}"/stylegraph-*.whl

"${PYTHON}" - "${KIND}" <<'PY'
import sys

import jobs  # noqa: F401  (the project is importable)
import pyarrow  # noqa: F401
import torch

kind = sys.argv[1]
if kind == "gpu" and not torch.cuda.is_available():
    sys.exit(
        f"stylegraph bootstrap: GPU node, but torch {torch.__version__} (CUDA {torch.version.cuda}) sees no "
        "GPU: check the NVIDIA driver against that CUDA version; failing the node instead of running on CPU"
    )
where = torch.cuda.get_device_name(0) if kind == "gpu" else "CPU"
print(f"stylegraph bootstrap ok: {kind} node, torch {torch.__version__} on {where}")
PY

if [[ "${KIND}" == gpu ]]; then
  sudo mkdir -p "${CGROUP_ROOT}/devices"
  sudo mount -t cgroup -o devices cgroupv1-devices "${CGROUP_ROOT}/devices" || true
  sudo chmod a+rwx -R "${CGROUP_ROOT}"
fi
