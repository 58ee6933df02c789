"""The tiny LoRA files: fast, deterministic, and the same weights in every layout."""

from __future__ import annotations

import time

import pytest
from safetensors.torch import load_file

from pipelines.tiny_lora import write_tiny_lora


def test_a_tiny_lora_is_written_in_well_under_a_second(tiny_model_dir, tmp_path):
    started = time.perf_counter()
    write_tiny_lora(tiny_model_dir, tmp_path / "a.safetensors")
    assert time.perf_counter() - started < 1.0


def test_the_same_seed_writes_the_same_weights_and_another_seed_others(tiny_model_dir, tmp_path):
    import torch

    a = load_file(write_tiny_lora(tiny_model_dir, tmp_path / "a.safetensors", seed=3))
    again = load_file(write_tiny_lora(tiny_model_dir, tmp_path / "again.safetensors", seed=3))
    other = load_file(write_tiny_lora(tiny_model_dir, tmp_path / "other.safetensors", seed=4))
    assert all(torch.equal(a[k], again[k]) for k in a)
    assert not all(torch.equal(a[k], other[k]) for k in a)


def test_up_weights_are_not_zero_and_rank_is_as_asked(tiny_model_dir, tmp_path):
    tensors = load_file(write_tiny_lora(tiny_model_dir, tmp_path / "a.safetensors", rank=8))
    ups = [v for k, v in tensors.items() if k.endswith("lora_B.weight")]
    assert ups and all(v.abs().sum() > 0 and v.shape[1] == 8 for v in ups)


def test_the_kohya_layout_uses_bfl_module_names(tiny_model_dir, tmp_path):
    keys = set(load_file(write_tiny_lora(tiny_model_dir, tmp_path / "k.safetensors", layout="kohya")))
    assert "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in keys
    assert "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight" in keys
    assert "lora_unet_double_blocks_0_img_attn_qkv.alpha" in keys
    assert "lora_unet_single_blocks_0_linear2.lora_up.weight" in keys


@pytest.mark.parametrize("layout", ["kohya", "xlabs"])
def test_every_layout_converts_to_the_diffusers_layouts_weights(tiny_model_dir, tmp_path, layout):
    import torch
    from diffusers import FluxPipeline

    reference = FluxPipeline.lora_state_dict(str(write_tiny_lora(tiny_model_dir, tmp_path / "d.safetensors")))
    converted = FluxPipeline.lora_state_dict(
        str(write_tiny_lora(tiny_model_dir, tmp_path / "x.safetensors", layout=layout))
    )
    assert set(converted) == set(reference)
    assert all(torch.equal(converted[k], reference[k]) for k in reference)


@pytest.mark.parametrize(("layout", "prefix"), [("diffusers", "text_encoder."), ("kohya", "lora_te1_")])
def test_text_encoder_weights_are_added_on_request(tiny_model_dir, tmp_path, layout, prefix):
    plain = load_file(write_tiny_lora(tiny_model_dir, tmp_path / "p.safetensors", layout=layout))
    with_te = load_file(
        write_tiny_lora(tiny_model_dir, tmp_path / "t.safetensors", layout=layout, text_encoder=True)
    )
    assert not any(k.startswith(prefix) for k in plain)
    assert any(k.startswith(prefix) for k in with_te)
