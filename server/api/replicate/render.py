"""Turning a stored Prediction into Replicate's JSON shapes: the prediction object (HTTP answers
and webhook bodies), the model and version objects, and Replicate's error body.

Each model has its Replicate name from the registry (``black-forest-labs/flux-dev`` by default),
with one version whose id is derived from that name (stable across restarts). A prediction
created with another version string keeps that string in its ``version`` field.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from server.api.context import RenderContext
from server.api.eachlabs.render import echo_input, iso
from server.predictions.model import CANCELLED, ERROR, PROCESSING, STARTING, SUCCESS, Prediction
from server.predictions.models import ModelEntry

API = "replicate"  # the value of Prediction.extra["api"] for predictions made on these routes
EVENTS = ("start", "output", "logs", "completed")
# Replicate: "By default, we will send requests to your webhook URL whenever there are new outputs
# or the prediction has finished."
DEFAULT_EVENTS = ("output", "completed")
VERSION_CREATED_AT = "2024-08-01T00:00:00.000Z"
COG_VERSION = "0.9.0"

STATUS = {
    STARTING: "starting",
    PROCESSING: "processing",
    SUCCESS: "succeeded",
    ERROR: "failed",
    CANCELLED: "canceled",
}

_TITLES = {
    400: "Bad request",
    401: "Unauthenticated",
    404: "Not found",
    409: "Conflict",
    413: "Request entity too large",
    422: "Input validation failed",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}


def replicate_status(status: str) -> str:
    return STATUS.get(status, status)


def prediction_object(ctx: RenderContext, pred: Prediction, *, status: str | None = None) -> dict[str, Any]:
    """Replicate's prediction object. ``status`` overrides the (mapped) status."""
    base_url = ctx.base_url
    urls = ctx.output_urls(pred)
    metrics: dict[str, Any] = {}
    if pred.predict_time is not None:
        metrics["predict_time"] = round(pred.predict_time, 3)
    if pred.completed_at is not None:
        metrics["total_time"] = round(max(0.0, pred.completed_at - pred.created_at), 3)
    body: dict[str, Any] = {
        "id": pred.id,
        "model": ctx.models.ref_of(pred.model),
        "version": pred.extra.get("version") or ctx.models.version_id_of(pred.model),
        "input": echo_input(pred.input),
        "logs": pred.logs,
        "output": urls if pred.status == SUCCESS and urls else None,
        "data_removed": pred.data_removed,
        "error": pred.error if pred.status == ERROR else None,
        "status": status or replicate_status(pred.status),
        "source": "api",
        "created_at": iso(pred.created_at),
        "started_at": iso(pred.started_at),
        "completed_at": iso(pred.completed_at),
        "urls": {
            "get": f"{base_url}/v1/predictions/{pred.id}",
            "cancel": f"{base_url}/v1/predictions/{pred.id}/cancel",
        },
        "metrics": metrics,
    }
    if pred.extra.get("api") == API and pred.webhook_url:
        body["webhook"] = pred.webhook_url
        body["webhook_events_filter"] = list(pred.extra.get("webhook_events_filter") or DEFAULT_EVENTS)
    return body


def openapi_schema(model: ModelEntry) -> dict[str, Any]:
    """The version's ``openapi_schema``: what clients read to learn the inputs and the output."""
    input_schema = model.input_schema()
    input_schema["title"] = "Input"
    return {
        "openapi": "3.1.0",
        "info": {"title": "fluxserve", "version": "0.1.0"},
        "paths": {},
        "components": {
            "schemas": {
                "Input": input_schema,
                "Output": {"type": "array", "items": {"type": "string", "format": "uri"}, "title": "Output"},
                "Status": {"type": "string", "enum": list(STATUS.values()), "title": "Status"},
            }
        },
    }


def version_object(model: ModelEntry) -> dict[str, Any]:
    return {
        "id": model.version_id,
        "created_at": VERSION_CREATED_AT,
        "cog_version": COG_VERSION,
        "openapi_schema": openapi_schema(model),
    }


def model_object(ctx: RenderContext, model: ModelEntry, *, run_count: int = 0) -> dict[str, Any]:
    return {
        "url": f"{ctx.base_url}/v1/models/{model.ref}",
        "owner": model.owner,
        "name": model.name,
        "description": f"{model.display_name} served by fluxserve.",
        "visibility": "public",
        "github_url": None,
        "paper_url": None,
        "license_url": "https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/LICENSE.md",
        "run_count": run_count,
        "cover_image_url": None,
        "default_example": None,
        "latest_version": version_object(model),
    }


def problem_response(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """Replicate's problem-details error body: ``{"detail", "status", "title", ...}``."""
    body: dict[str, Any] = {
        "detail": detail,
        "status": status,
        "title": title or _TITLES.get(status, "Error"),
    }
    body.update(extra)
    return JSONResponse(body, status_code=status, headers=headers)
