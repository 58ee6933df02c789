"""The flux-dev inputs of the prediction contract: names, types, defaults, ranges and sizes.

Torch-free on purpose: the HTTP server validates requests with this module without loading torch.
Clients send numbers as numbers or numeric strings ("3.5", "28") and booleans as booleans or
"true"/"false"; ``null`` means "use the default".
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

AspectRatio = Literal["1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21"]
OutputFormat = Literal["webp", "jpg", "png"]
Megapixels = Literal["1", "0.25"]

# Width x height at 1 megapixel: a fixed table, all multiples of 64 (the contract's table).
ASPECT_RATIO_SIZES: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "16:9": (1344, 768),
    "21:9": (1536, 640),
    "3:2": (1216, 832),
    "2:3": (832, 1216),
    "4:5": (896, 1088),
    "5:4": (1088, 896),
    "3:4": (896, 1152),
    "4:3": (1152, 896),
    "9:16": (768, 1344),
    "9:21": (640, 1536),
}

IMG2IMG_MAX_SIDE = 1440
IMG2IMG_MULTIPLE = 16
MAX_PROMPT_CHARS = 10_000  # far beyond T5's 512 tokens; longer prompts are refused, not silently cut
MAX_SEED = 2**63 - 1


def output_size(aspect_ratio: str, megapixels: str = "1") -> tuple[int, int]:
    """Width and height for a text-to-image request; 0.25 megapixels halves both sides."""
    width, height = ASPECT_RATIO_SIZES[aspect_ratio]
    if megapixels == "0.25":
        return width // 2, height // 2
    return width, height


def img2img_size(width: int, height: int) -> tuple[int, int]:
    """The contract's img2img rule: scale down (never up) to fit 1440x1440, then round each
    side to the nearest multiple of 16 (at least 16)."""
    scale = min(1.0, IMG2IMG_MAX_SIDE / width, IMG2IMG_MAX_SIDE / height)
    w, h = width * scale, height * scale

    def round16(x: float) -> int:
        return max(IMG2IMG_MULTIPLE, int(math.floor(x / IMG2IMG_MULTIPLE + 0.5)) * IMG2IMG_MULTIPLE)

    return round16(w), round16(h)


_NULLABLE = ("image", "seed", "lora_weights", "extra_lora")  # null is a value here, not "the default"
_BOOL_STRINGS = {"true": True, "false": False, "1": True, "0": False}


def _finite(name: str, value: float) -> float:
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{name} must be a finite number")
    return value


class _FluxCommonInputs(BaseModel):
    """The inputs every FLUX model takes. Unknown fields are ignored (hosted clients send extra ones)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    prompt: str = Field(description="Text to draw.", min_length=1, max_length=MAX_PROMPT_CHARS)
    aspect_ratio: AspectRatio = Field("1:1", description="Output size (see the table); ignored with `image`.")
    megapixels: Megapixels = Field("1", description="`1` or `0.25`; 0.25 halves both sides.")
    image: str | None = Field(None, description="img2img source: an http(s) URL or a `data:` URL.")
    prompt_strength: float = Field(0.8, ge=0, le=1, description="img2img: 1.0 destroys the source fully.")
    num_outputs: int = Field(1, ge=1, le=4, description="Images per prediction.")
    num_inference_steps: int = Field(28, ge=1, le=50, description="Denoising steps.")
    seed: int | None = Field(
        None,
        ge=0,
        le=MAX_SEED,
        description="null or 0: a random seed (printed in logs); image i uses seed+i.",
    )
    output_format: OutputFormat = Field("webp", description="webp, jpg or png.")
    output_quality: int = Field(80, ge=0, le=100, description="0 to 100; ignored for png.")
    disable_safety_checker: bool = Field(
        False, description="Skip the NSFW filter (the server may forbid it)."
    )
    go_fast: bool = Field(False, description="Use the fastest configured mode; may change pixels for a seed.")

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None or k in _NULLABLE}
        return data

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_is_text(cls, v: Any) -> Any:
        if not isinstance(v, str):
            raise ValueError("prompt must be a string")
        if not v.strip():
            raise ValueError("prompt must not be empty")
        return v

    @field_validator("image", mode="before")
    @classmethod
    def _image_is_url(cls, v: Any) -> Any:
        if v is None or v == "":
            return None
        if not isinstance(v, str):
            raise ValueError("image must be an http(s) URL or a data: URL")
        lowered = v[:16].lower()
        if not (
            lowered.startswith("http://") or lowered.startswith("https://") or lowered.startswith("data:")
        ):
            raise ValueError("image must be an http(s) URL or a data: URL")
        return v

    @field_validator("megapixels", mode="before")
    @classmethod
    def _megapixels_text(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError("megapixels must be 1 or 0.25")
        if isinstance(v, int | float):
            if v == 1:
                return "1"
            if v == 0.25:
                return "0.25"
            raise ValueError("megapixels must be 1 or 0.25")
        if isinstance(v, str):
            try:
                return cls._megapixels_text(float(v))
            except ValueError:
                raise ValueError("megapixels must be 1 or 0.25") from None
        return v

    # check_fields=False: guidance and the LoRA scales are fields of some subclasses only.
    @field_validator(
        "prompt_strength", "guidance", "lora_scale", "extra_lora_scale", mode="before", check_fields=False
    )
    @classmethod
    def _float_like(cls, v: Any, info: Any) -> Any:
        return _number(info.field_name, v, integer=False)

    @field_validator("num_outputs", "num_inference_steps", "output_quality", "seed", mode="before")
    @classmethod
    def _int_like(cls, v: Any, info: Any) -> Any:
        if v is None:
            return None
        return _number(info.field_name, v, integer=True)

    @field_validator("disable_safety_checker", "go_fast", mode="before")
    @classmethod
    def _bool_like(cls, v: Any, info: Any) -> Any:
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.strip().lower() in _BOOL_STRINGS:
            return _BOOL_STRINGS[v.strip().lower()]
        if isinstance(v, int) and v in (0, 1):
            return bool(v)
        raise ValueError(f"{info.field_name} must be true or false")

    @field_validator("seed", mode="after")
    @classmethod
    def _zero_seed_is_random(cls, v: int | None) -> int | None:
        return None if v == 0 else v

    @property
    def size(self) -> tuple[int, int]:
        """Text-to-image output size (img2img sizes come from the source image)."""
        return output_size(self.aspect_ratio, self.megapixels)

    @property
    def adapters(self) -> list[tuple[str, float]]:
        """The LoRA adapters asked for, as (source, scale); none for models without LoRA inputs."""
        return []


class FluxInputs(_FluxCommonInputs):
    """Validated flux-dev inputs."""

    guidance: float = Field(3.5, ge=0, le=10, description="Distilled guidance scale.")


class FluxSchnellInputs(_FluxCommonInputs):
    """flux-schnell: the timestep-distilled model runs in 1 to 4 steps and takes no guidance."""

    num_inference_steps: int = Field(4, ge=1, le=4, description="Denoising steps (schnell: at most 4).")

    @property
    def guidance(self) -> float:
        # FLUX.1-schnell has no guidance embedding; diffusers ignores the value for it.
        return 0.0


class FluxLoraInputs(FluxInputs):
    """flux-dev-lora: the flux-dev inputs plus up to two LoRA adapters (sources: pipelines/loras)."""

    lora_weights: str | None = Field(
        None,
        description="The main LoRA: an adapter name from the server's folder, an https:// URL of a "
        ".safetensors file, huggingface.co/<owner>/<repo>[/<file>.safetensors], <owner>/<repo>, "
        "or a CivitAI model or download URL.",
        max_length=2048,
    )
    lora_scale: float = Field(1.0, ge=-1, le=3, description="Strength of the main LoRA.")
    extra_lora: str | None = Field(
        None, description="A second LoRA, combined with the first (same forms).", max_length=2048
    )
    extra_lora_scale: float = Field(1.0, ge=-1, le=3, description="Strength of the second LoRA.")

    @field_validator("lora_weights", "extra_lora", mode="before")
    @classmethod
    def _adapter_source(cls, v: Any, info: ValidationInfo) -> Any:
        if v is None or (isinstance(v, str) and not v.strip()):
            return None
        from pipelines.loras.sources import AdapterSourceError, parse_adapter_source

        allow_http = bool((info.context or {}).get("allow_http_adapters", False))
        try:
            parse_adapter_source(v, allow_http=allow_http)
        except AdapterSourceError as exc:
            raise ValueError(str(exc)) from None
        return v.strip()

    @property
    def adapters(self) -> list[tuple[str, float]]:
        pairs = [(self.lora_weights, self.lora_scale), (self.extra_lora, self.extra_lora_scale)]
        return [(source, scale) for source, scale in pairs if source]


# Each model family's inputs, by the name a model entry gives its input schema.
INPUT_SCHEMAS: dict[str, type[_FluxCommonInputs]] = {
    "flux-dev": FluxInputs,
    "flux-dev-lora": FluxLoraInputs,
    "flux-schnell": FluxSchnellInputs,
}


def _number(name: str, value: Any, *, integer: bool) -> int | float:
    """Accept numbers and numeric strings; refuse booleans, NaN, infinities and fractions for ints."""
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool):
        raise ValueError(f"{name} must be {kind}, not a boolean")
    if isinstance(value, str):
        text = value.strip()
        try:
            value = (
                float(text) if not integer else (int(text) if text.lstrip("+-").isdigit() else float(text))
            )
        except ValueError:
            raise ValueError(f"{name} must be {kind}, got {value[:40]!r}") from None
    if isinstance(value, float):
        _finite(name, value)
        if integer:
            if not value.is_integer():
                raise ValueError(f"{name} must be a whole number")
            return int(value)
        return value
    if isinstance(value, int):
        return value if integer else float(value)
    raise ValueError(f"{name} must be {kind}")


