"""/health-check (always 200, with a state) and /metrics (Prometheus)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response

from server.deps import app_state, authenticate
from server.loading_notice import TINY_MODEL_NOTICE
from server.render import iso

router = APIRouter()


@router.get(
    "/health-check",
    summary="Server health",
    description="Always 200. `status`: STARTING while the model loads, READY, BUSY (every worker busy), "
    "SETUP_FAILED (with `reason`), SHUTTING_DOWN. `auth`: `open` (no API key needed) or `keys`; "
    "`auth_changed_at` when a key created while the server ran switched it to keys.",
    tags=["health"],
)
async def health_check(request: Request) -> dict:
    state = app_state(request)
    status, details = state.supervisor.health()
    counts = await asyncio.to_thread(state.store.counts_by_status)
    body = {"status": status, "queue_depth": counts.get("starting", 0), "model": state.settings.model.name, **details}
    if state.supervisor.serving_tiny_model:
        body["warning"] = TINY_MODEL_NOTICE
    # "open" (no key needed) or "keys"; auth_changed_at when a key created while running closed it.
    body["auth"] = "open" if await asyncio.to_thread(lambda: state.keyring.open) else "keys"
    if state.keyring.mode_changed_at is not None:
        body["auth_changed_at"] = iso(state.keyring.mode_changed_at)
    return body


@router.get("/metrics", summary="Prometheus metrics", tags=["health"], response_class=Response)
async def metrics(request: Request) -> Response:
    state = app_state(request)
    if state.settings.metrics.require_key:
        await authenticate(request)  # 401 without a valid key
    data = await asyncio.to_thread(state.metrics.render)
    return Response(data, media_type="text/plain; version=0.0.4; charset=utf-8")
