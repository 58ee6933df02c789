"""The Eachlabs routes: create, get, cancel, run-and-wait, list, models.

Every route answers with and without a trailing slash (no redirect). Bodies are parsed here
rather than by FastAPI so each error has the contract's shape and names the bad field.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response

from server.api.deps import KEY_REQUIRED, MAX_WAIT_S, app_state, authenticate, caller, check_rate, prefer_wait
from server.api.eachlabs.errors import render_error
from server.api.eachlabs.render import prediction_body
from server.api.eachlabs.schemas import (
    CancelResponse,
    CreateRequest,
    CreateResponse,
    DeleteResponse,
    ErrorResponse,
    ExecutionsResponse,
    ModelInfo,
    ModelsResponse,
    PredictionResponse,
)
from server.api.errors import ApiError
from server.api.notices import TINY_MODEL_NOTICE
from server.api.openapi import prefer_header
from server.api.routing import both
from server.auth.keyring import Identity
from server.predictions import service as predictions
from server.predictions.model import ALL_STATUSES, PREVIEWS, ListFilter, Prediction
from server.predictions.models import ModelEntry
from server.services import AppState

log = logging.getLogger("server.routes.eachlabs")  # the name it had before the move

router = APIRouter(tags=["predictions"], dependencies=KEY_REQUIRED)

ERRORS = {
    400: {"model": ErrorResponse, "description": "Bad request: `details` names each bad field and why."},
    401: {"model": ErrorResponse, "description": "Invalid or missing API key."},
    413: {"model": ErrorResponse, "description": "Body too large."},
    429: {
        "model": ErrorResponse,
        "description": "Too many requests (per-minute or in-flight limit); see Retry-After.",
    },
    503: {
        "model": ErrorResponse,
        "description": "Not accepting predictions (model failed to load, shutting down).",
    },
}
NOT_FOUND = {404: {"model": ErrorResponse, "description": "No such prediction for this key."}}


# -- create ---------------------------------------------------------------------------------


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def decode_json_body(raw: bytes) -> Any:
    """``json.loads`` for request bodies; every way a body can be bad is a ValueError.

    Besides syntax and encoding errors: nesting deep enough to exhaust the parser's recursion,
    and unpaired UTF-16 surrogates (``"\\ud800"``), which JSON's escapes allow but no UTF-8 text
    can hold (SQLite and the JSON answers would fail on them later, as a 500). ``NaN`` and
    ``Infinity`` are let through: the input parser names the field (see ``_non_finite_fields``).
    """
    try:
        value = json.loads(raw)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if _SURROGATE_ESCAPE.search(raw):  # rare: only then pay for the full check
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                "unpaired UTF-16 surrogate escape (\\ud800-\\udfff): text must be valid Unicode"
            ) from None
    return value


async def _read_json(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        raise ApiError(400, "Request body is required", {"body": "expected a JSON object"})
    try:
        return decode_json_body(raw)
    except ValueError as exc:  # UnicodeDecodeError is a ValueError too
        raise ApiError(400, "Invalid JSON body", {"body": str(exc)[:200]}) from None


async def create_prediction(request: Request, identity: Identity, body: Any) -> Prediction:
    """Check the body's shape, then create through the service (rate-counted once it is valid)."""
    state = app_state(request)
    state.predictions.ensure_accepting()  # the contract answers 503 before it looks at the body
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object", {"body": "expected a JSON object"})
    slug = body.get("model")
    if slug is None or slug == "":
        raise ApiError(400, "model field is required", {"model": "required"})
    model = state.models.by_slug(slug)
    if model is None:
        raise ApiError(
            400,
            "Invalid input for model",
            {"model": f"unknown model {str(slug)[:80]!r}; this server serves {state.models.served()}"},
        )
    extra = {}
    previews = body.get("previews")
    if previews is not None:
        if not isinstance(previews, bool):
            raise ApiError(400, "Invalid request", {"previews": "must be true or false"})
        extra[PREVIEWS] = previews
    draft = state.predictions.prepare(
        predictions.CreateRequest(
            owner=identity.key_id,
            model=model,
            input=body.get("input"),
            webhook_url=body.get("webhook_url"),
            webhook_secret=body.get("webhook_secret"),
            extra=extra,
        )
    )
    check_rate(request, identity, "create")
    return await state.predictions.submit(draft)


async def answer(state: AppState, pred: Prediction) -> dict:
    """A prediction's body, with where it stands (``progress``) while it has not ended."""
    return prediction_body(state.render, pred, await state.predictions.progress(pred))


@both(
    router,
    "post",
    "/v1/prediction",
    errors=render_error,
    summary="Create a prediction",
    responses={200: {"model": CreateResponse}, **ERRORS},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CreateRequest"}}},
        }
    },
)
async def create(request: Request, identity: Identity = Depends(authenticate)) -> dict:
    body = await _read_json(request)
    pred = await create_prediction(request, identity, body)
    return {"status": "success", "message": "Prediction created successfully", "predictionID": pred.id}


