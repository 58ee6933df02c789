"""The OpenAI Images API: ``images/generations``, ``images/edits`` and the model list.

OpenAI's clients take a base URL, ``http://host:port/openai/v1``, and append ``images/...`` and
``models``: every route is served under that prefix. The two image routes are also at the
contract's ``/v1/images/...``; ``/v1/models`` keeps its own (Eachlabs) shape, which is why the
prefix exists (README, OpenAI Images API).

Each request makes one normal prediction through the PredictionService (listed in
``/v1/executions``, limited like any create) and waits for its end, up to
``openai.wait_timeout_s``: then the prediction is cancelled and the answer is a 504. A client
that goes away while its prediction is still queued has it cancelled; one that goes away once it
runs leaves it to finish (its images stay in the key's history).
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.responses import Response

from pipelines.images import InputImageError, decode_image
from pipelines.safety import ALL_FLAGGED_MESSAGE
from server.api.deps import KEY_REQUIRED, app_state, authenticate, caller, check_rate
from server.api.eachlabs.routes import decode_json_body
from server.api.openai.errors import SERVER_ERROR, OpenAIError, invalid, render_error
from server.api.openai.params import ImageRequest, image_request
from server.api.openai.render import API, images_response, model_object
from server.api.openai.schemas import (
    ImageEditRequest,
    ImageGenerationRequest,
    ImagesResponse,
    ModelList,
    ModelObject,
    OpenAIErrorResponse,
)
from server.api.routing import both
from server.auth.keyring import Identity
from server.predictions.errors import AlreadyFinished, NotFound
from server.predictions.model import CANCELLED, INVALID_INPUT_IMAGE, STARTING, SUCCESS, Prediction
from server.predictions.models import ModelEntry
from server.predictions.service import CreateRequest
from server.services import AppState

router = APIRouter(tags=["openai"], dependencies=KEY_REQUIRED)

PREFIX = "/openai/v1"
# How often a waiting request looks whether its client is still there.
DISCONNECT_CHECK_S = 0.5
# The answers name the prediction they made, for a client that wants it (GET /v1/prediction/{id}).
PREDICTION_HEADER = "X-Prediction-Id"
IMAGE_FIELDS = ("image", "image[]")
_MEDIA_TYPES = ((b"\x89PNG", "image/png"), (b"\xff\xd8", "image/jpeg"), (b"RIFF", "image/webp"))

_ERROR_TEXT = {
    400: "Invalid request: `error.param` names the parameter (a size with no close aspect ratio, "
    "a missing prompt, an unknown argument, a mask); `content_policy_violation` when every image "
    "was flagged.",
    401: "Invalid or missing API key (`invalid_api_key`).",
    404: "No such model (`model_not_found`).",
    413: "Body too large.",
    429: "Too many requests (`rate_limit_exceeded`, per-minute or in-flight limit); see Retry-After.",
    500: "The prediction failed (the message says why).",
    503: "No live worker serves the model, or the server is not accepting predictions.",
    504: "The prediction did not end within `openai.wait_timeout_s`; it was cancelled.",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": OpenAIErrorResponse, "description": _ERROR_TEXT[code]} for code in codes}


def _body_doc(model: type, media_type: str) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {media_type: {"schema": ref}}}}


def _on_both_bases(path: str, method: str = "post", **kwargs: Any):
    """Register under the OpenAI base (``/openai/v1``) and at the contract's ``/v1`` path."""

    def register(fn):
        for base in (PREFIX, "/v1"):
            both(router, method, base + path, errors=render_error, **kwargs)(fn)
        return fn

    return register


# -- images -----------------------------------------------------------------------------------


@_on_both_bases(
    "/images/generations",
    summary="Create images (OpenAI Images API)",
    description="OpenAI's `images.generate`: waits for the prediction and answers its images as URLs "
    "or base64. The contract's inputs (`seed`, `num_inference_steps`, `guidance`, LoRA inputs...) may "
    "be added as extra fields.",
    response_model=ImagesResponse,
    responses=errors(400, 401, 404, 413, 429, 500, 503, 504),
    openapi_extra=_body_doc(ImageGenerationRequest, "application/json"),
)
async def generate(request: Request) -> Response:
    identity = await authenticate(request)
    fields = await _json_fields(request)
    return await _run(request, identity, image_request(fields), image=None)


