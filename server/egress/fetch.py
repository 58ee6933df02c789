"""Fetching image URLs and posting webhooks under an address policy (SSRF protection).

Synchronous on purpose: called from worker processes and threads. No torch. Every resolved address
is vetted (private, loopback, link-local, metadata... refused unless allowed) and the connection is
made to exactly the vetted addresses through a custom httpcore network backend, so there is no
DNS-rebinding gap; redirects are followed by hand and vetted per hop; bodies are read raw under a
byte cap and an overall deadline. What is refused and why: docs/security.md.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import httpcore
import httpx

from pipelines.images import format_bytes, parse_data_url
from server.egress.allowlist import HostRule, IPAddress, normalize_host, parse_host_rule

__all__ = [
    "AddressPolicy",
    "DownloadInfo",
    "FetchError",
    "FetchStatusError",
    "IPAddress",
    "address_problem",
    "check_url",
    "download_to",
    "fetch_bytes",
    "load_image_source",
    "post_json",
]

USER_AGENT = "fluxserve/0.1"
_CHUNK = 64 * 1024
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})

_METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class FetchError(ValueError):
    """A URL could not be fetched or was refused; the message says which and why."""


class FetchStatusError(FetchError):
    """The server answered with an HTTP error status (``status``)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class AddressPolicy:
    """Where the server may connect when fetching image URLs and posting webhooks.

    ``allow_private`` lifts the refusal of loopback/private/link-local/CGNAT/... addresses, but not of
    the cloud metadata addresses: those are reachable only when an ``allowed_hosts`` IP or CIDR entry
    covers them explicitly. ``allowed_hosts`` entries (syntax: :mod:`server.egress.allowlist`) are host names
    (``images.internal``, ``*.corp.example``), IP addresses or CIDR networks, each optionally with a
    port: a host name matching a name entry may resolve to private addresses, and any address inside
    an IP/CIDR entry is allowed; an entry with a port allows that port only, one without allows every
    port. Every address a host resolves to must be allowed (public, or covered as above). Public
    addresses are allowed on every port: the list only lifts refusals. A malformed entry raises
    ValueError here (the config refuses it at load).
    """

    allow_private: bool = False
    allowed_hosts: list[str] = field(default_factory=list)
    timeout_s: float = 15
    max_bytes: int = 10 * 2**20
    max_redirects: int = 5
    _rules: list[HostRule] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._rules = [parse_host_rule(entry) for entry in self.allowed_hosts]

    def _address_rules(self, ip: IPAddress) -> list[HostRule]:
        return [rule for rule in self._rules if rule.covers_address(ip)]

    def _name_rules(self, host: str) -> list[HostRule]:
        return [rule for rule in self._rules if rule.covers_name(host)]


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def address_problem(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public address (``"a loopback address"``, ...), or None when it is."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        ip = ipaddress.IPv6Address(str(ip).split("%", 1)[0])
    if ip in _METADATA_ADDRESSES:
        return "a cloud metadata address"
    inner = _embedded_ipv4(ip)
    if inner is not None:
        problem = address_problem(inner)
        return f"{problem} (embedded in {ip})" if problem else None
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "a shared (CGNAT) address"
    if ip.is_reserved:  # before is_private: Python counts 240.0.0.0/4 as both
        return "a reserved address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "not a public address"
    return None


def _vet(ip: IPAddress, host: str, port: int, policy: AddressPolicy) -> str | None:
    """None if connecting to ``ip`` port ``port`` (reached through the URL host ``host``) is allowed,
    else the reason. IP/CIDR entries match ``ip`` (and the IPv4 address an IPv6 one embeds, so
    ``::ffff:127.0.0.1`` is 127.0.0.1); host-name entries match ``host``; both must match ``port``."""
    bare = ipaddress.ip_address(str(ip).split("%", 1)[0])
    inner = _embedded_ipv4(bare)
    candidates = [bare] if inner is None else [bare, inner]
    by_address = [rule for c in candidates for rule in policy._address_rules(c)]
    if any(rule.allows_port(port) for rule in by_address):
        return None  # an operator's explicit IP/CIDR entry: the only way to reach metadata addresses
    problem = address_problem(bare)
    if problem is None:
        return None
    if problem.startswith("a cloud metadata address"):  # also when embedded in an IPv6 address
        return _not_on_port(problem, port) if by_address else problem
    if policy.allow_private:
        return None
    by_name = policy._name_rules(host)
    if any(rule.allows_port(port) for rule in by_name):
        return None
    return _not_on_port(problem, port) if by_address or by_name else problem


def _not_on_port(problem: str, port: int) -> str:
    # The entry that covers the address names other ports; say so (not which: that is the operator's).
    return f"{problem}, not allowed on port {port}"


def _getaddrinfo(host: str, port: int) -> list[tuple[Any, ...]]:
    """The one place names are resolved (tests replace it)."""
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)