class InvalidInputs(ValueError):
    """Raised by :func:`parse_inputs`; ``details`` maps each bad field to the reason."""

    def __init__(self, details: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in details.items()))
        self.details = details


def parse_inputs(
    raw: Any,
    defaults: dict[str, Any] | None = None,
    schema: type[_FluxCommonInputs] = FluxInputs,
    *,
    allow_http_adapters: bool = False,
) -> _FluxCommonInputs:
    """Validate a client's ``input`` object against ``schema`` (flux-dev's by default);
    model-specific defaults fill fields left out or null. ``allow_http_adapters``: LoRA sources
    may be plain http:// URLs (the operator allows it)."""
    if not isinstance(raw, dict):
        raise InvalidInputs({"input": "must be a JSON object"})
    merged = dict(defaults or {})
    merged.update({k: v for k, v in raw.items() if v is not None})
    for nullable in _NULLABLE:
        if raw.get(nullable, "absent") is None:
            merged[nullable] = None
    try:
        return schema.model_validate(merged, context={"allow_http_adapters": allow_http_adapters})
    except ValidationError as exc:
        raise InvalidInputs(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> dict[str, str]:
    details: dict[str, str] = {}
    for err in exc.errors(include_url=False, include_input=False):
        field = ".".join(str(p) for p in err.get("loc", ())) or "input"
        msg = err.get("msg", "invalid")
        msg = msg.removeprefix("Value error, ")
        details.setdefault(field, msg)
    return details
