"""A model's configuration: where its weights are and how to load and run them.

Torch-free so the server can read and validate configs without loading torch.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

DType = Literal["auto", "bfloat16", "float16", "float32"]
Offload = Literal["none", "model", "sequential", "group"]
Quantization = Literal["none", "fp8", "int8", "nf4"]

HF_REPO_ID = "black-forest-labs/FLUX.1-dev"


class ModelSpec(BaseModel):
    """One served model. ``flux-schnell`` or a fine-tune is another entry with other values."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("flux-dev", description="The model slug clients send in `model`.")
    weights: str = Field(
        "auto",
        description=(
            "A diffusers folder (FLUX.1-dev layout), a Hugging Face repo id found in the local cache "
            "(no network), or `auto`: FLUX.1-dev from the local cache when present, else the tiny demo model."
        ),
    )
    transformer_file: str | None = Field(
        None,
        description="A single-file transformer checkpoint (.safetensors, e.g. BFL's flux1-dev.safetensors); "
        "the other parts come from `weights`.",
    )
    device: str = Field(
        "auto", description="`auto` (cuda when available, else cpu), `cpu`, `cuda`, `cuda:N`."
    )
    dtype: DType = Field("auto", description="`auto`: bfloat16 on CUDA, float32 on CPU.")
    offload: Offload = Field(
        "none",
        description="`model`: whole modules move to the GPU when used (~22 GB peak); `sequential`: layer by "
        "layer (lowest VRAM, slow); `group`: diffusers group offload with CUDA streams.",
    )
    vae_tiling: bool = Field(False, description="Decode in tiles: lower peak memory at large sizes.")
    quantize_transformer: Quantization = Field(
        "none", description="fp8/int8 (torchao) or nf4 (bitsandbytes); CUDA only."
    )
    quantize_text_encoder: Quantization = Field("none", description="Same for the T5 encoder; CUDA only.")
    compile: bool = Field(
        False, description="torch.compile the transformer's repeated blocks (slow first call)."
    )
    go_fast_compile: bool = Field(
        False,
        description="When a request sets go_fast, compile even if `compile` is off "
        "(first go_fast call is slow).",
    )
    safety_checker: str | None = Field(
        None, description="A local folder with a StableDiffusionSafetyChecker and its image processor."
    )
    allow_disable_safety_checker: bool = Field(
        True, description="Honour `disable_safety_checker` in requests."
    )
    batch_outputs: bool = Field(
        False,
        description="Denoise all num_outputs images in one batch. Off: one after another, so image i is "
        "byte-identical to seed+i generated alone (batching differs by ~1 level per channel).",
    )
    max_sequence_length: int = Field(
        512, ge=1, le=512, description="T5 token limit; longer prompts are truncated."
    )
    defaults: dict[str, Any] = Field(default_factory=dict, description="Input defaults for this model.")
    tiny_model_dir: str | None = Field(
        None,
        description="Where `weights: auto` builds the tiny demo model (default: the user cache, "
        "$XDG_CACHE_HOME/fluxserve/tiny-flux or ~/.cache/fluxserve/tiny-flux; `generate` uses it too).",
    )
