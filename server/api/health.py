"""/health-check (always 200, with a state) and /metrics (Prometheus)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response

from server.api.deps import app_state, authenticate
from server.api.eachlabs.render import iso
from server.api.notices import TINY_MODEL_NOTICE

router = APIRouter()


@router.get(
    "/health-check",
    summary="Server health",
    description="Always 200. `status`: STARTING while the model loads, READY, BUSY (every worker busy), "
    "SETUP_FAILED (with `reason`), UNHEALTHY (the prediction store is failing, e.g. its disk is full: "
    "`reason` and `store.error` say why), SHUTTING_DOWN. `store.status`: `ok`, or `failing` with `error` "
    "and `failing_since`. "
    "`auth`: `open` (no API key needed) or `keys`; "
    "`auth_changed_at` when a key created while the server ran switched it to keys.",
    tags=["health"],
)
async def health_check(request: Request) -> dict:
    state = app_state(request)
    try:
        counts = await asyncio.to_thread(state.store.counts_by_status)
        queue_depth: int | None = counts.get("starting", 0)
    except Exception as exc:  # noqa: BLE001 - the answer is always a 200; the store's failure is in it
        state.readiness.store_failed(exc)
        queue_depth = None
    # "open" (no key needed) or "keys"; auth_changed_at when a key created while running closed it.
    try:
        auth = "open" if await asyncio.to_thread(lambda: state.keyring.open) else "keys"
    except Exception as exc:  # noqa: BLE001 - the keys live in the database: a failure is the store's
        state.readiness.store_failed(exc)
        auth = "unknown"
    status, details = state.readiness.health()
    body = {"status": status, "queue_depth": queue_depth, "model": state.models.default.slug, **details}
    if state.readiness.serving_tiny_model:
        body["warning"] = TINY_MODEL_NOTICE
    if state.store_warning:
        body["store_warning"] = state.store_warning
    body["auth"] = auth
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
