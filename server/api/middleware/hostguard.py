"""Which Host names are served, and which sites may change state, while the server runs open.

In open mode (no API key) only loopback Host names (plus ``server.allowed_hosts`` and
``public_url``'s host) are served, and state-changing requests from a foreign ``Origin`` (or
``Sec-Fetch-Site``) get 403, so neither a cross-site page nor a DNS-rebinding name can use a
server bound to localhost. With keys, ``server.allowed_hosts`` alone applies. The rules and why:
docs/security.md.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from server.egress.allowlist import normalize_host, parse_host_name
from server.store.sqlite.db import STORE_ERRORS

if TYPE_CHECKING:
    from server.auth.keyring import KeyRing

log = logging.getLogger("fluxserve")

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_SHOWN_CHARS = 100  # how much of a refused Host or Origin the error body repeats


def validate_host_pattern(value: str) -> str:
    """One ``server.allowed_hosts`` entry, normalised: ``name``, ``*.domain`` or ``*``; an IP
    address as ``ipaddress`` writes it. Names follow ``input_images.allowed_hosts``' grammar
    (:func:`server.egress.allowlist.parse_host_name`: lower case, IDNA-encoded, no trailing dot).

    Raises ValueError naming what is wrong (a scheme, a port, a path, an empty entry).
    """
    pattern = value.strip()
    if not pattern:
        raise ValueError("a host name is blank")
    if pattern == "*":
        return pattern
    if "://" in pattern or "/" in pattern:
        raise ValueError(f"{value!r} is not a host name: give the name only (no scheme or path)")
    try:
        return str(ipaddress.ip_address(pattern.removeprefix("[").removesuffix("]")))
    except ValueError:
        pass
    name = parse_host_name(pattern)
    if name is None:
        raise ValueError(f"{value!r} is not a host name: use `name`, `*.domain` or `*`, without a port")
    return f"*{name}" if name.startswith(".") else name


def split_host(value: str) -> tuple[str, int | None] | None:
    """``Host`` header value to (lower-case name without brackets or trailing dot, port), or None."""
    try:
        parts = urlsplit("//" + value.strip())
        name, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not name or parts.path or parts.query or parts.fragment or parts.username is not None:
        return None
    return normalize_host(name), port


def is_loopback_name(name: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _matches(pattern: str, name: str) -> bool:
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return name.endswith(pattern[1:])
    if ":" in pattern:  # an IPv6 address: compare parsed, so any spelling matches
        try:
            return ipaddress.ip_address(name) == ipaddress.ip_address(pattern)
        except ValueError:
            return False
    return name == pattern


Origin = tuple[str, str, int]  # scheme, host name, port (the scheme's default when not given)


def _parse_origin(value: str) -> Origin | None:
    try:
        parts = urlsplit(value.strip())
        name, port = parts.hostname, parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if not name or scheme not in DEFAULT_PORTS:
        return None
    return scheme, normalize_host(name), DEFAULT_PORTS[scheme] if port is None else port


@dataclass(frozen=True)
class HostPolicy:
    """The Host names served and the origins trusted, from the settings."""

    patterns: tuple[str, ...] = ()  # server.allowed_hosts, then public_url's host
    explicit: bool = False  # server.allowed_hosts was given: the Host rule holds with keys too
    public_origin: Origin | None = None
    tls_at_proxy: bool = False  # public_url is https and this server speaks plain http

    @classmethod
    def from_settings(
        cls, allowed_hosts: Iterable[str], public_url: str | None, *, tls_enabled: bool = False
    ) -> HostPolicy:
        allowed = list(allowed_hosts)
        patterns = [validate_host_pattern(h) for h in allowed]
        public_origin = _parse_origin(public_url) if public_url else None
        if public_origin is not None:
            patterns.append(validate_host_pattern(public_origin[1]))
        tls_at_proxy = public_origin is not None and public_origin[0] == "https" and not tls_enabled
        return cls(tuple(dict.fromkeys(patterns)), bool(allowed), public_origin, tls_at_proxy)

    def host_allowed(self, name: str) -> bool:
        return is_loopback_name(name) or any(_matches(p, name) for p in self.patterns)

    def origin_is_own(self, origin: str, host: tuple[str, int | None], scheme: str) -> bool:
        """True when ``origin`` is public_url's, or the request's own: same scheme, name and port,
        a port not given being its own scheme's default (``Host: localhost`` over http is port
        80, ``https://localhost`` port 443: another server)."""
        parsed = _parse_origin(origin)
        if parsed is None:  # "null" (sandboxed frames, file: pages) or garbage
            return False
        if parsed == self.public_origin:
            return True
        origin_scheme, name, port = parsed
        # Behind a TLS proxy (public_url https, no TLS here) a request may arrive as http from a
        # page whose origin is https, unless the proxy sends X-Forwarded-Proto (uvicorn then sets
        # the request's scheme from it).
        schemes = {scheme, "https"} if self.tls_at_proxy and scheme == "http" else {scheme}
        if origin_scheme not in schemes:
            return False
        host_name, host_port = host
        if host_port is None:
            host_port = DEFAULT_PORTS[origin_scheme]
        return (name, port) == (host_name, host_port)


