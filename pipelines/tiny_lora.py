"""Tiny Flux LoRAs for the tiny random FLUX transformer (tests, benchmarks, demos).

One adapter, three file layouts that hold the *same* weights, so that a test can compare them:

- ``diffusers``: what ``FluxPipeline.save_lora_weights`` writes (PEFT keys
  ``transformer.<module>.lora_A.weight`` / ``lora_B.weight`` and the peft ``LoraConfig`` as metadata);
- ``kohya``: BFL-original module names, ``lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`` /
  ``lora_up.weight`` / ``alpha`` (what diffusers' kohya converter reads);
- ``xlabs``: ``double_blocks.0.processor.qkv_lora1.down.weight`` style.

q, k and v of one attention share their down (A) matrix: kohya and XLabs store the three as one fused
``qkv`` LoRA with one down matrix, so sharing it is what makes the three layouts hold equal weights.
Alpha equals the rank everywhere (scale 1), so no layout rescales anything.

Only shapes are read from the transformer (its config), never its weights: a file takes milliseconds.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Layout = Literal["diffusers", "kohya", "xlabs"]
LAYOUTS: tuple[str, ...] = ("diffusers", "kohya", "xlabs")


@dataclass(frozen=True)
class _Target:
    module: str  # diffusers name inside the transformer
    in_features: int
    out_features: int
    kohya: str  # the fused BFL module it belongs to (kohya name)
    xlabs: str  # the same, XLabs name
    down_group: str  # modules with the same group share one down (A) matrix


def _transformer_config(transformer_or_model_dir: Any) -> dict:
    if isinstance(transformer_or_model_dir, (str, Path)):
        folder = Path(transformer_or_model_dir)
        path = folder / "transformer" / "config.json"
        if not path.is_file():
            path = folder / "config.json"
        return json.loads(path.read_text())
    return dict(transformer_or_model_dir.config)


def _targets(config: dict) -> list[_Target]:
    inner = config["num_attention_heads"] * config["attention_head_dim"]
    mlp = inner * 4  # FluxSingleTransformerBlock's mlp_ratio
    targets: list[_Target] = []
    for i in range(config["num_layers"]):
        blk, kohya, xlabs = (
            f"transformer_blocks.{i}.attn",
            f"lora_unet_double_blocks_{i}",
            f"double_blocks.{i}",
        )
        for stream, (qkv, proj), n in (
            ("img", ("to_q to_k to_v".split(), "to_out.0"), 1),
            ("txt", ("add_q_proj add_k_proj add_v_proj".split(), "to_add_out"), 2),
        ):
            group = f"{kohya}_{stream}_attn_qkv"
            for name in qkv:
                targets.append(
                    _Target(f"{blk}.{name}", inner, inner, group, f"{xlabs}.processor.qkv_lora{n}", group)
                )
            targets.append(
                _Target(
                    f"{blk}.{proj}",
                    inner,
                    inner,
                    f"{kohya}_{stream}_attn_proj",
                    f"{xlabs}.processor.proj_lora{n}",
                    f"{blk}.{proj}",
                )
            )
    for i in range(config["num_single_layers"]):
        module = f"single_transformer_blocks.{i}.proj_out"
        targets.append(
            _Target(
                module,
                inner + mlp,
                inner,
                f"lora_unet_single_blocks_{i}_linear2",
                f"single_blocks.{i}.processor.proj_lora",
                module,
            )
        )
    return targets


def _adapter_weights(targets: list[_Target], *, seed: int, rank: int, scale: float):
    """{module: (A, B)}, deterministic by seed (its own generator: the global RNG is left alone)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    downs: dict[str, torch.Tensor] = {}
    weights = {}
    for t in targets:
        if t.down_group not in downs:
            downs[t.down_group] = torch.randn(rank, t.in_features, generator=gen) / t.in_features**0.5
        up = torch.randn(t.out_features, rank, generator=gen) * (0.1 * scale / rank**0.5)
        weights[t.module] = (downs[t.down_group], up)
    return weights


