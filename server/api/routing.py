"""Route registration shared by the route modules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter


def both(router: APIRouter, method: str, path: str, **kwargs: Any) -> Callable:
    """Register a route on ``router`` at ``path`` and ``path/`` (no redirect); only the first
    appears in the schema."""

    def register(fn: Callable) -> Callable:
        getattr(router, method)(path, **kwargs)(fn)
        slash = {k: v for k, v in kwargs.items() if k not in ("summary", "description")}
        getattr(router, method)(path + "/", include_in_schema=False, **slash)(fn)
        return fn

    return register
