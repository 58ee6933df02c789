"""Fixtures for the LoRA tests: tiny LoRA files for the tiny model, and a model of their own (adapters
change the transformer's modules, so the session's shared tiny model is left alone); small valid
safetensors files (written without torch) for the cache and resolver tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.server.helpers import safetensors_bytes


@pytest.fixture(scope="session")
def lora_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("loras")


@pytest.fixture(scope="session")
def tiny_loras(tiny_model_dir: Path, lora_dir: Path) -> dict[str, Path]:
    """One adapter (seed 0) in each layout, another (seed 1), and seed 0 again with text-encoder weights."""
    from pipelines.tiny_lora import write_tiny_lora

    files = {
        layout: write_tiny_lora(tiny_model_dir, lora_dir / f"a-{layout}.safetensors", layout=layout)
        for layout in ("diffusers", "kohya", "xlabs")
    }
    files["other"] = write_tiny_lora(tiny_model_dir, lora_dir / "b.safetensors", seed=1)
    for layout in ("diffusers", "kohya"):
        files[f"te-{layout}"] = write_tiny_lora(
            tiny_model_dir, lora_dir / f"a-te-{layout}.safetensors", layout=layout, text_encoder=True
        )
    return files


@pytest.fixture(scope="module")
def lora_model(tiny_model_dir: Path):
    from pipelines.loading import load_model
    from pipelines.spec import ModelSpec

    return load_model(ModelSpec(weights=str(tiny_model_dir)))


@pytest.fixture(scope="module")
def lora_generator(lora_model):
    from pipelines.generate import FluxGenerator
    from pipelines.loras.adapters import LoraOptions

    return FluxGenerator(lora_model, LoraOptions(max_loaded=3))


@pytest.fixture
def adapter_bytes() -> bytes:
    return safetensors_bytes()
