"""The generation parameters written inside output files, in the layout A1111-style tools read.

A1111, Forge, ComfyUI's image loaders, CivitAI and most image browsers read a PNG text chunk
``parameters``, or for JPEG and WebP the EXIF UserComment, holding::

    <prompt>
    Steps: 28, Sampler: Euler, CFG scale: 1, Guidance: 3.5, Seed: 42, Size: 1024x1024, Model: flux-dev

Beside it goes the exact inputs as JSON (PNG chunk ``fluxserve``, XMP for JPEG and WebP), so a
prediction can be made again from the file alone. Nothing time- or host-dependent is written:
the same inputs and seed still give the same bytes. URLs lose their signatures and tokens
(``redact_url``); an inline ``data:`` image is replaced by its size.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipelines.loras.sources import redact_url

SAMPLER = "Euler"  # FLUX's flow-matching Euler scheduler
JSON_KEY = "fluxserve"  # the PNG chunk (and XMP property) holding the exact inputs
TEXT_KEY = "parameters"  # the PNG chunk A1111 writes and reads
_URL_INPUTS = ("image", "lora_weights", "extra_lora")
# Left out of the file: whether the image was checked and how fast it was made are not how to
# make it again, and with them the same seed would no longer give the same bytes.
_NOT_WRITTEN = ("disable_safety_checker", "go_fast")


@dataclass(frozen=True)
class ImageParameters:
    """What made one image: the A1111 fields and the exact inputs (already made safe to share)."""

    prompt: str
    seed: int
    steps: int
    width: int
    height: int
    model: str
    guidance: float | None = None  # None: the model takes none (flux-schnell)
    denoising_strength: float | None = None  # img2img only
    loras: tuple[tuple[str, float], ...] = ()  # (source, scale)
    inputs: Mapping[str, Any] = field(default_factory=dict)

    def a1111_text(self) -> str:
        """The A1111 "parameters" text: the prompt, then one line of ``Key: value`` pairs."""
        pairs: list[tuple[str, object]] = [("Steps", self.steps), ("Sampler", SAMPLER), ("CFG scale", 1)]
        if self.guidance is not None:
            pairs.append(("Guidance", _number(self.guidance)))
        pairs += [("Seed", self.seed), ("Size", f"{self.width}x{self.height}"), ("Model", self.model)]
        if self.denoising_strength is not None:
            pairs.append(("Denoising strength", _number(self.denoising_strength)))
        for i, (source, scale) in enumerate(self.loras, start=1):
            pairs += [(f"Lora {i}", source), (f"Lora {i} scale", _number(scale))]
        return self.prompt + "\n" + ", ".join(f"{key}: {_quote(str(value))}" for key, value in pairs)

    def json_text(self) -> str:
        """The exact inputs with this image's seed, the model and the size, as compact JSON."""
        document = {
            "model": self.model,
            "seed": self.seed,
            "width": self.width,
            "height": self.height,
            "inputs": dict(self.inputs),
        }
        return json.dumps(document, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def image_parameters(
    inputs: Any, *, model: str, seed: int, width: int, height: int, img2img: bool
) -> ImageParameters:
    """The parameters of one image of a run: ``inputs`` are the run's validated inputs (a
    pipelines.inputs model), ``seed`` this image's own seed (the run's seed + its index)."""
    takes_guidance = "guidance" in type(inputs).model_fields
    shared = {k: v for k, v in safe_inputs(inputs.model_dump()).items() if k not in _NOT_WRITTEN}
    shared["seed"] = seed
    shared["num_outputs"] = 1  # this image alone is what these inputs give
    if shared.get("output_format") == "png":
        shared.pop("output_quality", None)  # ignored for png: png bytes never depend on it
    return ImageParameters(
        prompt=inputs.prompt,
        seed=seed,
        steps=inputs.num_inference_steps,
        width=width,
        height=height,
        model=model,
        guidance=inputs.guidance if takes_guidance else None,
        denoising_strength=inputs.prompt_strength if img2img else None,
        loras=tuple((_safe_source(source), scale) for source, scale in inputs.adapters),
        inputs=shared,
    )


def safe_inputs(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The inputs as they may be shared: URLs without signatures, an inline image by its size."""
    safe = dict(inputs)
    for name in _URL_INPUTS:
        if isinstance(safe.get(name), str):
            safe[name] = _safe_source(safe[name])
    return safe


def _safe_source(text: str) -> str:
    if text.startswith("data:"):
        return f"data: URL of {len(text)} characters (not kept)"
    if text.lower().startswith(("http://", "https://")):
        return redact_url(text)
    return text


def _number(value: float) -> str:
    """3.5 -> "3.5", 1.0 -> "1" (A1111 writes whole numbers without a fraction)."""
    return f"{value:g}"


def _quote(text: str) -> str:
    """A1111's rule: a value holding a comma, a colon or a newline is written as a JSON string."""
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)