@_on_both_bases(
    "/images/edits",
    summary="Edit an image (OpenAI Images API): img2img",
    description="OpenAI's `images.edit`, as img2img: the image (`image` or `image[]`, PNG, JPEG or "
    "WEBP) is redrawn from the prompt, `prompt_strength` (0.8) deciding how much of it changes. The "
    "output takes the source's size (scaled down to fit 1440x1440, sides rounded to 16). A `mask` "
    "is refused: inpainting is not offered.",
    response_model=ImagesResponse,
    responses=errors(400, 401, 404, 413, 429, 500, 503, 504),
    openapi_extra=_body_doc(ImageEditRequest, "multipart/form-data"),
)
async def edit(request: Request) -> Response:
    identity = await authenticate(request)
    fields, image = await _edit_fields(request)
    return await _run(request, identity, image_request(fields, edit=True), image=image)


# -- models -----------------------------------------------------------------------------------


@both(
    router,
    "get",
    PREFIX + "/models",
    errors=render_error,
    summary="The served models (OpenAI's list shape)",
    response_model=ModelList,
    responses=errors(401, 429),
)
async def list_models(request: Request) -> dict[str, Any]:
    await caller(request)
    models = app_state(request).models
    return {"object": "list", "data": [model_object(m.slug, m) for m in models.entries]}


@both(
    router,
    "get",
    PREFIX + "/models/{model_id}",
    errors=render_error,
    summary="One served model, by slug or alias (OpenAI's shape)",
    response_model=ModelObject,
    responses=errors(401, 404, 429),
)
async def get_model(request: Request, model_id: str) -> dict[str, Any]:
    await caller(request)
    return model_object(model_id, _model(app_state(request), model_id))


# -- the work ---------------------------------------------------------------------------------


def _model(state: AppState, name: str | None) -> ModelEntry:
    """The model an OpenAI ``model`` names (a slug or an alias); the default one for none."""
    if name is None:
        return state.models.default
    entry = state.models.by_slug(state.settings.openai.model_aliases.get(name, name))
    if entry is None:
        served = ", ".join([e.slug for e in state.models.entries] + list(state.settings.openai.model_aliases))
        raise OpenAIError(
            404,
            f"The model '{name[:80]}' does not exist; this server serves: {served}",
            param="model",
            code="model_not_found",
        )
    return entry


async def _run(request: Request, identity: Identity, asked: ImageRequest, image: str | None) -> Response:
    """Create the prediction, wait for its end, answer its images (or OpenAI's error)."""
    state = app_state(request)
    model = _model(state, asked.model)
    inputs = asked.input if image is None else {**asked.input, "image": image}
    draft = state.predictions.prepare(
        CreateRequest(owner=identity.key_id, model=model, input=inputs, extra={"api": API})
    )
    check_rate(request, identity, "create")
    pred = await state.predictions.submit(draft)
    final = await _wait(request, state, pred, state.settings.openai.wait_timeout_s)
    headers = {PREDICTION_HEADER: pred.id}
    if final is None:  # the client went away: nobody reads this
        return Response(status_code=499, headers=headers)
    if final.status == SUCCESS:
        body = await images_response(state.render, final, asked.response_format)
        return JSONResponse(body, headers=headers)
    raise _failure(final, headers)


async def _wait(request: Request, state: AppState, pred: Prediction, timeout: float) -> Prediction | None:
    """The prediction once it ended; None when the client went away first (a queued prediction is
    then cancelled). Past ``timeout`` it is cancelled and OpenAIError (504) raised."""
    deadline = time.monotonic() + timeout
    current = pred
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            await _cancel(state, current)
            raise OpenAIError(
                504,
                f"The image was not ready within {timeout:g} s; the prediction {pred.id} was cancelled",
                type=SERVER_ERROR,
                code="timeout",
                headers={PREDICTION_HEADER: pred.id},
            )
        current = await state.predictions.wait_for_end(pred.id, min(remaining, DISCONNECT_CHECK_S)) or current
        if current.terminal:
            return current
        if await request.is_disconnected():
            if current.status == STARTING:
                await _cancel(state, current)
            return None