def _shown(value: str) -> str:
    return value if len(value) <= _SHOWN_CHARS else value[:_SHOWN_CHARS] + "…"


class HostGuardMiddleware:
    """Refuses foreign Host names and cross-site writes (see the module docstring), 403 in the
    contract's error shape. Asks the key ring for the mode only when a request would be refused
    in open mode, so ordinary requests never wait for the store; if the store cannot be read then,
    503 (Retry-After): the request is neither refused as open mode's nor served as keyed mode's."""

    def __init__(self, app: ASGIApp, *, policy: HostPolicy, keyring: KeyRing) -> None:
        self.app = app
        self.policy = policy
        self.keyring = keyring

    async def _open(self) -> bool:
        if self.keyring.known_closed:  # latched: no store read
            return False
        return await asyncio.to_thread(lambda: self.keyring.open)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            refusal = await self._refusal(scope)
        except STORE_ERRORS as exc:
            # Whether keys are needed is unknown: neither refuse (403 would claim open mode) nor
            # serve what open mode would refuse. A retry once the store reads again is answered.
            why = f"the key store cannot be read ({exc}): whether this request needs an API key is unknown"
            log.warning("answered %s %s with 503: %s", scope["method"], scope["path"], why)
            await _answer(scope, receive, send, 503, "Key store unavailable", why, {"Retry-After": "5"})
            return
        if refusal is not None:
            error, why = refusal
            log.info("refused %s %s: %s", scope["method"], scope["path"], why)
            await _answer(scope, receive, send, 403, error, why)
            return
        await self.app(scope, receive, send)

    async def _refusal(self, scope: Scope) -> tuple[str, str] | None:
        """(error, details) of a 403 for this request, or None to serve it. Reads the key store
        (and so may raise one of ``STORE_ERRORS``) only for a request open mode would refuse."""
        headers = Headers(scope=scope)
        raw_host = headers.get("host")
        if raw_host is None:  # HTTP/1.0 without Host: the address the server listens on
            server = scope.get("server") or ("", None)
            host = (str(server[0]).lower(), server[1])
        else:
            host = split_host(raw_host)
        if (host is None or not self.policy.host_allowed(host[0])) and (
            self.policy.explicit or await self._open()
        ):
            shown = _shown(raw_host or "")
            why = (
                f"Host {shown!r} is not served: add it to server.allowed_hosts"
                if self.policy.explicit
                else f"Host {shown!r} is not served: a server without API keys answers only loopback names "
                "(localhost, 127.0.0.1, [::1]); add the name to server.allowed_hosts to serve it"
            )
            return "Host not allowed", why
        if scope["method"] in UNSAFE_METHODS and host is not None:
            origin = headers.get("origin")
            if origin is not None:
                foreign = not self.policy.origin_is_own(origin, host, scope.get("scheme", "http"))
                source = f"Origin {_shown(origin)!r}"
            else:  # browsers that send no Origin still say where the request came from
                foreign = headers.get("sec-fetch-site", "").lower() in ("cross-site", "same-site")
                source = "a request from another site (Sec-Fetch-Site)"
            if foreign and await self._open():
                why = (
                    f"{source} is not this server's own: a server without API keys accepts POST, PUT, "
                    "PATCH and DELETE only from its own pages and from clients that send no Origin"
                )
                return "Cross-site request refused", why
        return None


async def _answer(
    scope: Scope,
    receive: Receive,
    send: Send,
    status: int,
    error: str,
    details: str,
    headers: dict[str, str] | None = None,
) -> None:
    from server.api.errors import error_response

    await error_response(status, error, details, headers)(scope, receive, send)
