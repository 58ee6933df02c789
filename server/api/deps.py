"""Request dependencies shared by the route modules: the app state, the caller, the limits."""

from __future__ import annotations

import asyncio
import re

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPBearer

from server.api.errors import ApiError, unauthorized
from server.auth.keyring import Identity, extract_key
from server.services import AppState
from server.store.sqlite.db import STORE_ERRORS

# The two ways to present a key, declared for the OpenAPI document (its security schemes, the
# Authorize button of /docs). They never refuse a request themselves (auto_error=False):
# ``authenticate`` reads the key, so every route answers a missing key in its own error shape.
API_KEY_HEADER = APIKeyHeader(
    name="X-API-Key", scheme_name="ApiKey", auto_error=False, description="`X-API-Key: KEY`."
)
BEARER = HTTPBearer(
    scheme_name="Bearer",
    auto_error=False,
    description="`Authorization: Bearer KEY` (what Replicate's clients send; `Token KEY` works too).",
)
# The longest a request may be held waiting for its prediction's end (``?wait=n``, ``Prefer: wait``).
MAX_WAIT_S = 60.0
# RFC 7240: ``wait`` or ``wait=n``, n maybe quoted, then optional ``;parameters`` (ignored).
_PREFER_WAIT = re.compile(
    r"\s*wait\s*(?:=\s*\"?([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\"?)?\s*(?:;.*)?", flags=re.IGNORECASE | re.DOTALL
)

# ``dependencies=`` of the routers whose every route needs a key: either scheme will do.
KEY_REQUIRED = [Security(API_KEY_HEADER), Security(BEARER)]


def app_state(request: Request) -> AppState:
    """The app's parts (``server.services.AppState``), typed."""
    return request.app.state.fluxserve


async def authenticate(request: Request) -> Identity:
    """401 unless the request carries a valid key (or the server runs open)."""
    state = app_state(request)
    key = extract_key(request.headers)
    # Static keys are checked on the loop; only stored keys need the database (a thread hop).
    try:
        identity = state.keyring.static_identity(key) or await asyncio.to_thread(
            state.keyring.authenticate, key
        )
    except STORE_ERRORS as exc:
        # The stored keys live in the database: while it cannot be read the key is neither good nor
        # bad. A 503 the client may retry, not a 500 and not a 401 that would call its key wrong.
        state.readiness.store_failed(exc)
        raise ApiError(
            503,
            "Key store unavailable",
            f"the key store cannot be read ({exc})",
            headers={"Retry-After": "5"},
        ) from None
    if identity is None:
        raise unauthorized()
    return identity


def too_many(details: str, retry_after: int) -> ApiError:
    return ApiError(429, "too many requests", details, headers={"Retry-After": str(max(1, int(retry_after)))})


def check_rate(request: Request, identity: Identity, kind: str) -> None:
    """Count one request against the key's per-minute limit ('create' or 'read')."""
    state = app_state(request)
    limiter = state.create_limiter if kind == "create" else state.read_limiter
    decision = limiter.hit(identity.key_id)
    if not decision.allowed:
        what = "creates" if kind == "create" else "requests"
        raise too_many(f"rate limit of {decision.limit} {what} per minute exceeded", decision.retry_after_s)


async def caller(request: Request) -> Identity:
    """Authenticated and counted as a read."""
    identity = await authenticate(request)
    check_rate(request, identity, "read")
    return identity


def prefer_wait(request: Request, bare: float | None = MAX_WAIT_S) -> float | None:
    """Seconds asked for by ``Prefer: wait=n`` (not clamped), ``bare`` for a bare ``wait``, None
    without it (or with a value that is no number)."""
    for part in request.headers.get("prefer", "").split(","):
        match = _PREFER_WAIT.fullmatch(part)
        if match:
            return bare if match.group(1) is None else float(match.group(1))
    return None
