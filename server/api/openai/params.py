"""An OpenAI images request's fields turned into a prediction's ``input`` (the contract's inputs).

OpenAI's own fields are translated (``n`` -> ``num_outputs``, ``size`` -> ``aspect_ratio`` and
``megapixels``, ``output_format``, ``output_compression`` -> ``output_quality``); the ones with no
meaning here (``quality``, ``style``, ``user``, ``background``, ``moderation``...) are accepted and
ignored; the contract's inputs a client may add (``extra_body`` in the SDK: ``seed``,
``num_inference_steps``, ``guidance``, LoRA inputs...) go to the prediction as they are, and the
model checks them. Anything else is refused, naming it, as OpenAI refuses an unknown argument.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from server.api.openai.errors import invalid
from server.api.openai.sizes import UnsupportedSize, choose_size

ResponseFormat = Literal["url", "b64_json"]
RESPONSE_FORMATS = ("url", "b64_json")
# OpenAI's output formats and the contract's names for them. OpenAI answers PNG unless asked.
OUTPUT_FORMATS = {"png": "png", "jpeg": "jpg", "jpg": "jpg", "webp": "webp"}
DEFAULT_OUTPUT_FORMAT = "png"
IGNORED = frozenset(
    {"quality", "style", "user", "background", "moderation", "input_fidelity", "partial_images"}
)
# The contract's inputs taken as extra fields (aspect ratio and megapixels come from `size`).
PASSED_THROUGH = frozenset(
    {
        "seed",
        "num_inference_steps",
        "guidance",
        "go_fast",
        "disable_safety_checker",
        "prompt_strength",
        "lora_weights",
        "lora_scale",
        "extra_lora",
        "extra_lora_scale",
    }
)
# Contract inputs an OpenAI field stands for: named in the refusal.
USE_INSTEAD = {
    "aspect_ratio": "size",
    "megapixels": "size",
    "num_outputs": "n",
    "output_quality": "output_compression",
}
OWN_FIELDS = frozenset(
    {"model", "prompt", "n", "size", "response_format", "output_format", "output_compression", "stream"}
)


@dataclass(frozen=True)
class ImageRequest:
    """What an OpenAI images request asks for: the model name as sent (None: the default), the
    prediction's input, and how the images come back."""

    model: str | None
    input: dict[str, Any]
    response_format: ResponseFormat


def image_request(fields: Mapping[str, Any], *, edit: bool = False) -> ImageRequest:
    """Translate a request's fields (a JSON body, or a form's text fields). Raises OpenAIError (400)
    naming the parameter at fault. The image of an edit is added by the caller."""
    for name in fields:
        if name in OWN_FIELDS or name in IGNORED or name in PASSED_THROUGH:
            continue
        if name in USE_INSTEAD:
            raise invalid(f"Unrecognized request argument supplied: {name}; use {USE_INSTEAD[name]}", name)
        if name in ("image", "image[]") and not edit:
            raise invalid("An image is taken by /images/edits, not /images/generations", name)
        if name == "mask" and edit:
            raise invalid("Inpainting is not offered: send the image without a mask", "mask")
        raise invalid(f"Unrecognized request argument supplied: {name}", name, "unknown_parameter")

    if fields.get("stream") not in (None, False, "false"):
        raise invalid("Streaming is not offered: leave stream out", "stream", "unsupported_value")
    prompt = fields.get("prompt")
    if prompt is None:
        raise invalid("Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter")
    if not isinstance(prompt, str):
        raise invalid("Invalid type for 'prompt': expected a string.", "prompt", "invalid_type")

    model = fields.get("model")
    if model is not None and not isinstance(model, str):
        raise invalid("Invalid type for 'model': expected a string.", "model", "invalid_type")

    response_format = fields.get("response_format") or "url"
    if response_format not in RESPONSE_FORMATS:
        raise invalid(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}", "response_format")

    output_format = fields.get("output_format") or DEFAULT_OUTPUT_FORMAT
    if not isinstance(output_format, str) or output_format.lower() not in OUTPUT_FORMATS:
        raise invalid("output_format must be one of png, jpeg, webp", "output_format")

    inputs: dict[str, Any] = {"prompt": prompt, "output_format": OUTPUT_FORMATS[output_format.lower()]}
    size = fields.get("size")
    if size is not None and not isinstance(size, str):
        raise invalid(
            "Invalid type for 'size': expected a string such as '1024x1024'.", "size", "invalid_type"
        )
    try:
        choice = choose_size(size)
    except UnsupportedSize as exc:
        raise invalid(str(exc), "size", "unsupported_size") from None
    if choice is not None:
        inputs.update(aspect_ratio=choice.aspect_ratio, megapixels=choice.megapixels)
    if fields.get("n") is not None:
        inputs["num_outputs"] = fields["n"]
    if fields.get("output_compression") is not None:
        inputs["output_quality"] = fields["output_compression"]
    inputs.update({name: value for name, value in fields.items() if name in PASSED_THROUGH})
    return ImageRequest(model=model or None, input=inputs, response_format=response_format)
