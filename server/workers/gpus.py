"""Which GPUs the worker processes can be pinned to, found without importing torch."""

from __future__ import annotations

import os
import subprocess


def visible_gpus() -> list[str]:
    """The GPUs a worker can be pinned to, as CUDA_VISIBLE_DEVICES entries, found without
    importing torch in the API process: the parent's own CUDA_VISIBLE_DEVICES entries when set
    (so "2,3" pins workers to physical GPUs 2 and 3), else nvidia-smi's indices."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [p.strip() for p in env.split(",") if p.strip() and p.strip() != "-1"]
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        return [line.strip() for line in out.split() if line.strip().isdigit()]
    except (OSError, subprocess.SubprocessError, ValueError):
        return []
