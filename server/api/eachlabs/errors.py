"""The Eachlabs contract's answers to the domain's errors: ``{"error", "status", "details"}``."""

from __future__ import annotations

from starlette.responses import Response

from server.api.deps import too_many
from server.api.errors import ApiError, error_response, not_found
from server.predictions.errors import (
    AlreadyFinished,
    CreateFailed,
    InFlightLimitExceeded,
    InvalidInput,
    NotAccepting,
    NotFound,
    PredictionError,
    StillRunning,
)

IN_FLIGHT_RETRY_AFTER_S = 5


def api_error(exc: PredictionError) -> ApiError:
    """The domain's error as the Eachlabs contract states it."""
    if isinstance(exc, InvalidInput):
        return ApiError(400, "Invalid input for model", exc.fields)
    if isinstance(exc, InFlightLimitExceeded):
        return too_many(
            f"{exc.in_flight} predictions in flight; the limit is {exc.limit} per key",
            IN_FLIGHT_RETRY_AFTER_S,
        )
    if isinstance(exc, NotAccepting):
        headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s else None
        return ApiError(503, exc.message, exc.reason, headers=headers)
    if isinstance(exc, CreateFailed):
        return ApiError(500, "Failed to create prediction", str(exc))
    if isinstance(exc, NotFound):
        return not_found()
    if isinstance(exc, AlreadyFinished):
        return ApiError(409, f"Prediction already finished with status {exc.status}; it was left as it is")
    if isinstance(exc, StillRunning):
        return ApiError(409, f"Prediction is {exc.status}; cancel it first")
    raise TypeError(f"no Eachlabs answer for {type(exc).__name__}") from exc


def render_error(exc: PredictionError | ApiError) -> Response:
    """The route helper's renderer for the Eachlabs routes."""
    err = exc if isinstance(exc, ApiError) else api_error(exc)
    return error_response(err.status, err.error, err.details, err.headers)
