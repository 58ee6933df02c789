"""OpenAI's error answers: ``{"error": {"message", "type", "param", "code"}}`` with OpenAI's status codes.

Everything an OpenAI route raises ends here: its own ``OpenAIError``, the API's ``ApiError`` (a bad key,
a rate limit) and the domain's errors. The official clients pick their exception class by the status
(400 BadRequestError, 401 AuthenticationError, 404 NotFoundError, 429 RateLimitError, 5xx
InternalServerError) and read ``error.code``/``error.param``.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse

from server.api.eachlabs.errors import api_error
from server.api.errors import ApiError
from server.predictions.errors import InvalidInput, NotAccepting, PredictionError

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"

# Where a contract input the service names sits in an OpenAI request (the rest keep their name).
PARAM_OF_INPUT = {
    "num_outputs": "n",
    "output_quality": "output_compression",
    "aspect_ratio": "size",
    "megapixels": "size",
    "input": None,
}


class OpenAIError(ApiError):
    """An error already in OpenAI's words. An ApiError, so the route helper (``routing.both``)
    hands it to ``render_error`` with the others."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,  # noqa: A002 - OpenAI's field name
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status, message, headers=headers)
        self.message = message
        self.type = type
        self.param = param
        self.code = code


def invalid(message: str, param: str | None, code: str | None = "invalid_value") -> OpenAIError:
    """A 400 naming the request parameter at fault."""
    return OpenAIError(400, message, param=param, code=code)


def error_response(err: OpenAIError) -> JSONResponse:
    body = {"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}}
    return JSONResponse(body, status_code=err.status, headers=err.headers)


def render_error(exc: PredictionError | ApiError) -> JSONResponse:
    """The OpenAI answer to what a route raises."""
    return error_response(openai_error(exc))


def openai_error(exc: PredictionError | ApiError) -> OpenAIError:
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, InvalidInput):
        name, reason = next(iter(exc.fields.items()), ("input", "invalid"))
        param = PARAM_OF_INPUT.get(name, name)
        message = "; ".join(f"{PARAM_OF_INPUT.get(k, k) or 'request'}: {v}" for k, v in exc.fields.items())
        return invalid(f"Invalid request: {message}", param)
    if isinstance(exc, NotAccepting):  # the model has no live worker, shutting down, store away
        detail = f"{exc.message}: {exc.reason}" if exc.reason else exc.message
        headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s else None
        return OpenAIError(503, detail, type=SERVER_ERROR, code="service_unavailable", headers=headers)
    err = exc if isinstance(exc, ApiError) else api_error(exc)
    return _from_api_error(err)


def _from_api_error(err: ApiError) -> OpenAIError:
    if err.status == 401:
        return OpenAIError(
            401,
            "Incorrect API key provided. Send it as `Authorization: Bearer <key>`.",
            code="invalid_api_key",
            headers=err.headers,
        )
    if err.status == 429:
        return OpenAIError(
            429,
            f"Rate limit reached: {_text(err.details) or err.error}",
            type="requests",
            code="rate_limit_exceeded",
            headers=err.headers,
        )
    detail = err.error if err.details is None else f"{err.error}: {_text(err.details)}"
    kind = SERVER_ERROR if err.status >= 500 else INVALID_REQUEST
    code = "service_unavailable" if err.status == 503 else None
    return OpenAIError(err.status, detail, type=kind, code=code, headers=err.headers)


def too_large(max_bytes: int) -> dict[str, Any]:
    """The body-size middleware's 413 for the OpenAI routes."""
    message = f"Request body too large: the limit is {max_bytes} bytes"
    return {
        "error": {"message": message, "type": INVALID_REQUEST, "param": None, "code": "request_too_large"}
    }


# The paths whose 413 is in OpenAI's shape (the app gives them to the body-size middleware).
TOO_LARGE_BY_PREFIX = {"/openai/": too_large, "/v1/images/": too_large}


def _text(details: Any) -> str:
    return details if isinstance(details, str) else json.dumps(details)