# -- run and wait ---------------------------------------------------------------------------


@both(
    router,
    "post",
    "/v1/prediction/run",
    errors=render_error,
    summary="Create a prediction and wait for its end",
    responses={200: {"model": PredictionResponse}, **ERRORS},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CreateRequest"}}},
        }
    },
    description="Returns the final prediction, or its current state after `run_wait_timeout_s`.",
)
async def run(request: Request, identity: Identity = Depends(authenticate)) -> dict:
    state = app_state(request)
    body = await _read_json(request)
    pred = await create_prediction(request, identity, body)
    final = await state.predictions.wait_for_end(pred.id, state.settings.run_wait_timeout_s) or pred
    return await answer(state, final)


# -- get ------------------------------------------------------------------------------------


def requested_wait(request: Request, wait: float | None) -> float:
    """Seconds to hold a GET: ``?wait=n`` or ``Prefer: wait=n`` (at most 60)."""
    seconds = wait if wait is not None else prefer_wait(request, bare=None)
    if seconds is None or seconds != seconds:  # NaN
        return 0.0
    return max(0.0, min(MAX_WAIT_S, seconds))


@both(
    router,
    "get",
    "/v1/prediction/{prediction_id}",
    errors=render_error,
    summary="Get a prediction",
    responses={200: {"model": PredictionResponse}, **{**ERRORS, **NOT_FOUND}},
    description="Add `?wait=n` or `Prefer: wait=n` (up to 60 s) "
    "to hold the request until the prediction ends.",
    openapi_extra={
        "parameters": [prefer_header("`wait=n`: as `?wait=n` (the query wins when both are given).")]
    },
)
async def get_prediction(
    request: Request,
    prediction_id: str,
    wait: float | None = Query(
        None, ge=0, le=MAX_WAIT_S, description="Hold up to this many seconds for the end."
    ),
    identity: Identity = Depends(caller),
) -> dict:
    state = app_state(request)
    pred = await state.predictions.get(identity.key_id, prediction_id)
    seconds = requested_wait(request, wait)
    if seconds > 0 and not pred.terminal:
        pred = await state.predictions.wait_for_end(prediction_id, seconds) or pred
    return await answer(state, pred)


# -- live preview ---------------------------------------------------------------------------


@both(
    router,
    "get",
    "/v1/prediction/{prediction_id}/preview",
    errors=render_error,
    summary="A running prediction's newest live preview",
    responses={
        200: {"content": {"image/webp": {}}, "description": "A small WebP image of the latent."},
        **{**ERRORS, 404: {"model": ErrorResponse, "description": "No such prediction, or no preview."}},
    },
    response_class=Response,
    description='Made every few steps when the create asked for previews (`"previews": true`); '
    "404 before the first one and once the prediction has ended. Its URL is the prediction's "
    "`progress.preview_url`.",
)
async def get_preview(request: Request, prediction_id: str, identity: Identity = Depends(caller)) -> Response:
    preview = await app_state(request).predictions.preview(identity.key_id, prediction_id)
    if preview is None:
        raise ApiError(404, "No preview", {"preview": "none yet, or the prediction has ended"})
    return Response(preview.data, media_type=preview.content_type, headers={"Cache-Control": "no-store"})


# -- cancel ---------------------------------------------------------------------------------


@both(
    router,
    "post",
    "/v1/prediction/{prediction_id}/cancel",
    errors=render_error,
    summary="Cancel a prediction",
    responses={
        200: {"model": CancelResponse},
        **{**ERRORS, **NOT_FOUND, 409: {"model": ErrorResponse, "description": "Already finished."}},
    },
    description="A queued prediction never runs; a running one stops "
    "at its next step and its images are discarded.",
)
async def cancel(request: Request, prediction_id: str, identity: Identity = Depends(caller)) -> dict:
    await app_state(request).predictions.cancel(identity.key_id, prediction_id)
    return {
        "status": "cancelled",
        "message": "Prediction canceled successfully",
        "predictionID": prediction_id,
    }


# -- delete ---------------------------------------------------------------------------------


@both(
    router,
    "delete",
    "/v1/prediction/{prediction_id}",
    errors=render_error,
    summary="Delete a prediction and its images",
    responses={
        200: {"model": DeleteResponse},
        **{**ERRORS, **NOT_FOUND, 409: {"model": ErrorResponse, "description": "Still queued or running."}},
    },
    description="Removes an ended prediction of this key and its output files for good. "
    "A queued or running one is refused (409): cancel it first.",
)
async def delete_prediction(
    request: Request, prediction_id: str, identity: Identity = Depends(caller)
) -> dict:
    await app_state(request).predictions.delete(identity.key_id, prediction_id)
    return {"status": "deleted", "message": "Prediction deleted", "predictionID": prediction_id}


