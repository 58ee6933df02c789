"""Applying LoRA adapters to the tiny pipeline (CPU, float32): what each request gives, byte for byte."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from pipelines.errors import AdapterLoadError
from pipelines.loras.adapters import LoadedAdapters, LoraOptions, LoraRequest, adapter_name
from pipelines.spec import ModelSpec
from tests.pipelines.helpers import inputs


def lora(path: Path, scale: float = 1.0, key: str | None = None) -> LoraRequest:
    key = key or f"local:{path.name}"
    return LoraRequest(key=key, path=path, scale=scale, display=path.stem)


def image(generator, loras=()) -> bytes:
    return generator.generate(inputs(), loras=list(loras)).images[0].data


@pytest.fixture(scope="module")
def base_image(lora_generator) -> bytes:
    """The plain image, made before any adapter was loaded into the module's model."""
    return image(lora_generator)


@pytest.fixture(scope="module")
def lora_image(lora_generator, base_image, tiny_loras) -> bytes:
    return image(lora_generator, [lora(tiny_loras["diffusers"])])


# -- effect and identity ------------------------------------------------------------------


def test_a_lora_changes_the_image(base_image, lora_image):
    assert lora_image != base_image


def test_scale_zero_gives_the_base_image_bytes(lora_generator, base_image, tiny_loras):
    assert image(lora_generator, [lora(tiny_loras["diffusers"], scale=0.0)]) == base_image


def test_a_plain_job_after_a_lora_job_gives_the_bytes_of_before(lora_generator, base_image, lora_image):
    assert image(lora_generator) == base_image


def test_the_same_lora_twice_gives_the_same_bytes(lora_generator, lora_image, tiny_loras):
    assert image(lora_generator, [lora(tiny_loras["diffusers"])]) == lora_image


def test_two_adapters_combine_into_an_image_unlike_either(lora_generator, lora_image, tiny_loras):
    other = image(lora_generator, [lora(tiny_loras["other"])])
    both = image(lora_generator, [lora(tiny_loras["diffusers"]), lora(tiny_loras["other"])])
    assert len({lora_image, other, both}) == 3


def test_main_and_extra_order_does_not_change_the_bytes(lora_generator, tiny_loras):
    a, b = lora(tiny_loras["diffusers"], 0.7), lora(tiny_loras["other"], 1.3)
    assert image(lora_generator, [a, b]) == image(lora_generator, [b, a])


@pytest.mark.parametrize("layout", ["kohya", "xlabs"])
def test_kohya_and_xlabs_layouts_of_the_same_weights_give_identical_bytes(
    lora_generator, lora_image, tiny_loras, layout
):
    # Alpha equals the rank, so diffusers' converters rescale nothing: the bytes are exactly equal.
    assert image(lora_generator, [lora(tiny_loras[layout])]) == lora_image


def test_a_peft_file_without_the_transformer_prefix_is_applied(
    lora_generator, lora_image, tiny_loras, tmp_path
):
    from safetensors.torch import load_file, save_file

    tensors = load_file(tiny_loras["diffusers"])
    bare = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    save_file(bare, tmp_path / "bare.safetensors")
    assert image(lora_generator, [lora(tmp_path / "bare.safetensors")]) == lora_image


@pytest.mark.parametrize("layout", ["diffusers", "kohya"])
def test_text_encoder_weights_are_ignored_with_a_warning(lora_generator, lora_image, tiny_loras, layout):
    result = lora_generator.generate(inputs(), loras=[lora(tiny_loras[f"te-{layout}"])])
    assert result.images[0].data == lora_image
    assert any("text-encoder weights were ignored" in w for w in result.warnings)


def test_lora_load_time_is_recorded_only_when_a_file_is_loaded(lora_generator, tiny_loras, tmp_path):
    import shutil

    fresh = shutil.copy(tiny_loras["diffusers"], tmp_path / "fresh.safetensors")
    first = lora_generator.generate(inputs(num_inference_steps=1), loras=[lora(Path(fresh))])
    again = lora_generator.generate(inputs(num_inference_steps=1), loras=[lora(Path(fresh))])
    assert first.timings["lora_load_time"] > 0
    assert "lora_load_time" not in again.timings


# -- files that are not Flux LoRAs ------------------------------------------------------


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x00\x01 this is not a safetensors file" * 10)


