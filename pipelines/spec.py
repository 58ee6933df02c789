"""A model's configuration: where its weights are and how to load and run them.

Torch-free so the server can read and validate configs without loading torch.
"""

from __future__ import annotations

import re
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


class GoFastSpec(BaseModel):
    """What a request's ``go_fast: true`` means on this model (the contract: may change pixels)."""

    model_config = ConfigDict(extra="forbid")

    quantize: Literal["none", "fp8"] = Field(
        "none",
        description="`fp8`: go_fast requests run on a second copy of the transformer quantized to fp8 "
        "(torchao dynamic activation + weight; CUDA compute capability 8.9+: Ada, Hopper). Its "
        "non-quantized parts share memory with the standard transformer: about +12 GB for FLUX.1-dev. "
        "Standard requests keep the unquantized weights.",
    )
    compile: bool = Field(
        False,
        description="torch.compile the go_fast transformer's repeated blocks (dynamic shapes: one graph "
        "for every size), warmed up before the worker reports ready.",
    )

    @property
    def enabled(self) -> bool:
        return self.quantize != "none" or self.compile


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
    go_fast: GoFastSpec = Field(
        default_factory=GoFastSpec,
        description="What `go_fast: true` in a request runs: `{quantize: fp8, compile: true}` is the "
        "fastest on Ada/Hopper GPUs. Unset: go_fast runs the standard mode (the logs say so).",
    )
    go_fast_compile: bool = Field(
        False, description="Older spelling of `go_fast: {compile: true}`; still accepted."
    )
    attention_backend: str = Field(
        "native",
        description="diffusers attention backend of the transformer: `native` (PyTorch SDPA), `auto` "
        "(on a GPU, time every installed backend at start and keep the fastest that agrees with "
        "`native`), or a backend name (flash, _flash_3, sage, xformers, _native_cudnn, ...).",
    )
    warmup: bool = Field(
        True,
        description="Run a short generation before the worker reports ready, at every output size when "
        "a transformer is compiled, so no request pays first-call or compile time. /health-check "
        "says STARTING (warming up) meanwhile.",
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
        if (
            self.go_fast_compile
            and not self.go_fast.compile
            and self.quantize_transformer not in ("fp8", "int8")
        ):
            # The older flag never compiled a torchao-quantized transformer (already the fast path).
            self.go_fast = self.go_fast.model_copy(update={"compile": True})
        if self.go_fast.quantize == "fp8" and self.offload != "none":
            raise ValueError(
                "go_fast.quantize: fp8 keeps a second transformer on the GPU, which offload is meant to "
                "avoid: use offload: none, or quantize_transformer: fp8 for every request"
            )
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", self.attention_backend):
            raise ValueError(f"attention_backend: {self.attention_backend!r} is not a backend name")
        return self

    @property
    def go_fast_transformer_separate(self) -> bool:
        """go_fast runs on its own (fp8) copy of the transformer rather than the standard one."""
        return self.go_fast.quantize == "fp8" and self.quantize_transformer != "fp8"

    @property
    def compiles_standard_transformer(self) -> bool:
        """The standard transformer's blocks get compiled (for every request, or for go_fast ones)."""
        return self.compile or (self.go_fast.compile and not self.go_fast_transformer_separate)

    @property
    def serves_lora(self) -> bool:
        """It also answers to the LoRA face (a flux-dev model with ``lora`` on)."""
        return self.family == "flux-dev" and self.lora

    @property
    def slugs(self) -> list[str]:
        """Every slug this model answers to: its own, then its LoRA face's."""
        return [self.name, self.lora_slug] if self.serves_lora else [self.name]