# -- list -----------------------------------------------------------------------------------


def parse_time(name: str, value: str | None, *, end: bool = False) -> float | None:
    """Unix seconds or ISO 8601 (a date alone means midnight UTC; no zone means UTC).

    With ``end`` (an inclusive upper bound) an ISO time stands for the whole span it names at
    its own precision: ``2026-05-01`` the whole day, ``...T10:00:00`` that second,
    ``...T10:00:00.123Z`` that millisecond. So the ``created_at`` of an answer (written to the
    millisecond) used as ``to`` includes that prediction.
    """
    if value is None or value == "":
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if seconds != seconds or seconds in (float("inf"), float("-inf")):
            raise ApiError(400, "Invalid request", {name: "must be a finite number of unix seconds"})
        return seconds
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, "Invalid request", {name: "must be an ISO 8601 time or unix seconds"}) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    ts = parsed.timestamp()
    if end:
        ts += _iso_span(value) - 1e-6
    return ts


def _iso_span(value: str) -> float:
    """Seconds covered by an ISO 8601 time at the precision it is written with."""
    match = re.match(r"\d{4}-?\d\d-?\d\d(?:[T ](\d\d)(?::?(\d\d)(?::?(\d\d)(?:[.,](\d+))?)?)?)?", value)
    if match is None or match.group(1) is None:
        return 86400.0
    if match.group(2) is None:
        return 3600.0
    if match.group(3) is None:
        return 60.0
    if match.group(4) is None:
        return 1.0
    return 10.0 ** -min(len(match.group(4)), 6)


@both(
    router,
    "get",
    "/v1/executions",
    errors=render_error,
    summary="List this key's predictions, newest first",
    responses={200: {"model": ExecutionsResponse}, **ERRORS},
)
async def list_executions(
    request: Request,
    limit: int = Query(20, ge=1, le=100, description="Page size: 1 to 100 (a larger one is a 400)."),
    offset: int = Query(0, ge=0, le=10**9),
    model: str | None = Query(None, max_length=100),
    status: str | None = Query(None, description="starting, processing, success, error or cancelled"),
    created_from: str | None = Query(None, alias="from", description="ISO 8601 or unix seconds, inclusive"),
    created_to: str | None = Query(
        None,
        alias="to",
        description="ISO 8601 or unix seconds, inclusive (an ISO time covers "
        "the day, second or millisecond it names)",
    ),
    q: str | None = Query(
        None, max_length=500, description="Only predictions whose prompt contains this text (any case)"
    ),
    identity: Identity = Depends(caller),
) -> dict:
    state = app_state(request)
    if status is not None and status not in ALL_STATUSES:
        raise ApiError(400, "Invalid request", {"status": f"must be one of {', '.join(ALL_STATUSES)}"})
    flt = ListFilter(
        owner=identity.key_id,
        limit=limit,
        offset=offset,
        status=status,
        model=model,
        created_from=parse_time("from", created_from),
        created_to=parse_time("to", created_to, end=True),
        q=q or None,
    )
    preds, total = await state.predictions.list(flt)
    bodies = await asyncio.gather(*(answer(state, p) for p in preds))
    return {
        "executions": list(bodies),
        "total": total,
        "limit": limit,
        "offset": offset,
    }


# -- models ---------------------------------------------------------------------------------


def model_info(request: Request, model: ModelEntry) -> dict:
    info = {
        "slug": model.slug,
        "name": model.display_name,
        "description": model.description,
        "version": model.version,
        "input_schema": model.input_schema(),
    }
    if app_state(request).readiness.serving_tiny_model:
        info["warning"] = TINY_MODEL_NOTICE
    return info


@both(
    router,
    "get",
    "/v1/models",
    errors=render_error,
    summary="Models served",
    responses={200: {"model": ModelsResponse}, **ERRORS},
)
async def list_models(request: Request, identity: Identity = Depends(caller)) -> dict:
    return {"models": [model_info(request, model) for model in app_state(request).models.entries]}


@both(
    router,
    "get",
    "/v1/model",
    errors=render_error,
    summary="One model with its input schema",
    responses={200: {"model": ModelInfo}, **{**ERRORS, 404: {"model": ErrorResponse}}},
)
async def get_model(
    request: Request, slug: str = Query(..., max_length=100), identity: Identity = Depends(caller)
) -> dict:
    models = app_state(request).models
    model = models.by_slug(slug)
    if model is None:
        raise ApiError(404, "Model not found", {"slug": f"this server serves {models.served()}"})
    return model_info(request, model)


# Make CreateRequest part of the schema's components (the body is parsed by hand).
CREATE_REQUEST_SCHEMA = CreateRequest
