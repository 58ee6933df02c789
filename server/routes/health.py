"""/health-check (always 200, with a state) and /metrics (Prometheus)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response

from server.deps import app_state
from server.loading_notice import TINY_MODEL_NOTICE

router = APIRouter()


@router.get(
    "/health-check",
    summary="Server health",
    description="Always 200. `status`: STARTING while the model loads, READY, BUSY (every worker busy), "
    "SETUP_FAILED (with `reason`), SHUTTING_DOWN.",
    tags=["health"],
)
async def health_check(request: Request) -> dict:
    state = app_state(request)
    status, details = state.supervisor.health()
    counts = await asyncio.to_thread(state.store.counts_by_status)
    body = {"status": status, "queue_depth": counts.get("starting", 0), "model": state.settings.model.name, **details}
    if state.supervisor.serving_tiny_model:
        body["warning"] = TINY_MODEL_NOTICE
    if state.store_warning:
        body["store_warning"] = state.store_warning
    return body


@router.get("/metrics", summary="Prometheus metrics", tags=["health"], response_class=Response)
async def metrics(request: Request) -> Response:
    state = app_state(request)
    data = await asyncio.to_thread(state.metrics.render)
    return Response(data, media_type="text/plain; version=0.0.4; charset=utf-8")
