#!/usr/bin/env bash
# Creates the project's virtual environment and installs raycl into it (used by `make`).
# A machine that already has torch (a GPU image, a cluster node) keeps it: the venv then sees the
# system's packages. Otherwise torch is pinned to 2.13.0, which a CPU machine of ours serves from
# a local CPU wheel; never let pip pick a torch on its own there, it pulls GBs of CUDA packages.
set -euo pipefail
VENV=${1:-.venv}
# dev holds the test tools and what the notebook tests run; `make notebooks` adds JupyterLab.
EXTRAS=${RAYCL_EXTRAS:-dev,optuna}
PYTHON=${PYTHON:-python3}

if "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    echo "bootstrap: using the torch already installed on this machine"
    "$PYTHON" -m venv --system-site-packages "$VENV"
else
    "$PYTHON" -m venv "$VENV"
    # RAYCL_TORCH_INDEX may name a CPU-only package index for laptops without a local wheel.
    "$VENV/bin/pip" install --quiet "${RAYCL_TORCH_SPEC:-torch==2.13.0}" \
        ${RAYCL_TORCH_INDEX:+--index-url "$RAYCL_TORCH_INDEX"}
fi
"$VENV/bin/pip" install --quiet -e ".[${EXTRAS}]"
echo "bootstrap: installed raycl into $VENV"
