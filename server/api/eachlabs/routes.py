"""The Eachlabs routes: create, get, cancel, run-and-wait, list, models.

Every route answers with and without a trailing slash (no redirect). Bodies are parsed here
rather than by FastAPI so each error has the contract's shape and names the bad field.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from pipelines.images import data_url_size_problem
from pipelines.inputs import FluxInputs, InvalidInputs, parse_inputs
from server.api.deps import (
    KEY_REQUIRED,
    MAX_WAIT_S,
    app_state,
    authenticate,
    caller,
    check_rate,
    prefer_wait,
    too_many,
)
from server.api.eachlabs.render import prediction_body
from server.api.eachlabs.schemas import (
    CancelResponse,
    CreateRequest,
    CreateResponse,
    ErrorResponse,
    ExecutionsResponse,
    ModelInfo,
    ModelsResponse,
    PredictionResponse,
)
from server.api.errors import ApiError, not_found
from server.api.notices import TINY_MODEL_NOTICE
from server.api.openapi import prefer_header
from server.api.routing import both
from server.auth.keyring import Identity
from server.predictions.model import (
    ALL_STATUSES,
    CancelOutcome,
    InFlightLimitExceeded,
    ListFilter,
    Prediction,
)
from server.workers.supervisor import SETUP_FAILED

log = logging.getLogger("server.routes.eachlabs")  # the name it had before the move

router = APIRouter(tags=["predictions"], dependencies=KEY_REQUIRED)

WAIT_FALLBACK_POLL_S = 0.5  # re-read the store this often while waiting (changes made elsewhere)
IN_FLIGHT_RETRY_AFTER_S = 5
# `input` is stored and echoed in every answer; pydantic's JSON encoder gives up past 255 levels, so
# a deeper one would make each later read of the prediction (and the key's list) a 500.
MAX_INPUT_DEPTH = 32


def _nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether lists/objects in ``value`` nest more than ``limit`` levels (``value`` itself is level 1)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _non_finite_fields(value: dict[str, Any]) -> dict[str, str]:
    """Fields of ``input`` holding NaN or an infinity anywhere inside (JSON's ``NaN``, ``Infinity``,
    ``1e999``). Stored, they would make every later JSON answer carrying the input a 500."""
    bad = {}
    for name, item in value.items():
        stack = [item]
        while stack:
            current = stack.pop()
            if isinstance(current, float) and not math.isfinite(current):
                bad[str(name)] = "must be a finite number"
                break
            if isinstance(current, dict):
                stack.extend(current.values())
            elif isinstance(current, list):
                stack.extend(current)
    return bad


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


def _validate_webhook(body: dict[str, Any]) -> tuple[str | None, str | None]:
    url, secret = body.get("webhook_url"), body.get("webhook_secret")
    details = {}
    if url is not None and url != "":
        if not isinstance(url, str) or not re.match(r"(?i)https?://[^\s/]+", url) or len(url) > 2048:
            details["webhook_url"] = "must be an http(s) URL"
    else:
        url = None
    if secret is not None and (not isinstance(secret, str) or len(secret) > 1024):
        details["webhook_secret"] = "must be a string of at most 1024 characters"
    if details:
        raise ApiError(400, "Invalid input for model", details)
    return url, secret


async def create_prediction(
    request: Request, identity: Identity, body: Any, extra: dict[str, Any] | None = None
) -> Prediction:
    """Validate, check limits and queue one prediction. Shared by every create route."""
    state = app_state(request)
    status, details = state.supervisor.health()
    if status == SETUP_FAILED:
        raise ApiError(503, "Model failed to load; not accepting predictions", details.get("reason"))
    if not state.supervisor.accepting:
        raise ApiError(
            503, "Server is shutting down; not accepting predictions", headers={"Retry-After": "30"}
        )
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object", {"body": "expected a JSON object"})
    model = body.get("model")
    if model is None or model == "":
        raise ApiError(400, "model field is required", {"model": "required"})
    if not isinstance(model, str) or model != state.settings.model.name:
        raise ApiError(
            400,
            "Invalid input for model",
            {"model": f"unknown model {str(model)[:80]!r}; this server serves {state.settings.model.name!r}"},
        )
    if "input" not in body or body["input"] is None:
        raise ApiError(400, "Invalid input for model", {"input": "required"})
    if _nested_deeper_than(body["input"], MAX_INPUT_DEPTH):
        raise ApiError(
            400, "Invalid input for model", {"input": f"nested deeper than {MAX_INPUT_DEPTH} levels"}
        )
    try:
        inputs = parse_inputs(body["input"], state.settings.model.defaults)
    except InvalidInputs as exc:
        raise ApiError(400, "Invalid input for model", exc.details) from None
    non_finite = _non_finite_fields(body["input"])
    if non_finite:
        raise ApiError(400, "Invalid input for model", non_finite)
    # A data: URL's size is known now: refuse it here rather than store it and fail in the worker.
    too_large = (
        data_url_size_problem(inputs.image, state.settings.input_images.max_bytes) if inputs.image else None
    )
    if too_large:
        raise ApiError(400, "Invalid input for model", {"image": too_large})
    webhook_url, webhook_secret = _validate_webhook(body)

    check_rate(request, identity, "create")
    pred = Prediction(
        id=str(uuid.uuid4()),
        owner=identity.key_id,
        model=model,
        input=body["input"],
        created_at=time.time(),
        webhook_url=webhook_url,
        webhook_secret=webhook_secret,
        extra=extra or {},
    )
    limit = state.settings.limits.max_in_flight
    try:
        await asyncio.to_thread(state.store.create, pred, limit if limit > 0 else None)
    except InFlightLimitExceeded as exc:
        raise too_many(
            f"{exc.in_flight} predictions in flight; the limit is {exc.limit} per key",
            IN_FLIGHT_RETRY_AFTER_S,
        ) from None
    except Exception as exc:  # the store failed (disk full, database locked too long): nothing was made
        if not state.store.is_outage(exc):
            log.exception("could not store a new prediction")
        state.supervisor.store_failed(exc)  # an outage is logged once, when it begins
        raise ApiError(
            500, "Failed to create prediction", "the prediction could not be stored; try again"
        ) from None
    state.supervisor.store_working()
    state.supervisor.wake()
    return pred


@both(
    router,
    "post",
    "/v1/prediction",
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


async def wait_for_end(request: Request, prediction_id: str, timeout: float) -> Prediction | None:
    """Wait until the prediction is terminal or ``timeout`` passes, holding no thread."""
    state = app_state(request)
    deadline = time.monotonic() + timeout
    while True:
        pred = await asyncio.to_thread(state.store.get, prediction_id)
        remaining = deadline - time.monotonic()
        if pred is None or pred.terminal or remaining <= 0:
            return pred
        await state.events.wait(prediction_id, min(remaining, WAIT_FALLBACK_POLL_S))


@both(
    router,
    "post",
    "/v1/prediction/run",
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
    final = await wait_for_end(request, pred.id, state.settings.run_wait_timeout_s)
    return prediction_body(state.base_url, final or pred)


# -- get ------------------------------------------------------------------------------------


def requested_wait(request: Request, wait: float | None) -> float:
    """Seconds to hold a GET: ``?wait=n`` or ``Prefer: wait=n`` (at most 60)."""
    seconds = wait if wait is not None else prefer_wait(request, bare=None)
    if seconds is None or seconds != seconds:  # NaN
        return 0.0
    return max(0.0, min(MAX_WAIT_S, seconds))


async def owned_prediction(request: Request, identity: Identity, prediction_id: str) -> Prediction:
    state = app_state(request)
    if len(prediction_id) > 64:
        raise not_found()
    pred = await asyncio.to_thread(state.store.get, prediction_id)
    if pred is None or pred.owner != identity.key_id:
        raise not_found()  # another key's prediction is indistinguishable from none
    return pred


@both(
    router,
    "get",
    "/v1/prediction/{prediction_id}",
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
    pred = await owned_prediction(request, identity, prediction_id)
    seconds = requested_wait(request, wait)
    if seconds > 0 and not pred.terminal:
        pred = await wait_for_end(request, prediction_id, seconds) or pred
    return prediction_body(state.base_url, pred)


# -- cancel ---------------------------------------------------------------------------------


async def cancel_prediction(request: Request, identity: Identity, prediction_id: str) -> Prediction:
    state = app_state(request)
    pred = await owned_prediction(request, identity, prediction_id)
    outcome = await asyncio.to_thread(state.store.request_cancel, prediction_id)
    if outcome is CancelOutcome.NOT_FOUND:
        raise not_found()
    if outcome is CancelOutcome.ALREADY_FINISHED:
        # It may have ended since it was read above: name the status it ended with.
        ended = await asyncio.to_thread(state.store.get, prediction_id) or pred
        raise ApiError(409, f"Prediction already finished with status {ended.status}; it was left as it is")
    if outcome is CancelOutcome.REQUESTED:
        await state.supervisor.cancel(prediction_id)
    elif outcome is CancelOutcome.CANCELLED:
        # A queued prediction ends here, not in a worker: tell the end-of-prediction hooks
        # (Replicate's "completed" webhook is sent on cancel too).
        on_finished = getattr(state, "on_finished", None)
        ended = await asyncio.to_thread(state.store.get, prediction_id)
        if on_finished is not None and ended is not None:
            on_finished(ended)
    state.events.notify(prediction_id)
    return pred


@both(
    router,
    "post",
    "/v1/prediction/{prediction_id}/cancel",
    summary="Cancel a prediction",
    responses={
        200: {"model": CancelResponse},
        **{**ERRORS, **NOT_FOUND, 409: {"model": ErrorResponse, "description": "Already finished."}},
    },
    description="A queued prediction never runs; a running one stops "
    "at its next step and its images are discarded.",
)
async def cancel(request: Request, prediction_id: str, identity: Identity = Depends(caller)) -> dict:
    await cancel_prediction(request, identity, prediction_id)
    return {
        "status": "cancelled",
        "message": "Prediction canceled successfully",
        "predictionID": prediction_id,
    }


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
    )
    preds, total = await asyncio.to_thread(state.store.list, flt)
    return {
        "executions": [prediction_body(state.base_url, p) for p in preds],
        "total": total,
        "limit": limit,
        "offset": offset,
    }


# -- models ---------------------------------------------------------------------------------


def model_info(request: Request) -> dict:
    state = app_state(request)
    spec = state.settings.model
    info = {
        "slug": spec.name,
        "name": "FLUX.1 [dev]" if spec.name == "flux-dev" else spec.name,
        "description": "12B rectified-flow transformer for text-to-image and img2img "
        "(Black Forest Labs), served locally.",
        "version": "0.0.1",
        "input_schema": FluxInputs.model_json_schema(),
    }
    if state.supervisor.serving_tiny_model:
        info["warning"] = TINY_MODEL_NOTICE
    return info


@both(
    router, "get", "/v1/models", summary="Models served", responses={200: {"model": ModelsResponse}, **ERRORS}
)
async def list_models(request: Request, identity: Identity = Depends(caller)) -> dict:
    return {"models": [model_info(request)]}


@both(
    router,
    "get",
    "/v1/model",
    summary="One model with its input schema",
    responses={200: {"model": ModelInfo}, **{**ERRORS, 404: {"model": ErrorResponse}}},
)
async def get_model(
    request: Request, slug: str = Query(..., max_length=100), identity: Identity = Depends(caller)
) -> dict:
    state = app_state(request)
    if slug != state.settings.model.name:
        raise ApiError(404, "Model not found", {"slug": f"this server serves {state.settings.model.name!r}"})
    return model_info(request)


# Make CreateRequest part of the schema's components (the body is parsed by hand).
CREATE_REQUEST_SCHEMA = CreateRequest