def _random_tensors(path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({"weight": torch.randn(4, 4), "bias": torch.randn(4)}, path)


def _sdxl_kohya(path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    name = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    save_file(
        {
            f"{name}.lora_down.weight": torch.randn(4, 640),
            f"{name}.lora_up.weight": torch.randn(640, 4),
            f"{name}.alpha": torch.tensor(4.0),
        },
        path,
    )


def _wrong_shapes(path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    # Flux module names, FLUX.1-dev's width: a real Flux LoRA, for a bigger model than this one.
    module = "transformer.transformer_blocks.0.attn.to_q"
    save_file(
        {f"{module}.lora_A.weight": torch.randn(4, 3072), f"{module}.lora_B.weight": torch.randn(3072, 4)},
        path,
    )


def _unknown_module(path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    module = "transformer.transformer_blocks.7.attn.to_q"
    save_file(
        {f"{module}.lora_A.weight": torch.randn(4, 32), f"{module}.lora_B.weight": torch.randn(32, 4)},
        path,
    )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_garbage, "is not a Flux LoRA diffusers can read"),
        (_random_tensors, "holds no weights for the FLUX transformer"),
        (_sdxl_kohya, "is not a Flux LoRA diffusers can read: Incompatible keys"),
        (_wrong_shapes, "does not fit this model"),
        (_unknown_module, "which the FLUX transformer does not have"),
    ],
    ids=["garbage", "random-tensors", "sdxl-kohya", "wrong-shapes", "unknown-module"],
)
def test_a_file_that_is_not_a_flux_lora_fails_and_leaves_the_pipeline_clean(
    lora_generator, base_image, lora_image, tiny_loras, tmp_path, make, message
):
    bad = tmp_path / "bad.safetensors"
    make(bad)
    with pytest.raises(AdapterLoadError, match=message):
        lora_generator.generate(inputs(), loras=[lora(bad)])
    transformer = lora_generator.model.pipe.transformer
    assert adapter_name(f"local:{bad.name}") not in getattr(transformer, "peft_config", {})
    assert image(lora_generator) == base_image
    assert image(lora_generator, [lora(tiny_loras["diffusers"])]) == lora_image


def test_a_bad_extra_lora_fails_the_whole_request(lora_generator, base_image, tiny_loras, tmp_path):
    bad = tmp_path / "garbage.safetensors"
    _garbage(bad)
    with pytest.raises(AdapterLoadError):
        lora_generator.generate(inputs(), loras=[lora(tiny_loras["diffusers"]), lora(bad)])
    assert image(lora_generator) == base_image


# -- the loaded set ----------------------------------------------------------------------


def test_at_most_max_loaded_adapters_stay_loaded_least_recently_used_first_out(tiny_model_dir, lora_dir):
    from pipelines.loading import load_model
    from pipelines.tiny_lora import write_tiny_lora

    model = load_model(ModelSpec(weights=str(tiny_model_dir)))
    adapters = LoadedAdapters(model, LoraOptions(max_loaded=2))
    files = [
        write_tiny_lora(tiny_model_dir, lora_dir / f"lru-{seed}.safetensors", seed=seed)
        for seed in (10, 11, 12)
    ]
    keys = [f"local:lru-{i}" for i in range(3)]
    adapters.activate([lora(files[0], key=keys[0])])
    adapters.activate([lora(files[1], key=keys[1])])
    adapters.activate([lora(files[0], key=keys[0])])  # 0 is now the most recently used
    adapters.activate([lora(files[2], key=keys[2])])
    assert adapters.loaded_keys == [keys[0], keys[2]]
    assert set(model.pipe.transformer.peft_config) == {adapter_name(keys[0]), adapter_name(keys[2])}


def test_adapter_names_are_identifiers_without_dots():
    name = adapter_name("https://example.com/a.b/c.safetensors")
    assert name.isidentifier() and "." not in name
    assert name == adapter_name("https://example.com/a.b/c.safetensors")


def test_a_generator_without_lora_options_refuses_lora_requests(generator, tiny_loras):
    with pytest.raises(AdapterLoadError, match="not set up for LoRA"):
        generator.generate(inputs(num_inference_steps=1), loras=[lora(tiny_loras["diffusers"])])


def test_a_model_that_cannot_take_lora_refuses_before_touching_it(tiny_loras):
    model = types.SimpleNamespace(spec=ModelSpec(quantize_transformer="fp8"), compiled=False, pipe=None)
    adapters = LoadedAdapters(model)
    with pytest.raises(AdapterLoadError, match="fp8"):
        adapters.activate([lora(tiny_loras["diffusers"])])
    assert adapters.activate([]) == []


def test_lora_options_need_room_for_two_adapters():
    with pytest.raises(ValueError, match="max_loaded"):
        LoraOptions(max_loaded=1)


def test_a_model_compiled_for_go_fast_takes_adapters_in_hotswap_slots(
    tiny_model_dir, tiny_loras, monkeypatch
):
    import pipelines.loading
    from pipelines.generate import FluxGenerator
    from pipelines.loading import load_model

    compiled = []  # stands in for torch.compile, which only wraps at load and traces at the first call
    monkeypatch.setattr(pipelines.loading, "compile_transformer", compiled.append)
    model = load_model(ModelSpec(weights=str(tiny_model_dir), go_fast_compile=True))
    assert compiled == [model.pipe.transformer]
    generator = FluxGenerator(model, LoraOptions())
    assert generator.adapters.hotswap  # slots in before the first (compiled) call
    base = image(generator)
    fast = generator.generate(inputs(go_fast=True)).images[0].data
    assert fast == base  # empty slots (scale 0) change nothing
    assert image(generator, [lora(tiny_loras["diffusers"])]) != base
    assert image(generator) == base
