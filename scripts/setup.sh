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

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if [ -n "${FLUXSERVE_TORCH:-}" ]; then
    pip install "$FLUXSERVE_TORCH"
  elif command -v nvidia-smi >/dev/null 2>&1; then
    pip install "torch>=2.5"
  else
    # CPU-only machine: PyTorch's CPU index (PyPI's default Linux wheel is a multi-GB CUDA build);
    # the plain install is the fallback for machines that serve wheels from a local mirror only.
    pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu --timeout 10 --retries 0 \
      || pip install "torch==2.13.0"
  fi
fi

if [ -n "$dev" ]; then
  pip install -e ".[dev]"
else
  pip install -e .
fi
echo "fluxserve is set up in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__, "cuda" if torch.cuda.is_available() else "cpu")'))"
