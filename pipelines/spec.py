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
StepCacheMethod = Literal["first_block", "taylorseer", "mag"]
LayerwiseCasting = Literal["none", "fp8"]

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


# Per method: the knobs it reads and their defaults. A knob given for a method that does not read
# it is refused, so a config never carries a setting that silently does nothing.
STEP_CACHE_KNOBS: dict[str, dict[str, float | int]] = {
    # ParaAttention's figure for FLUX.1-dev: ~1.6-2x fewer block passes at little visible change.
    "first_block": {"threshold": 0.08},
    # diffusers' defaults: a full pass every `interval` steps, first-order prediction in between.
    "taylorseer": {"interval": 5, "order": 1, "warmup_steps": 3},
    # diffusers' defaults with its shipped FLUX.1 magnitude ratios (calibrated for 28 steps and
    # interpolated to the request's step count).
    "mag": {"threshold": 0.06, "max_skip_steps": 3, "retention_ratio": 0.2},
}


class StepCacheSpec(BaseModel):
    """Reuse transformer work across denoising steps (diffusers' cache hooks): faster, changes pixels."""

    model_config = ConfigDict(extra="forbid")

    method: StepCacheMethod = Field(
        "first_block",
        description="`first_block`: skip the remaining blocks when the first block's output barely "
        "changed since the last step; `taylorseer`: compute fully every `interval` steps and "
        "predict attention outputs in between; `mag`: MagCache, skips steps by the magnitude "
        "ratios diffusers ships for FLUX.1 (or `mag_ratios`).",
    )
    applies_to: Literal["all", "go_fast"] = Field(
        "go_fast",
        description="`go_fast`: only requests with go_fast on use the cache; `all`: every request.",
    )
    threshold: float | None = Field(
        None,
        gt=0,
        description="first_block (default 0.08) and mag (default 0.06): higher skips more steps, "
        "changes more pixels.",
    )
    interval: int | None = Field(
        None, ge=1, description="taylorseer: steps between full computations (default 5)."
    )
    order: int | None = Field(
        None, ge=1, le=3, description="taylorseer: order of the Taylor prediction (default 1)."
    )
    warmup_steps: int | None = Field(
        None, ge=0, description="taylorseer: steps always computed fully at the start (default 3)."
    )
    max_skip_steps: int | None = Field(
        None, ge=1, description="mag: most steps skipped in a row (default 3)."
    )
    retention_ratio: float | None = Field(
        None,
        ge=0,
        le=1,
        description="mag: the fraction of first steps never skipped (default 0.2).",
    )
    mag_ratios: list[float] | None = Field(
        None,
        min_length=2,
        description="mag: per-step magnitude ratios calibrated for this checkpoint (diffusers' "
        "MagCacheConfig(calibrate=True) prints them). Unset: the ratios diffusers ships for FLUX.1; "
        "a fine-tune far from FLUX.1 needs its own.",
    )

    @model_validator(mode="after")
    def _knobs_fit_the_method(self) -> StepCacheSpec:
        knobs = set(STEP_CACHE_KNOBS[self.method]) | ({"mag_ratios"} if self.method == "mag" else set())
        for name in (
            "threshold",
            "interval",
            "order",
            "warmup_steps",
            "max_skip_steps",
            "retention_ratio",
            "mag_ratios",
        ):
            if getattr(self, name) is not None and name not in knobs:
                raise ValueError(
                    f"{name}: method {self.method} does not use it (it reads {', '.join(sorted(knobs))})"
                )
        return self

    def knob(self, name: str) -> float | int:
        """A knob's configured value, else the method's default."""
        value = getattr(self, name)
        return STEP_CACHE_KNOBS[self.method][name] if value is None else value


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
    step_cache: StepCacheSpec | None = Field(
        None,
        description="Reuse work across denoising steps (faster, changes pixels): `method`, "
        "`applies_to` and the method's knobs (README, Fast and lean); unset: off.",
    )
    layerwise_casting: LayerwiseCasting = Field(
        "none",
        description="`fp8`: store the transformer's weights in float8 (e4m3) and cast each layer to "
        "`dtype` when it runs: about half the transformer's memory, slightly different pixels.",
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
        if self.layerwise_casting != "none" and self.quantize_transformer != "none":
            raise ValueError(
                "layerwise_casting: the transformer is already quantized (quantize_transformer); "
                "use one or the other"
            )
        if self.layerwise_casting != "none" and self.go_fast.quantize != "none":
            raise ValueError(
                "layerwise_casting: go_fast.quantize makes an fp8 copy of the transformer's weights, "
                "which layerwise casting already stores in fp8; use one or the other"
            )
        if self.step_cache is not None and (self.compile or self.go_fast.compile):
            # diffusers runs its cache hooks under torch.compiler.disable, which the transformer's
            # fullgraph compile refuses (measured with diffusers 0.42, every method).
            raise ValueError(
                "step_cache: cannot run in a compiled transformer (diffusers' cache hooks are not "
                "compilable); turn compile and go_fast.compile off, or remove step_cache"
            )
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