def _resolve(host: str, port: int, deadline: float | None) -> list[IPAddress]:
    literal = _parse_literal(host)
    if literal is not None:
        return [literal]
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["infos"] = _getaddrinfo(host, port)
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller's thread
            box["error"] = exc

    # getaddrinfo has no timeout of its own: run it in a daemon thread so the deadline holds.
    worker = threading.Thread(target=run, name="fluxserve-resolve", daemon=True)
    worker.start()
    worker.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
    if worker.is_alive():
        raise _Timeout()
    if "error" in box:
        exc = box["error"]
        if isinstance(exc, socket.gaierror | UnicodeError | OSError):
            raise FetchError(f"could not resolve host {host}") from None
        raise exc
    ips: list[IPAddress] = []
    for _family, _type, _proto, _canon, sockaddr in box["infos"]:
        try:
            ip = ipaddress.ip_address(sockaddr[0])
        except ValueError:
            continue
        if ip not in ips:
            ips.append(ip)
    if not ips:
        raise FetchError(f"could not resolve host {host}")
    return ips


def _parse_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


class _Timeout(Exception):
    """The overall deadline passed (turned into a FetchError naming the configured timeout)."""


def _resolve_and_vet(
    host: str, port: int, policy: AddressPolicy, what: str, deadline: float | None
) -> list[IPAddress]:
    ips = _resolve(host, port, deadline)
    for ip in ips:
        problem = _vet(ip, host, port, policy)
        if problem is not None:
            if _parse_literal(host) is not None:
                raise FetchError(f"{what} refused: {ip} is {problem}")
            raise FetchError(f"{what} refused: {host} resolves to {ip}, {problem}")
    return ips


def _parse_url(url: str | httpx.URL, what: str) -> httpx.URL:
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise FetchError(f"{what} is not a valid URL: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        raise FetchError(
            f"{what} refused: only http and https URLs are allowed (got {parsed.scheme or 'no'} scheme)"
        )
    if not parsed.host:
        raise FetchError(f"{what} refused: the URL has no host")
    return parsed


def _raw_host(url: httpx.URL) -> str:
    """The host exactly as httpcore will be asked to connect to it (IDNA-encoded, IPv6 unbracketed)."""
    return url.raw_host.decode("ascii")


