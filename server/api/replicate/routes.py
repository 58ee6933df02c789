"""Replicate-compatible routes: the same predictions, in Replicate's shapes (CONTRACT.md section 4).

Thin HTTP over the PredictionService: each route parses Replicate's body, calls the service and
renders Replicate's prediction object; domain errors become Replicate's ``{"detail", "status",
"title"}`` bodies in one place (``render_error``). What the official clients call, and the
decisions on models, ``Prefer: wait``, errors, cancel and list cursors: docs/replicate.md.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from pipelines.inputs import FluxInputs, FluxLoraInputs, FluxSchnellInputs
from server.api.deps import KEY_REQUIRED, MAX_WAIT_S, app_state, authenticate, caller, check_rate, prefer_wait
from server.api.eachlabs.errors import api_error
from server.api.eachlabs.routes import decode_json_body
from server.api.eachlabs.schemas import ErrorResponse
from server.api.errors import ApiError
from server.api.openapi import prefer_header
from server.api.replicate.render import (
    API,
    EVENTS,
    model_object,
    prediction_object,
    problem_response,
    version_object,
)
from server.api.routing import both
from server.predictions.errors import AlreadyFinished, InvalidInput, PredictionError
from server.predictions.model import WEBHOOK_SIGNER, ListFilter
from server.predictions.models import ModelEntry, ModelRegistry
from server.predictions.service import CreateRequest

router = APIRouter(tags=["replicate"], dependencies=KEY_REQUIRED)

PAGE_SIZE = 100
MAX_CURSOR_OFFSET = 10**9
BODY_FIELDS = frozenset(
    {"input", "version", "stream", "webhook", "webhook_completed", "webhook_events_filter"}
)


# -- plumbing -------------------------------------------------------------------------------


class ReplicateError(BaseModel):
    """Replicate's error body (for the OpenAPI document)."""

    detail: str
    status: int
    title: str
    invalid_fields: list[dict[str, str]] | None = None


class ReplicateModelCreate(BaseModel):
    """Body of a create on the model route (for the OpenAPI document; parsed by ``_check_body``)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"input": {"prompt": "a red fox in the snow", "aspect_ratio": "16:9"}}]
        },
    )

    input: FluxInputs | FluxLoraInputs | FluxSchnellInputs = Field(
        description="The model's inputs, as Replicate's model takes them (flux-dev-lora adds the LoRA "
        "fields; flux-schnell takes at most 4 steps and no guidance)."
    )
    webhook: str | None = Field(None, description="http(s) URL POSTed the prediction object on each event.")
    webhook_events_filter: list[Literal["start", "output", "logs", "completed"]] | None = Field(
        None, description="Events that call `webhook` (default `output` and `completed`)."
    )
    webhook_completed: str | None = Field(
        None, description="Replicate's older field: a webhook for the `completed` event only."
    )
    stream: bool | None = Field(None, description="Accepted and ignored: outputs are not streamed.")


class ReplicateVersionCreate(ReplicateModelCreate):
    """Body of ``POST /v1/predictions``: the model route's, with the version to run."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"version": "black-forest-labs/flux-dev", "input": {"prompt": "a red fox in the snow"}}
            ]
        },
    )

    version: str = Field(
        max_length=200,
        description="`black-forest-labs/<model>` (flux-dev, flux-dev-lora, flux-schnell: those configured), "
        "`black-forest-labs/<model>:<id>`, or a version id (an unknown one runs the first model).",
    )


