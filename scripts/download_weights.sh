#!/usr/bin/env bash
# Download FLUX.1-dev into the Hugging Face cache (or a folder) on a machine with internet.
# FLUX.1-dev is gated: accept the licence at https://huggingface.co/black-forest-labs/FLUX.1-dev
# with your account, then `.venv/bin/hf auth login` (or set HF_TOKEN).
# Usage: scripts/download_weights.sh [TARGET_DIR]
#   no TARGET_DIR: into the HF cache (~/.cache/huggingface); `weights: auto` then finds it.
#   TARGET_DIR:    a plain diffusers folder; point model.weights at it.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:-}
# Only the diffusers layout is needed: skip the 23 GB single-file checkpoint duplicate.
args=(black-forest-labs/FLUX.1-dev --exclude "flux1-dev.safetensors" --exclude "*.gguf")
if [ -n "$target" ]; then
  args+=(--local-dir "$target")
fi
if [ -x .venv/bin/hf ]; then .venv/bin/hf download "${args[@]}"; else .venv/bin/huggingface-cli download "${args[@]}"; fi