async def _cancel(state: AppState, pred: Prediction) -> None:
    try:
        await state.predictions.cancel(pred.owner, pred.id)
    except (AlreadyFinished, NotFound):  # it ended meanwhile: nothing to stop
        pass


def _failure(pred: Prediction, headers: dict[str, str]) -> OpenAIError:
    if pred.status == CANCELLED:
        return OpenAIError(
            400, f"The prediction {pred.id} was cancelled", code="prediction_cancelled", headers=headers
        )
    message = pred.error or "The prediction failed"
    if message == ALL_FLAGGED_MESSAGE:
        return OpenAIError(400, message, code="content_policy_violation", headers=headers)
    if message.startswith(INVALID_INPUT_IMAGE):  # an image URL that could not be fetched or read
        return OpenAIError(400, message, param="image", code="invalid_image", headers=headers)
    return OpenAIError(500, message, type=SERVER_ERROR, headers=headers)


# -- bodies -----------------------------------------------------------------------------------


async def _json_fields(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        raise invalid("The request body must be a JSON object", None, "invalid_json")
    try:
        body = decode_json_body(raw)
    except ValueError as exc:
        raise invalid(f"The request body is not valid JSON: {str(exc)[:200]}", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object", None, "invalid_json")
    return body


async def _edit_fields(request: Request) -> tuple[dict[str, Any], str]:
    """The text fields of an edit and its image as a data: URL. A multipart form (what the SDKs
    send); a JSON body may give the image as an http(s) or data: URL in ``image`` instead."""
    if request.headers.get("content-type", "").lower().startswith("application/json"):
        fields = await _json_fields(request)
        image = fields.pop("image", None)
        if not isinstance(image, str) or not image:
            raise invalid(
                "Missing required parameter: 'image' (a file, or a URL)",
                "image",
                "missing_required_parameter",
            )
        return fields, image
    try:
        form = await request.form(max_files=4, max_fields=200)
    except (HTTPException, AssertionError, ValueError) as exc:
        detail = getattr(exc, "detail", None) or str(exc)
        raise invalid(
            f"The request body is not a valid multipart form: {detail}", None, "invalid_form"
        ) from None
    if "mask" in form:
        raise invalid("Inpainting is not offered: send the image without a mask", "mask")
    fields: dict[str, Any] = {}
    images: list[UploadFile] = []
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            if name not in IMAGE_FIELDS:
                raise invalid(f"Unexpected file in '{name[:40]}': only 'image' takes a file", name[:40])
            images.append(value)
        elif name not in IMAGE_FIELDS:  # an image sent as text (a URL) is taken below
            fields[name] = value
    if not images:
        url = form.get("image") or form.get("image[]")
        if isinstance(url, str) and url:
            return fields, url
        raise invalid("Missing required parameter: 'image'.", "image", "missing_required_parameter")
    if len(images) > 1:
        raise invalid("Send one image: several images are not combined here", "image")
    data = await images[0].read()
    return fields, await _image_data_url(request, data)


async def _image_data_url(request: Request, data: bytes) -> str:
    """The uploaded file as a data: URL, once it is known to be an image the worker can use (so a
    bad file is a 400 now, not a failed prediction later)."""
    limits = app_state(request).settings.input_images
    try:
        await asyncio.to_thread(decode_image, data, max_pixels=limits.max_pixels, max_bytes=limits.max_bytes)
    except InputImageError as exc:
        raise invalid(f"Invalid image: {exc}", "image", "invalid_image") from None
    media_type = next((t for magic, t in _MEDIA_TYPES if data.startswith(magic)), "image/png")
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"