def _text_encoder_weights(*, seed: int, rank: int, hidden: int = 32):
    """LoRA weights for the CLIP encoder's first attention (kept only to be ignored by the loader)."""
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    return {
        f"text_model.encoder.layers.0.self_attn.{p}": (
            torch.randn(rank, hidden, generator=gen) * 0.1,
            torch.randn(hidden, rank, generator=gen) * 0.1,
        )
        for p in ("q_proj", "k_proj", "v_proj", "out_proj")
    }


def _diffusers_file(targets, weights, te_weights, dest: Path, rank: int) -> None:
    from diffusers import FluxPipeline
    from peft import LoraConfig

    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=sorted({t.module for t in targets}))
    transformer_layers = {}
    for module, (down, up) in weights.items():
        transformer_layers[f"{module}.lora_A.weight"] = down.clone()
        transformer_layers[f"{module}.lora_B.weight"] = up.clone()
    te_layers = None
    if te_weights:
        te_layers = {}
        for module, (down, up) in te_weights.items():
            te_layers[f"{module}.lora_A.weight"] = down
            te_layers[f"{module}.lora_B.weight"] = up
    with tempfile.TemporaryDirectory() as tmp:
        FluxPipeline.save_lora_weights(
            tmp,
            transformer_lora_layers=transformer_layers,
            text_encoder_lora_layers=te_layers,
            transformer_lora_adapter_metadata=config.to_dict(),
            weight_name="adapter.safetensors",
        )
        shutil.move(str(Path(tmp) / "adapter.safetensors"), dest)


def _fused(targets, weights, name_of) -> dict:
    """Group modules by their fused BFL name: (shared down, up weights stacked in order)."""
    import torch

    fused: dict[str, tuple] = {}
    for t in targets:
        down, up = weights[t.module]
        name = name_of(t)
        if name in fused:
            fused[name] = (fused[name][0], torch.cat([fused[name][1], up]))
        else:
            fused[name] = (down, up)
    return fused


def _kohya_file(targets, weights, te_weights, dest: Path, rank: int) -> None:
    import torch
    from safetensors.torch import save_file

    tensors = {}
    for name, (down, up) in _fused(targets, weights, lambda t: t.kohya).items():
        tensors[f"{name}.lora_down.weight"] = down.contiguous()
        tensors[f"{name}.lora_up.weight"] = up.contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(float(rank))
    for module, (down, up) in (te_weights or {}).items():
        name = "lora_te1_" + module.replace(".", "_")
        tensors[f"{name}.lora_down.weight"] = down.contiguous()
        tensors[f"{name}.lora_up.weight"] = up.contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(float(rank))
    save_file(tensors, str(dest), metadata={"ss_network_module": "networks.lora_flux"})


def _xlabs_file(targets, weights, dest: Path) -> None:
    from safetensors.torch import save_file

    tensors = {}
    for name, (down, up) in _fused(targets, weights, lambda t: t.xlabs).items():
        tensors[f"{name}.down.weight"] = down.contiguous()
        tensors[f"{name}.up.weight"] = up.contiguous()
    save_file(tensors, str(dest))


def write_tiny_lora(
    transformer_or_model_dir: Any,
    dest: str | Path,
    *,
    layout: Layout = "diffusers",
    seed: int = 0,
    rank: int = 4,
    scale: float = 5.0,
    text_encoder: bool = False,
) -> Path:
    """Write one tiny Flux LoRA ``.safetensors`` file for the tiny transformer and return its path.

    ``transformer_or_model_dir``: a FluxTransformer2DModel (its config is read) or a tiny model folder.
    ``scale`` sizes the up weights (5: an image visibly changes). ``text_encoder`` adds CLIP LoRA
    weights (diffusers and kohya layouts; XLabs files never hold any).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if text_encoder and layout == "xlabs":
        raise ValueError("XLabs Flux LoRAs hold no text-encoder weights")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    targets = _targets(_transformer_config(transformer_or_model_dir))
    weights = _adapter_weights(targets, seed=seed, rank=rank, scale=scale)
    te_weights = _text_encoder_weights(seed=seed, rank=rank) if text_encoder else None
    if layout == "diffusers":
        _diffusers_file(targets, weights, te_weights, dest, rank)
    elif layout == "kohya":
        _kohya_file(targets, weights, te_weights, dest, rank)
    else:
        _xlabs_file(targets, weights, dest)
    return dest
