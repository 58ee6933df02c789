"""Errors in the contract's shape: ``{"error": "...", "status": N, "details": ...}``.

Every failure a client can cause ends here with a 4xx; only a real server fault is a 500.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount

from server.predictions.errors import StoreUnreachable

log = logging.getLogger("fluxserve.api")


class ApiError(Exception):
    def __init__(self, status: int, error: str, details: Any = None, headers: dict[str, str] | None = None):
        super().__init__(error)
        self.status = status
        self.error = error
        self.details = details
        self.headers = headers


def error_response(
    status: int, error: str, details: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body: dict[str, Any] = {"error": error, "status": status}
    if details is not None:
        body["details"] = details
    return JSONResponse(body, status_code=status, headers=headers)


def unauthorized() -> ApiError:
    return ApiError(401, "Invalid or missing API key")


def not_found() -> ApiError:
    return ApiError(404, "Prediction not found")


HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> str:
    """Every method routed on the request's path, for a 405's ``Allow``. Starlette's own names
    only the methods of the first route matching the path (POST alone on ``/v1/predictions``,
    where GET is routed too). Each method is tried against the routes as the router would."""
    # A mount that took the request has moved root_path down to itself: match from the app's.
    app_root_path = request.scope.get("app_root_path", request.scope.get("root_path", ""))
    scope = {**request.scope, "root_path": app_root_path}
    allowed: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Mount):
            # A mount matches whatever the method; the mounts here serve static files (the docs
            # pages' assets), which answer GET and HEAD only.
            if route.matches(scope)[0] is Match.FULL:
                allowed |= {"GET", "HEAD"}
            continue
        allowed |= {m for m in HTTP_METHODS if route.matches({**scope, "method": m})[0] is Match.FULL}
    return ", ".join(m for m in HTTP_METHODS if m in allowed)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.error, exc.details, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = {}
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ()) if p not in ("query", "path", "header", "body")]
            details.setdefault(
                ".".join(loc) or "request", str(err.get("msg", "invalid")).removeprefix("Value error, ")
            )
        return error_response(400, "Invalid request", details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        messages = {404: "Not found", 405: "Method not allowed"}
        headers = exc.headers
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": allowed_methods(request)}
        message = messages.get(exc.status_code, str(exc.detail))
        return error_response(exc.status_code, message, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        state = getattr(request.app.state, "fluxserve", None)
        if state is not None and state.store.is_unreachable(exc):
            # A shared database restarting: the client retries; nothing it was told is lost.
            state.readiness.store_failed(exc)
            return error_response(
                503,
                "The prediction database cannot be reached; try again shortly",
                headers={"Retry-After": str(StoreUnreachable.RETRY_AFTER_S)},
            )
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "Internal server error")
