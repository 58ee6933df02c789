"""A model's configuration: where its weights are and how to load and run them.

Torch-free so the server can read and validate configs without loading torch.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DType = Literal["auto", "bfloat16", "float16", "float32"]
Offload = Literal["none", "model", "sequential", "group"]
Quantization = Literal["none", "fp8", "int8", "nf4"]
Family = Literal["flux-dev", "flux-schnell"]

HF_REPO_ID = "black-forest-labs/FLUX.1-dev"
# Where `weights: auto` looks in the local Hugging Face cache, per family.
HF_REPO_IDS = {"flux-dev": HF_REPO_ID, "flux-schnell": "black-forest-labs/FLUX.1-schnell"}
HF_SCHNELL_REPO_ID = "black-forest-labs/FLUX.1-schnell"
# The LoRA face of a flux-dev model: Eachlabs' slug and Replicate's model name.
LORA_SLUG = "black-forest-labs-flux-dev-lora"
LORA_NAME = "flux-dev-lora"


class ModelSpec(BaseModel):
    """One served model. ``flux-schnell`` or a fine-tune is another entry with other values."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        "flux-dev",
        description="The model slug clients send in `model` (and Replicate's model name); "
        "`flux-schnell` when `family` is flux-schnell and no name is given.",
    )
    family: Family = Field(
        "flux-dev",
        description="`flux-dev` (guidance, up to 50 steps, LoRA adapters) or `flux-schnell` (4 steps "
        "default and most, no guidance): the inputs this model takes.",
    )
    lora: bool = Field(
        True,
        description="A flux-dev model also serves the LoRA face (`lora_slug`) from the same loaded weights. "
        "flux-schnell has none.",
    )
    lora_slug: str = Field(LORA_SLUG, description="The LoRA face's slug (Eachlabs `model`).")
    lora_name: str = Field(LORA_NAME, description="The LoRA face's Replicate model name (owner/name).")
    gpus: list[int] | None = Field(
        None,
        description="GPU indices whose workers serve this model: one worker per GPU listed. "
        "Unset: `workers` workers (one model alone: workers.count / workers.gpus, as before).",
    )
    workers: int | None = Field(
        None,
        ge=1,
        description="Worker processes serving this model where no `gpus` are given (default 1 when "
        "several models are configured).",
    )
    weights: str = Field(
        "auto",
        description=(
            "A diffusers folder (FLUX.1-dev layout), a Hugging Face repo id found in the local cache "
            "(no network), or `auto`: the family's repo (FLUX.1-dev or FLUX.1-schnell) from the local "
            "cache when present, else the tiny demo model."
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
    batch_max_pixels: int | None = Field(
        None,
        ge=1,
        description="With batch_outputs, batch only sizes of at most this many pixels (width*height); "
        "larger ones run one after another (seed+i reproducible). A batch keeps a GPU busier at small "
        "sizes but needs n times the activation memory and gains little where one image already "
        "fills the GPU. Unset: batch every size.",
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

    @model_validator(mode="after")
    def _family_rules(self) -> ModelSpec:
        if self.family == "flux-schnell":
            if "lora" in self.model_fields_set and self.lora:
                raise ValueError("lora: flux-schnell serves no LoRA face (set lora: false or leave it out)")
            self.lora = False  # so a dump of this spec reads back the same
            if "name" not in self.model_fields_set:
                self.name = "flux-schnell"
        if self.gpus is not None and self.workers is not None:
            raise ValueError("gpus and workers: give one (gpus: one worker per GPU listed)")
        if self.gpus is not None and not self.gpus:
            raise ValueError("gpus: list at least one GPU index, or leave it out")
        return self

    @property
    def serves_lora(self) -> bool:
        """It also answers to the LoRA face (a flux-dev model with ``lora`` on)."""
        return self.family == "flux-dev" and self.lora

    @property
    def slugs(self) -> list[str]:
        """Every slug this model answers to: its own, then its LoRA face's."""
        return [self.name, self.lora_slug] if self.serves_lora else [self.name]
