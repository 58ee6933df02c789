"""What the pipeline tests share (fixtures live in conftest.py)."""

from __future__ import annotations

from typing import Any

from pipelines.inputs import parse_inputs


def inputs(**fields: Any):
    """Validated flux-dev inputs for a small, fast, reproducible run; ``fields`` override."""
    raw = {
        "prompt": "a red fox in the snow",
        "megapixels": "0.25",
        "num_inference_steps": 2,
        "output_format": "png",
        "seed": 1234,
    }
    raw.update(fields)
    return parse_inputs(raw)