def create_doc(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` of a create route: the body (parsed by hand, so FastAPI cannot see it)
    and the ``Prefer`` header."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        },
        "parameters": [
            prefer_header(
                "`wait` holds the request until the prediction ends, up to 60 s; `wait=n` up to n seconds "
                "(1-60). 201 when it ended in time, else 202 with `status: starting`. "
                "Without it the create answers 201 at once."
            )
        ],
    }


_ERROR_TEXT = {
    400: "Bad request (body not a JSON object, invalid cursor).",
    401: "Invalid or missing API token.",
    404: "No such prediction for this token, or not the model this server serves.",
    422: "Invalid input: `invalid_fields` names each one.",
    429: "Too many requests (per-minute or in-flight limit); see Retry-After.",
    503: "Not accepting predictions (model failed to load, shutting down).",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for the error statuses a route can answer (all in Replicate's shape,
    but 413, which the body-size middleware answers for every route in the Eachlabs shape)."""
    documented: dict[int | str, dict[str, Any]] = {
        code: {"model": ReplicateError, "description": _ERROR_TEXT[code]} for code in codes
    }
    documented[413] = {"model": ErrorResponse, "description": "Body too large."}
    return documented


CREATED = {
    201: {"description": "Created (and, with `Prefer: wait`, finished in time): the prediction."},
    202: {"description": "With `Prefer: wait`: still running when the wait ended; the prediction as it is."},
}


# Where a field the service names sits in Replicate's body.
_REQUEST_FIELDS = {"webhook_url": "webhook", "webhook_secret": "webhook", "input": ""}


def render_error(exc: PredictionError | ApiError) -> Response:
    """Replicate's answer to what a route raises: invalid input is a 422 naming each field; the
    rest keep their status in Replicate's problem body."""
    if isinstance(exc, InvalidInput):
        return invalid(
            [_invalid_field(_REQUEST_FIELDS.get(k, f"input.{k}"), str(v)) for k, v in exc.fields.items()]
        )
    err = exc if isinstance(exc, ApiError) else api_error(exc)
    if err.status == 401:
        return problem_response(401, "You did not pass a valid authentication token", headers=err.headers)
    if err.status == 404:
        return problem_response(404, "The requested prediction was not found.", headers=err.headers)
    detail = err.error
    if err.details is not None:
        detail += f": {err.details if isinstance(err.details, str) else json.dumps(err.details)}"
    return problem_response(err.status, detail, headers=err.headers)


def _invalid_field(field: str, description: str, kind: str | None = None) -> dict[str, str]:
    if kind is None:
        kind = "required" if description in ("required", "Field required") else "invalid"
    if description in ("required", "Field required"):
        description = f"{field.split('.')[-1] or 'input'} is required"
    return {"type": kind, "field": field, "description": description}


def invalid(fields: list[dict[str, str]], title: str = "Input validation failed") -> JSONResponse:
    detail = "".join(f"- {f['field'] or '(root)'}: {f['description']}\n" for f in fields)
    return problem_response(422, detail, title=title, invalid_fields=fields)


def requested_wait(request: Request) -> float:
    """Seconds asked for by ``Prefer: wait`` (60) or ``Prefer: wait=n`` (1..60); 0 without it."""
    seconds = prefer_wait(request)
    return 0.0 if seconds is None else min(MAX_WAIT_S, max(1.0, seconds))


async def read_body(request: Request) -> dict[str, Any] | JSONResponse:
    raw = await request.body()
    try:
        body = decode_json_body(raw) if raw.strip() else None
    except ValueError as exc:
        return problem_response(400, f"Invalid JSON body: {str(exc)[:200]}", title="Bad request")
    if not isinstance(body, dict):
        return problem_response(400, "The request body must be a JSON object", title="Bad request")
    return body


def _check_body(body: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Replicate's top-level checks; returns (the webhook part of ``extra``, problems)."""
    problems = [
        _invalid_field("", f"Additional property {name} is not allowed", "additional_property_not_allowed")
        for name in body
        if name not in BODY_FIELDS
    ]
    if body.get("input") is None:
        problems.append(_invalid_field("", "input is required", "required"))
    elif not isinstance(body["input"], dict):
        problems.append(_invalid_field("input", "Invalid type. Expected: object", "invalid_type"))
    webhook = body.get("webhook") or body.get("webhook_completed")
    extra: dict[str, Any] = {}
    raw_filter = body.get("webhook_events_filter")
    if not body.get("webhook") and body.get("webhook_completed"):
        raw_filter = raw_filter or ["completed"]  # the older field: the end only
    if raw_filter is not None:
        if not isinstance(raw_filter, list) or not all(isinstance(e, str) for e in raw_filter):
            problems.append(
                _invalid_field(
                    "webhook_events_filter", "Invalid type. Expected: array of strings", "invalid_type"
                )
            )
        else:
            unknown = [e for e in raw_filter if e not in EVENTS]
            if unknown:
                problems.append(
                    _invalid_field(
                        "webhook_events_filter",
                        f"unknown event(s) {', '.join(unknown)}; use {', '.join(EVENTS)}",
                        "enum",
                    )
                )
            elif raw_filter:
                extra["webhook_events_filter"] = [e for e in EVENTS if e in raw_filter]
    if webhook is not None and not isinstance(webhook, str):
        problems.append(_invalid_field("webhook", "Invalid type. Expected: string", "invalid_type"))
    extra["webhook"] = webhook
    return extra, problems


def _resolve_version(models: ModelRegistry, version: Any) -> tuple[ModelEntry, str] | JSONResponse:
    """The model and the version string to record for ``POST /v1/predictions`` (see the module
    docstring), or the 422 answer."""
    if version is None or version == "":
        return invalid([_invalid_field("version", "version is required", "required")])
    if not isinstance(version, str) or len(version) > 200:
        return invalid([_invalid_field("version", "Invalid type. Expected: string", "invalid_type")])
    ref, _, vid = version.partition(":")
    if "/" in ref:
        owner, _, name = ref.partition("/")
        model = models.by_ref(owner, name)
        if model is None:
            return problem_response(
                422,
                f"Invalid version or not permitted: this server serves {models.served_refs()}",
                title="Invalid version or not permitted",
            )
        return model, vid or model.version_id
    return models.by_version_id(version) or models.default, version


async def _create(request: Request, model: ModelEntry | None) -> JSONResponse:
    """A create on either route: ``model`` named by the route, or None to take it from ``version``."""
    state = app_state(request)
    identity = await authenticate(request)
    body = await read_body(request)
    if isinstance(body, JSONResponse):
        return body
    hooks, problems = _check_body(body)
    if problems:
        return invalid(problems)
    if model is None:
        resolved = _resolve_version(state.models, body.get("version"))
        if isinstance(resolved, JSONResponse):
            return resolved
        model, version = resolved
    else:
        version = model.version_id
    extra: dict[str, Any] = {"api": API}
    if version and version != model.version_id:
        extra["version"] = version
    webhook = hooks.get("webhook")
    if webhook:
        extra["webhook_events_filter"] = hooks.get("webhook_events_filter") or None
        # Whose secret signs its webhooks, for good: the receiver was set up with this key's
        # secret, and `keys adopt-open` may give the prediction another owner later.
        extra[WEBHOOK_SIGNER] = identity.key_id
        extra = {k: v for k, v in extra.items() if v is not None}
    draft = state.predictions.prepare(
        CreateRequest(
            owner=identity.key_id, model=model, input=body["input"], webhook_url=webhook or None, extra=extra
        )
    )
    check_rate(request, identity, "create")
    pred = await state.predictions.submit(draft)
    wait_s = requested_wait(request)
    if wait_s <= 0:
        return JSONResponse(prediction_object(state.render, pred), status_code=201)
    final = await state.predictions.wait_for_end(pred.id, wait_s) or pred
    if final.terminal:
        return JSONResponse(prediction_object(state.render, final), status_code=201)
    return JSONResponse(prediction_object(state.render, final, status="starting"), status_code=202)


def _named_model(request: Request, owner: str, name: str) -> ModelEntry | JSONResponse:
    """The model a route's ``owner/name`` names, or the 404 answer."""
    models = app_state(request).models
    model = models.by_ref(owner, name)
    if model is None:
        return problem_response(
            404,
            f"Model {owner}/{name} not found; this server serves {models.served_refs()}",
            title="Not found",
        )
    return model


# -- predictions ----------------------------------------------------------------------------


@both(
    router,
    "post",
    "/v1/models/{owner}/{name}/predictions",
    errors=render_error,
    summary="Create a prediction (Replicate, official model)",
    status_code=201,
    responses={**CREATED, **errors(400, 401, 404, 422, 429, 503)},
    description='Body `{"input": {...}, "webhook": ..., "webhook_events_filter": [...]}`. '
    "`Prefer: wait[=n]` holds the request up to n seconds (60 for a bare `wait`): "
    "201 when it ended, else 202.",
    openapi_extra=create_doc(ReplicateModelCreate),
)
async def create_for_model(request: Request, owner: str, name: str):
    model = _named_model(request, owner, name)
    if isinstance(model, JSONResponse):
        await authenticate(request)
        return model
    return await _create(request, model)


@both(
    router,
    "post",
    "/v1/predictions",
    errors=render_error,
    summary="Create a prediction (Replicate, with `version`)",
    status_code=201,
    responses={**CREATED, **errors(400, 401, 422, 429, 503)},
    description="`version`: `black-forest-labs/flux-dev`, `black-forest-labs/flux-dev:<id>`, "
    "or any version id (the model whose version it is, else the default one). Otherwise as the model route.",
    openapi_extra=create_doc(ReplicateVersionCreate),
)
async def create_with_version(request: Request):
    return await _create(request, None)


def _decode_cursor(cursor: str) -> tuple[float | None, int] | None:
    """(created_to, offset) from a cursor; None for anything this server did not write (a
    non-finite time or an offset SQLite cannot hold would otherwise be a 500)."""
    try:
        data = decode_json_body(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        created_to = data.get("t")
        offset = data["o"]
        if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= MAX_CURSOR_OFFSET:
            return None
        if created_to is not None:
            if isinstance(created_to, bool) or not isinstance(created_to, int | float):
                return None
            created_to = float(created_to)  # an int too large for SQLite: OverflowError, caught below
            if not math.isfinite(created_to):
                return None
        return created_to, offset
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError):
        return None


def _encode_cursor(created_to: float | None, offset: int) -> str:
    raw = json.dumps({"t": created_to, "o": offset}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@both(
    router,
    "get",
    "/v1/predictions",
    errors=render_error,
    summary="List predictions (Replicate), newest first",
    description=f"{PAGE_SIZE} per page; follow `next` (and `previous`) for the other pages.",
    responses=errors(400, 401, 429),
)
async def list_predictions(request: Request, cursor: str | None = None):
    state = app_state(request)
    identity = await caller(request)
    created_to: float | None = None
    offset = 0
    if cursor:
        decoded = _decode_cursor(cursor)
        if decoded is None:
            return problem_response(400, "Invalid cursor", title="Bad request")
        created_to, offset = decoded
    flt = ListFilter(owner=identity.key_id, limit=PAGE_SIZE, offset=offset, created_to=created_to)
    preds, total = await state.predictions.list(flt)
    if created_to is None and preds:
        created_to = preds[0].created_at  # pin the first page's newest: later creates do not shift pages
    base = f"{state.base_url}/v1/predictions"
    next_url = (
        f"{base}?cursor={_encode_cursor(created_to, offset + PAGE_SIZE)}"
        if offset + PAGE_SIZE < total
        else None
    )
    previous_url = (
        f"{base}?cursor={_encode_cursor(created_to, max(0, offset - PAGE_SIZE))}" if offset > 0 else None
    )
    return {
        "next": next_url,
        "previous": previous_url,
        "results": [prediction_object(state.render, p) for p in preds],
    }


@both(
    router,
    "get",
    "/v1/predictions/{prediction_id}",
    errors=render_error,
    summary="Get a prediction (Replicate)",
    responses=errors(401, 404, 429),
)
async def get_prediction(request: Request, prediction_id: str):
    state = app_state(request)
    identity = await caller(request)
    pred = await state.predictions.get(identity.key_id, prediction_id)
    return prediction_object(state.render, pred)


@both(
    router,
    "post",
    "/v1/predictions/{prediction_id}/cancel",
    errors=render_error,
    summary="Cancel a prediction (Replicate)",
    responses=errors(401, 404, 429),
)
async def cancel(request: Request, prediction_id: str):
    state = app_state(request)
    identity = await caller(request)
    pred = await state.predictions.get(identity.key_id, prediction_id)
    if not pred.terminal:
        try:
            await state.predictions.cancel(identity.key_id, prediction_id)
        except AlreadyFinished:  # it ended meanwhile: answer with it as it is
            pass
    # A queued prediction cancelled here ended now (its "completed" webhook follows from the
    # feed's end); a running one ends when its worker stops.
    current = await state.predictions.read(prediction_id) or pred
    return prediction_object(state.render, current)


# -- models and webhooks --------------------------------------------------------------------


@both(
    router,
    "get",
    "/v1/models/{owner}/{name}",
    errors=render_error,
    summary="The model (Replicate), with its latest version",
    responses=errors(401, 404, 429),
)
async def get_model(request: Request, owner: str, name: str):
    await caller(request)
    model = _named_model(request, owner, name)
    if isinstance(model, JSONResponse):
        return model
    return model_object(app_state(request).render, model)


@both(
    router,
    "get",
    "/v1/models/{owner}/{name}/versions",
    errors=render_error,
    summary="The model's versions (Replicate)",
    responses=errors(401, 404, 429),
)
async def list_versions(request: Request, owner: str, name: str):
    await caller(request)
    model = _named_model(request, owner, name)
    if isinstance(model, JSONResponse):
        return model
    return {"next": None, "previous": None, "results": [version_object(model)]}


@both(
    router,
    "get",
    "/v1/models/{owner}/{name}/versions/{version}",
    errors=render_error,
    summary="One version of the model (Replicate)",
    responses=errors(401, 404, 429),
)
async def get_version(request: Request, owner: str, name: str, version: str):
    await caller(request)
    model = _named_model(request, owner, name)
    if isinstance(model, JSONResponse):
        return model
    body = version_object(model)
    body["id"] = version  # one version per model: every version id names it
    return body


@both(
    router,
    "get",
    "/v1/webhooks/default/secret",
    errors=render_error,
    summary="The caller's webhook signing secret (Replicate)",
    description="Each key has its own secret (made on first use), as each Replicate account does: "
    "webhooks of the key's predictions are signed with it.",
    responses=errors(401, 429),
)
async def webhook_secret(request: Request):
    state = app_state(request)
    identity = await caller(request)
    return {"key": await asyncio.to_thread(state.webhooks.signing_secret, identity.key_id)}


@both(
    router,
    "post",
    "/v1/webhooks/default/secret/rotate",
    errors=render_error,
    summary="Replace the caller's webhook signing secret",
    description="Answers the new secret. The old one stops at once: every later delivery of this "
    "key's webhooks, retries of queued ones included, is signed with the new one (no overlap).",
    responses=errors(401, 429),
)
async def rotate_webhook_secret(request: Request):
    state = app_state(request)
    identity = await caller(request)
    return {"key": await asyncio.to_thread(state.webhooks.rotate_signing_secret, identity.key_id)}