def _port(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


def check_url(url: str, policy: AddressPolicy, *, what: str = "image URL") -> list[IPAddress]:
    """Vet ``url`` against ``policy`` and return its resolved addresses (all allowed).

    The scheme must be http or https; the host is resolved (``getaddrinfo``, which also turns forms
    like ``2130706433`` or ``0x7f.1`` into addresses) and refused if ANY address is not allowed.
    Raises :class:`FetchError` with a message naming the address and why.
    """
    parsed = _parse_url(url, what)
    deadline = time.monotonic() + policy.timeout_s
    try:
        return _resolve_and_vet(_raw_host(parsed), _port(parsed), policy, what, deadline)
    except _Timeout:
        raise FetchError(f"timed out after {policy.timeout_s:g} s resolving {parsed.host}") from None


# --- the pinned network backend --------------------------------------------------------------


class _DeadlineStream(httpcore.NetworkStream):
    """Clamps every read/write/TLS handshake to the overall deadline."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: float | None) -> None:
        self._inner = inner
        self._deadline = deadline

    def _clamp(self, timeout: float | None, exc_type: type[Exception]) -> float | None:
        if self._deadline is None:
            return timeout
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise exc_type("overall deadline passed")
        return left if timeout is None else min(timeout, left)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._clamp(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._clamp(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        tls = self._inner.start_tls(
            ssl_context, server_hostname, self._clamp(timeout, httpcore.ConnectTimeout)
        )
        return _DeadlineStream(tls, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _PinnedBackend(httpcore.NetworkBackend):
    """Connects only to vetted IP literals: the ones ``pin()`` recorded for a host, or, for a host it
    was not told about, the ones it resolves and vets itself right here."""

    def __init__(self, policy: AddressPolicy, what: str, deadline: float | None) -> None:
        self._policy = policy
        self._what = what
        self._deadline = deadline
        self._pinned: dict[tuple[str, int], list[IPAddress]] = {}
        self._inner = httpcore.SyncBackend()

    def pin(self, host: str, port: int, ips: list[IPAddress]) -> None:
        self._pinned[(normalize_host(host), port)] = ips

    def _clamp(self, timeout: float | None) -> float | None:
        if self._deadline is None:
            return timeout
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise httpcore.ConnectTimeout("overall deadline passed")
        return left if timeout is None else min(timeout, left)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        ips = self._pinned.get((normalize_host(host), port))
        if ips is None:
            try:
                ips = _resolve_and_vet(host, port, self._policy, self._what, self._deadline)
            except _Timeout:
                raise httpcore.ConnectTimeout("timed out resolving host") from None
        last_error: Exception | None = None
        for ip in ips:
            # Re-vet at the socket: whatever path led here, only an allowed address is connected.
            problem = _vet(ip, host, port, self._policy)
            if problem is not None:
                raise FetchError(f"{self._what} refused: {ip} is {problem}")
            try:
                stream = self._inner.connect_tcp(
                    str(ip),
                    port,
                    self._clamp(timeout),
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
                continue
            return _DeadlineStream(stream, self._deadline)
        assert last_error is not None
        raise last_error

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise FetchError(f"{self._what} refused: unix sockets are not allowed")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class _PinnedTransport(httpx.HTTPTransport):
    """httpx's own transport, with its connection pool built on :class:`_PinnedBackend`.

    ``HTTPTransport`` has no ``network_backend`` argument, so after the normal construction we replace
    its ``_pool`` (the attribute ``handle_request`` uses) with an identical pool on our backend.
    """

    def __init__(self, backend: _PinnedBackend) -> None:
        ssl_context = _ssl_context()
        super().__init__(verify=ssl_context, retries=0)
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=4,
            max_keepalive_connections=0,
            http1=True,
            http2=False,
            retries=0,
            network_backend=backend,
        )


_SSL_LOCK = threading.Lock()
_SSL_CONTEXT: ssl.SSLContext | None = None


def _ssl_context() -> ssl.SSLContext:
    """httpx's default verifying context (certifi CA bundle), built once: loading the bundle costs ~10 ms."""
    global _SSL_CONTEXT
    with _SSL_LOCK:
        if _SSL_CONTEXT is None:
            _SSL_CONTEXT = httpx.create_ssl_context()
        return _SSL_CONTEXT


def _vet_hop(
    backend: _PinnedBackend, url: httpx.URL, policy: AddressPolicy, what: str, deadline: float
) -> None:
    """Resolve and vet one hop's host, and pin the connection to the addresses just vetted."""
    host, port = _raw_host(url), _port(url)
    backend.pin(host, port, _resolve_and_vet(host, port, policy, what, deadline))


def _client(backend: _PinnedBackend, timeout_s: float) -> httpx.Client:
    return httpx.Client(
        transport=_PinnedTransport(backend),
        follow_redirects=False,
        trust_env=False,  # no proxies or .netrc from the environment
        timeout=httpx.Timeout(timeout_s),
        headers={"User-Agent": USER_AGENT},
    )


def _safe_url(url: httpx.URL) -> str:
    """The URL for messages: no credentials, no query (signed URLs carry secrets there)."""
    port = f":{url.port}" if url.port else ""
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{url.scheme}://{host}{port}{url.path}"


def _transport_error(exc: httpx.HTTPError, url: httpx.URL, timeout_s: float) -> FetchError:
    if isinstance(exc, httpx.TimeoutException):
        return FetchError(f"timed out after {timeout_s:g} s fetching {_safe_url(url)}")
    if isinstance(exc, httpx.ConnectError):
        return FetchError(f"could not connect to {url.host}: {exc}")
    if isinstance(exc, httpx.RemoteProtocolError | httpx.DecodingError):
        return FetchError(f"invalid HTTP response from {_safe_url(url)}: {exc}")
    return FetchError(f"request to {_safe_url(url)} failed: {exc}")


def _too_large(max_bytes: int) -> FetchError:
    return FetchError(f"image is larger than {format_bytes(max_bytes)}")


class _Hops:
    """Follows a URL's redirects by hand: every hop's host resolved, vetted and pinned, at most
    ``policy.max_redirects`` hops. ``current`` is the URL being fetched (for messages)."""

    def __init__(self, url: str, policy: AddressPolicy, what: str, *, https_only: bool = False) -> None:
        self.policy = policy
        self.what = what
        self.https_only = https_only
        self.start = self.current = self._target(_parse_url(url, what))

    def _target(self, url: httpx.URL) -> httpx.URL:
        if self.https_only and url.scheme != "https":
            raise FetchError(f"{self.what} refused: only https URLs are allowed ({_safe_url(url)})")
        return url

    def open(
        self,
        client: httpx.Client,
        backend: _PinnedBackend,
        deadline: float,
        headers: Mapping[str, str],
        origin_headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """The streamed response of the last hop (any status but a redirect); the caller closes it.
        ``origin_headers`` (credentials) go only to hops on the first URL's scheme, host and port:
        never to the CDN a redirect points at."""
        redirects = 0
        while True:
            _vet_hop(backend, self.current, self.policy, self.what, deadline)
            send = dict(headers)
            if origin_headers and _origin(self.current) == _origin(self.start):
                send.update(origin_headers)
            response = client.send(client.build_request("GET", self.current, headers=send), stream=True)
            if response.status_code not in _REDIRECT_CODES:
                return response
            try:
                location = response.headers.get("location")
                if not location:
                    raise FetchError(
                        f"HTTP {response.status_code} redirect without a Location "
                        f"from {_safe_url(self.current)}"
                    )
                redirects += 1
                if redirects > self.policy.max_redirects:
                    raise FetchError(
                        f"too many redirects (more than {self.policy.max_redirects}) "
                        f"from {_safe_url(self.start)}"
                    )
                try:
                    target = self.current.join(location)
                except (httpx.InvalidURL, ValueError) as exc:
                    raise FetchError(
                        f"invalid redirect Location from {_safe_url(self.current)}: {exc}"
                    ) from None
                self.current = self._target(_parse_url(target, self.what))
            finally:
                response.close()


def _origin(url: httpx.URL) -> tuple[str, str, int]:
    return url.scheme, url.host, _port(url)


@contextlib.contextmanager
def _fetch_errors(hops: _Hops, policy: AddressPolicy) -> Iterator[None]:
    """The deadline and httpx's transport errors, as FetchErrors naming the hop that failed."""
    try:
        yield
    except _Timeout:
        raise FetchError(
            f"timed out after {policy.timeout_s:g} s fetching {_safe_url(hops.current)}"
        ) from None
    except httpx.HTTPError as exc:
        raise _transport_error(exc, hops.current, policy.timeout_s) from None


def fetch_bytes(url: str, policy: AddressPolicy) -> bytes:
    """Download ``url`` (http/https) under ``policy``: every hop vetted and pinned, at most
    ``policy.max_redirects`` redirects, at most ``policy.max_bytes`` bytes (Content-Length checked
    first, then counted while reading), ``policy.timeout_s`` seconds overall. Raises :class:`FetchError`.
    """
    what = "image URL"
    deadline = time.monotonic() + policy.timeout_s
    backend = _PinnedBackend(policy, what, deadline)
    hops = _Hops(url, policy, what)
    with _fetch_errors(hops, policy), _client(backend, policy.timeout_s) as client:
        response = hops.open(client, backend, deadline, {"Accept-Encoding": "identity", "Accept": "image/*"})
        try:
            if not 200 <= response.status_code < 300:
                raise FetchError(f"HTTP {response.status_code} from {_safe_url(hops.current)}")
            chunks: list[bytes] = []
            _read_capped(response, policy.max_bytes, deadline, chunks.append, _too_large)
            return b"".join(chunks)
        finally:
            response.close()


@dataclass(frozen=True)
class DownloadInfo:
    """What :func:`download_to` fetched: the last hop's URL (no query), its size and content type."""

    url: str
    size: int
    content_type: str | None


def download_to(
    url: str,
    policy: AddressPolicy,
    sink: BinaryIO,
    *,
    max_bytes: int,
    what: str = "LoRA URL",
    headers: Mapping[str, str] | None = None,
    https_only: bool = False,
) -> DownloadInfo:
    """Stream ``url`` into ``sink`` under ``policy`` (the same vetting, pinning, redirects and
    ``policy.timeout_s`` overall deadline as :func:`fetch_bytes`), at most ``max_bytes`` bytes
    (Content-Length checked first, then the running total). ``headers`` (e.g. ``Authorization``) are
    sent to the first URL's origin only. ``https_only`` refuses plain http, on every hop. Raises
    :class:`FetchError` naming ``what``; the sink may then hold part of the body: discard it.
    """
    deadline = time.monotonic() + policy.timeout_s
    backend = _PinnedBackend(policy, what, deadline)
    hops = _Hops(url, policy, what, https_only=https_only)

    def too_large(cap: int) -> FetchError:
        return FetchError(f"{what} is larger than {format_bytes(cap)}")

    with _fetch_errors(hops, policy), _client(backend, policy.timeout_s) as client:
        response = hops.open(client, backend, deadline, {"Accept-Encoding": "identity"}, headers)
        try:
            if not 200 <= response.status_code < 300:
                at = f" (at {_safe_url(hops.current)})" if hops.current != hops.start else ""
                status = response.status_code
                raise FetchStatusError(f"{what} returned HTTP {status}{at}", status)
            size = _read_capped(response, max_bytes, deadline, sink.write, too_large)
            return DownloadInfo(_safe_url(hops.current), size, response.headers.get("content-type"))
        finally:
            response.close()


def _read_capped(
    response: httpx.Response,
    max_bytes: int,
    deadline: float,
    write: Callable[[bytes], object],
    too_large: Callable[[int], FetchError],
) -> int:
    """Hand the raw body to ``write`` chunk by chunk; the number of bytes read."""
    try:
        length = int(response.headers.get("content-length", ""))
    except ValueError:
        length = None  # absent or malformed: rely on counting
    if length is not None and length > max_bytes:
        raise too_large(max_bytes)
    received = 0
    for chunk in response.iter_raw(_CHUNK):
        received += len(chunk)
        if received > max_bytes:
            raise too_large(max_bytes)
        if time.monotonic() > deadline:
            raise _Timeout()
        write(chunk)
    return received


def load_image_source(url: str, policy: AddressPolicy, max_data_url_bytes: int) -> bytes:
    """The raw bytes of an img2img source: a ``data:`` URL is decoded (size-capped), an http(s) URL is
    fetched under ``policy``. Decode the result with :func:`pipelines.images.decode_image`.

    Raises :class:`FetchError` for URLs, or ``pipelines.images.InputImageError`` for bad data URLs
    (both are ``ValueError``).
    """
    if url[:5].lower() == "data:":
        return parse_data_url(url, max_data_url_bytes)
    return fetch_bytes(url, policy)


def post_json(
    url: str,
    payload: Any,
    headers: Mapping[str, str] | None,
    policy: AddressPolicy,
    timeout_s: float | None = None,
) -> int:
    """POST ``payload`` as JSON to ``url`` (a webhook) and return the HTTP status code.

    Same vetting and pinning as :func:`fetch_bytes`; redirects are not followed (a 3xx is returned as
    is); ``timeout_s`` (default ``policy.timeout_s``) bounds the whole exchange. The response body is not
    read. Raises :class:`FetchError` when refused, on timeout or when no connection could be made.
    """
    what = "webhook URL"
    timeout = policy.timeout_s if timeout_s is None else timeout_s
    deadline = time.monotonic() + timeout
    target = _parse_url(url, what)
    backend = _PinnedBackend(policy, what, deadline)
    body = json.dumps(payload, separators=(",", ":")).encode()
    send_headers = {"Content-Type": "application/json", **(dict(headers) if headers else {})}
    try:
        _vet_hop(backend, target, policy, what, deadline)
        with _client(backend, timeout) as client:
            with client.stream("POST", target, content=body, headers=send_headers) as response:
                return response.status_code
    except _Timeout:
        raise FetchError(f"timed out after {timeout:g} s posting to {_safe_url(target)}") from None
    except httpx.HTTPError as exc:
        raise _transport_error(exc, target, timeout) from None
