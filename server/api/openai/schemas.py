"""The OpenAI routes' bodies and answers, for the OpenAPI document. The routes parse bodies by hand
(``params.py``) so that every refusal has OpenAI's error shape; these models only describe them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _ContractExtras(BaseModel):
    """The contract's inputs a client may add (the SDK's ``extra_body``)."""

    seed: int | None = Field(None, ge=0, description="null or 0: a random seed; image i uses seed+i.")
    num_inference_steps: int | None = Field(None, ge=1, le=50, description="Denoising steps (28).")
    guidance: float | None = Field(None, ge=0, le=10, description="Distilled guidance scale (3.5).")
    go_fast: bool | None = Field(None, description="The fastest configured mode.")
    disable_safety_checker: bool | None = Field(None, description="Skip the NSFW filter, where allowed.")
    lora_weights: str | None = Field(None, max_length=2000, description="The LoRA face: the main adapter.")
    lora_scale: float | None = Field(None, ge=-1, le=3)
    extra_lora: str | None = Field(None, max_length=2000, description="The LoRA face: a second adapter.")
    extra_lora_scale: float | None = Field(None, ge=-1, le=3)


class _ImageFields(_ContractExtras):
    model: str | None = Field(
        None,
        max_length=200,
        description="A served model (`GET /openai/v1/models`) or a configured alias; default: the first.",
    )
    prompt: str = Field(min_length=1, max_length=10_000, description="Text to draw.")
    n: int | None = Field(None, ge=1, le=4, description="Images to make (1).")
    size: str | None = Field(
        None,
        max_length=20,
        description="`WxH` or `auto`: mapped onto the aspect-ratio table at 1 or 0.25 megapixels "
        "(README, OpenAI Images API); a size with no close ratio is refused.",
        examples=["1024x1024", "1792x1024", "512x512", "auto"],
    )
    response_format: Literal["url", "b64_json"] | None = Field(
        None, description="`url` (default) or `b64_json`."
    )
    output_format: Literal["png", "jpeg", "webp"] | None = Field(None, description="Default png.")
    output_compression: int | None = Field(None, ge=0, le=100, description="jpeg/webp quality (80).")
    quality: str | None = Field(None, max_length=20, description="Accepted and ignored.")
    style: str | None = Field(None, max_length=20, description="Accepted and ignored.")
    user: str | None = Field(None, max_length=200, description="Accepted and ignored.")
    background: str | None = Field(None, max_length=20, description="Accepted and ignored.")
    moderation: str | None = Field(None, max_length=20, description="Accepted and ignored.")


class ImageGenerationRequest(_ImageFields):
    """Body of ``POST /openai/v1/images/generations`` (and ``/v1/images/generations``)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"prompt": "a red fox in the snow", "size": "1024x1024", "n": 1},
                {"model": "flux-dev", "prompt": "a lighthouse", "size": "512x512", "seed": 7},
            ]
        },
    )


class ImageEditRequest(_ImageFields):
    """Form of ``POST /openai/v1/images/edits``: img2img from ``image`` (the output takes the source's
    size, scaled down to fit 1440x1440, sides rounded to 16)."""

    model_config = ConfigDict(extra="forbid")

    image: bytes = Field(description="PNG, JPEG or WEBP (`image[]` as newer SDKs send it works too).")
    prompt_strength: float | None = Field(
        None, ge=0, le=1, description="1.0 replaces the source fully (0.8)."
    )


class ImageData(BaseModel):
    url: str | None = Field(None, description="With `response_format: url`: where the image is served.")
    b64_json: str | None = Field(None, description="With `response_format: b64_json`: the file, base64.")


class ImagesResponse(BaseModel):
    created: int = Field(description="Unix seconds when the prediction was created.")
    data: list[ImageData]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorResponse(BaseModel):
    error: OpenAIErrorDetail


class ModelObject(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelObject]
