"""Refuse request bodies over the configured size with 413, before they are read into memory."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The refusal's JSON body for a limit in bytes, in the shape of the contract a path belongs to.
TooLargeBody = Callable[[int], dict[str, Any]]


def eachlabs_too_large(max_bytes: int) -> dict[str, Any]:
    return {"error": "Request body too large", "status": 413, "details": f"the limit is {max_bytes} bytes"}


class BodyTooLarge(Exception):
    pass


class BodySizeLimitMiddleware:
    """Checks Content-Length up front and counts streamed (chunked) bodies as they arrive."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, bodies_by_prefix: Mapping[str, TooLargeBody] | None = None
    ) -> None:
        """``bodies_by_prefix``: the refusal's body for paths under a prefix (another contract's
        shape); every other path gets the Eachlabs one."""
        self.app = app
        self.max_bytes = max_bytes
        self.bodies_by_prefix = dict(bodies_by_prefix or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_large = int(value) > self.max_bytes
                except ValueError:
                    too_large = False
                if too_large:
                    await self._refuse(scope, send)
                    return
        received = 0
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not response_started:
                await self._refuse(scope, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        path = scope.get("path", "")
        make = next(
            (make for prefix, make in self.bodies_by_prefix.items() if path.startswith(prefix)),
            eachlabs_too_large,
        )
        body = json.dumps(make(self.max_bytes)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
