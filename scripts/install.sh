#!/usr/bin/env bash
# Installs everything the project needs into the current Python environment.
# On a machine without an NVIDIA GPU it first installs a CPU build of torch, so pip does not pull a multi-GB
# CUDA build; with a GPU, requirements.txt's plain torch requirement takes the CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! $PY -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    $PY -m pip install -q torch
  else
    $PY -m pip install -q torch==2.13.0 2>/dev/null \
      || $PY -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi
$PY -m pip install -q -r requirements.txt
$PY -m pip install -q --no-deps -r requirements-offline.txt
$PY - <<'PY'
import torch, transformers
print(f"installed: torch {torch.__version__}, transformers {transformers.__version__}, "
      f"cuda available: {torch.cuda.is_available()}")
PY
