"""A compiled model swaps adapters into its slots without recompiling (one compile, ~40 s on CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.errors import AdapterLoadError
from pipelines.inputs import parse_inputs
from pipelines.loras.adapters import LoraOptions, LoraRequest

pytestmark = pytest.mark.slow


def inputs():
    return parse_inputs(
        {"prompt": "a fox", "megapixels": "0.25", "num_inference_steps": 2, "output_format": "png", "seed": 7}
    )


def lora(path: Path, scale: float = 1.0) -> LoraRequest:
    return LoraRequest(key=f"local:{path.name}", path=path, scale=scale, display=path.stem)


def test_a_compiled_model_swaps_adapters_without_recompiling(tiny_model_dir, tiny_loras, lora_dir):
    import torch

    from pipelines.generate import FluxGenerator
    from pipelines.loading import load_model
    from pipelines.spec import ModelSpec
    from pipelines.tiny_lora import write_tiny_lora

    model = load_model(ModelSpec(weights=str(tiny_model_dir), compile=True))
    generator = FluxGenerator(model, LoraOptions(hotswap_max_rank=8))
    assert generator.adapters.hotswap

    def image(loras=()):
        return generator.generate(inputs(), loras=list(loras)).images[0].data

    base = image()  # the one compile
    rank8 = write_tiny_lora(tiny_model_dir, lora_dir / "hot-rank8.safetensors", seed=5, rank=8)
    rank16 = write_tiny_lora(tiny_model_dir, lora_dir / "hot-rank16.safetensors", seed=6, rank=16)
    previous = torch._dynamo.config.error_on_recompile
    torch._dynamo.config.error_on_recompile = True
    try:
        a = image([lora(tiny_loras["diffusers"])])
        assert image([lora(tiny_loras["kohya"])]) == a
        b = image([lora(rank8)])
        both = image([lora(tiny_loras["diffusers"], 0.5), lora(rank8)])
        assert image([lora(rank8), lora(tiny_loras["diffusers"], 0.5)]) == both
        assert len({base, a, b, both}) == 4
        assert image() == base
        with pytest.raises(AdapterLoadError, match="rank 16.*hotswap_max_rank of 8"):
            image([lora(rank16)])
        assert image() == base
        assert image([lora(tiny_loras["diffusers"])]) == a
    finally:
        torch._dynamo.config.error_on_recompile = previous
