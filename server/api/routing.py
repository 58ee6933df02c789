"""Route registration shared by the route modules."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from server.api.errors import ApiError
from server.predictions.errors import PredictionError

# A contract's error answer: the domain's errors and the API's own (a bad key, a rate limit), in
# that contract's body shape.
ErrorRenderer = Callable[[PredictionError | ApiError], Response]


def both(
    router: APIRouter, method: str, path: str, *, errors: ErrorRenderer | None = None, **kwargs: Any
) -> Callable:
    """Register a route on ``router`` at ``path`` and ``path/`` (no redirect); only the first
    appears in the schema. ``errors``: the contract's renderer for what the route raises (the
    domain's errors, ApiError); without it they reach the app's handlers (the Eachlabs shape)."""

    def register(fn: Callable) -> Callable:
        endpoint = fn if errors is None else _answering_errors(fn, errors)
        getattr(router, method)(path, **kwargs)(endpoint)
        slash = {k: v for k, v in kwargs.items() if k not in ("summary", "description")}
        getattr(router, method)(path + "/", include_in_schema=False, **slash)(endpoint)
        return fn

    return register


def _answering_errors(fn: Callable, render: ErrorRenderer) -> Callable:
    @functools.wraps(fn)  # FastAPI reads the parameters (and their dependencies) through the wrapper
    async def endpoint(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except (PredictionError, ApiError) as exc:
            return render(exc)

    return endpoint
