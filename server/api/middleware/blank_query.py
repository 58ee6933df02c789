"""Treat a blank query value as absent: ``/v1/executions?limit=&status=`` lists with the defaults.

Clients that fill a URL template (the contract writes the list route as
``?limit=&offset=&model=&status=&from=&to=``) send every parameter, blank or not. FastAPI would
refuse ``limit=`` as "not an integer", and take ``model=`` as a filter for the empty name. No
parameter of this API gives a blank value a meaning, so blanks are dropped before routing.
"""

from __future__ import annotations

from urllib.parse import unquote_plus

from starlette.types import ASGIApp, Receive, Scope, Send


def _is_blank(part: bytes) -> bool:
    _name, equals, value = part.partition(b"=")
    return bool(equals) and not unquote_plus(value.decode("latin-1")).strip()


def drop_blank_values(query_string: bytes) -> bytes:
    """The query string without its blank ``name=`` parameters (``a=&b=1&c`` → ``b=1&c``); the
    same object when there are none. The other parameters are kept byte for byte."""
    if b"=" not in query_string:
        return query_string
    parts = query_string.split(b"&")
    kept = [part for part in parts if not _is_blank(part)]
    if len(kept) == len(parts):
        return query_string
    return b"&".join(kept)


class BlankQueryMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("query_string"):
            cleaned = drop_blank_values(scope["query_string"])
            if cleaned is not scope["query_string"]:
                scope = {**scope, "query_string": cleaned}
        await self.app(scope, receive, send)
