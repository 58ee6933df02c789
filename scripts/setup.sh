#!/usr/bin/env bash
# Set up fluxserve in ./.venv. Usage: scripts/setup.sh [--dev]
#   --dev   also the test tools (pytest, ruff, schemathesis, playwright, the replicate client, moto)
#           and the clients of the optional services (psycopg, boto3, redis: the `cluster` extra)
# PyTorch: a CUDA build where an NVIDIA driver is present, else the CPU build. Set
# FLUXSERVE_TORCH to choose yourself (e.g. FLUXSERVE_TORCH="torch==2.7.1").
set -euo pipefail
cd "$(dirname "$0")/.."
dev=""
[ "${1:-}" = "--dev" ] && dev=1

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
pip install --upgrade pip >/dev/null

CPU_TORCH="torch==2.13.0"
CPU_INDEX=https://download.pytorch.org/whl/cpu
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if [ -n "${FLUXSERVE_TORCH:-}" ]; then
    echo "Installing $FLUXSERVE_TORCH (FLUXSERVE_TORCH)..."
    pip install "$FLUXSERVE_TORCH"
  elif command -v nvidia-smi >/dev/null 2>&1; then
    echo "Installing PyTorch with CUDA (an NVIDIA driver is present)..."
    pip install "torch>=2.5"
  else
    # CPU-only machine: PyTorch's CPU index (PyPI's default Linux wheel is a multi-GB CUDA build).
    # Where that index cannot be reached (a machine with a local mirror only), the configured
    # index is the fallback: the first attempt's errors go to a file, not to the screen, since
    # the fallback recovers from them.
    echo "Installing $CPU_TORCH, CPU build, from $CPU_INDEX..."
    if ! pip install "$CPU_TORCH" --index-url "$CPU_INDEX" --timeout 10 --retries 0 \
      >.venv/torch-cpu-index.log 2>&1; then
      echo "  $CPU_INDEX could not be used (details: .venv/torch-cpu-index.log);" \
        "installing $CPU_TORCH from the configured package index instead..."
      pip install "$CPU_TORCH"
    fi
  fi
fi
echo "Installing fluxserve${dev:+ and the development tools}..."

if [ -n "$dev" ]; then
  pip install -e ".[dev]"
else
  pip install -e .
fi
echo "fluxserve is set up in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__, "cuda" if torch.cuda.is_available() else "cpu")'))"
