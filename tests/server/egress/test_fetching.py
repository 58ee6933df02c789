"""Fetching image URLs and posting webhooks under the address policy (server/egress/fetch.py).

A real HTTP server runs on 127.0.0.1 (and, where the system allows binding it, a second on 127.0.0.2 to
exercise the per-redirect check against an address that would really answer).
"""

from __future__ import annotations

import base64
import io
import ipaddress
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import httpcore
import pytest
from PIL import Image

from server.egress import fetch as fetching
from server.egress.fetch import (
    AddressPolicy,
    FetchError,
    address_problem,
    check_url,
    fetch_bytes,
    load_image_source,
    post_json,
)


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (3, 2), "red").save(buf, "PNG")
    return buf.getvalue()


PNG = _png()
BIG_BODY = b"x" * 5000


class Handler(BaseHTTPRequestHandler):
    hooks: list[tuple[dict[str, str], bytes]] = []

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def _send(
        self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, length=True
    ) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        if parts.path == "/png":
            self._send(200, PNG, {"Content-Type": "image/png"})
        elif parts.path == "/redirect":
            self._send(302, headers={"Location": query["to"][0]})
        elif parts.path == "/loop":
            self._send(302, headers={"Location": "/loop"})
        elif parts.path == "/slow":
            # Headers at once, then one byte every 50 ms for 5 s: no single read ever times out, only
            # an overall deadline stops it.
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            try:
                for _ in range(100):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.05)
            except (BrokenPipeError, ConnectionResetError):
                pass
        elif parts.path == "/big":
            self._send(200, BIG_BODY)
        elif parts.path == "/big-no-length":
            self._send(200, BIG_BODY, length=False)  # HTTP/1.0: the body ends when the connection closes
        else:
            self._send(404, b"not found")

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        Handler.hooks.append((dict(self.headers), body))
        if self.path == "/hook-redirect":
            self._send(302, headers={"Location": "/hook"})
        else:
            self._send(204)


def _serve(host: str) -> Iterator[str]:
    server = ThreadingHTTPServer((host, 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    yield from _serve("127.0.0.1")


@pytest.fixture(scope="module")
def other_base() -> Iterator[str]:
    try:
        probe = socket.socket()
        probe.bind(("127.0.0.2", 0))
        probe.close()
    except OSError:
        pytest.skip("cannot bind 127.0.0.2 on this system")
    yield from _serve("127.0.0.2")


@pytest.fixture
def no_connect(monkeypatch):
    """Fail the test if any socket connection is attempted."""

    def refuse(*args, **kwargs):
        raise AssertionError("a connection was attempted")

    monkeypatch.setattr(httpcore.SyncBackend, "connect_tcp", refuse)


@pytest.fixture
def fake_dns(monkeypatch):
    """Make ``fetching`` resolve names from a table: {name: [answers, ...]} (one answer list per call,
    the last one repeating). Returns the list of names looked up."""
    calls: list[str] = []
    table: dict[str, list[list[str]]] = {}

    def resolve(host, port):
        calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        answers = table[host][min(len(calls) - 1, len(table[host]) - 1)]
        out = []
        for ip in answers:
            family = socket.AF_INET6 if ":" in ip else socket.AF_INET
            sockaddr = (ip, port, 0, 0) if family == socket.AF_INET6 else (ip, port)
            out.append((family, socket.SOCK_STREAM, 6, "", sockaddr))
        return out

    monkeypatch.setattr(fetching, "_getaddrinfo", resolve)
    return table, calls


ALLOW_LOCAL = AddressPolicy(allowed_hosts=["127.0.0.1"])


# --- the address policy -------------------------------------------------------------------------


def test_loopback_url_is_refused_by_default(base, no_connect):
    with pytest.raises(FetchError, match=r"^image URL refused: 127\.0\.0\.1 is a loopback address$"):
        fetch_bytes(f"{base}/png", AddressPolicy())


def test_allow_private_fetches_a_local_url(base):
    assert fetch_bytes(f"{base}/png", AddressPolicy(allow_private=True)) == PNG


@pytest.mark.parametrize("entry", ["127.0.0.1", "127.0.0.0/8"])
def test_allowed_hosts_ip_or_cidr_fetches_a_local_url(base, entry):
    assert fetch_bytes(f"{base}/png", AddressPolicy(allowed_hosts=[entry])) == PNG


@pytest.mark.parametrize(
    "url,why",
    [
        ("http://[::1]:8080/x.png", r"::1 is a loopback address"),
        ("http://169.254.169.254/latest/meta-data/", r"169\.254\.169\.254 is a cloud metadata address"),
        ("http://[fd00:ec2::254]/", r"fd00:ec2::254 is a cloud metadata address"),
        ("http://10.0.0.1/", r"10\.0\.0\.1 is a private address"),
        ("http://192.168.1.1/", r"192\.168\.1\.1 is a private address"),
        ("http://[fc00::1]/", r"fc00::1 is a private address"),
        ("http://169.254.1.1/", r"169\.254\.1\.1 is a link-local address"),
        ("http://[fe80::1]/", r"fe80::1 is a link-local address"),
        ("http://100.64.0.1/", r"100\.64\.0\.1 is a shared \(CGNAT\) address"),
        ("http://0.0.0.0/", r"0\.0\.0\.0 is an unspecified address"),
        ("http://224.0.0.1/", r"224\.0\.0\.1 is a multicast address"),
        ("http://240.0.0.1/", r"240\.0\.0\.1 is a reserved address"),
        ("http://[::ffff:127.0.0.1]/", r"is a loopback address \(embedded in ::ffff:7f00:1\)"),
        ("http://[64:ff9b::a00:1]/", r"is a private address \(embedded in"),
    ],
)
def test_non_public_addresses_are_refused_without_connecting(url, why, no_connect):
    with pytest.raises(FetchError, match=r"^image URL refused: .*" + why):
        fetch_bytes(url, AddressPolicy())


def test_metadata_address_is_refused_even_with_allow_private(no_connect):
    with pytest.raises(FetchError, match="cloud metadata address"):
        fetch_bytes("http://169.254.169.254/latest/meta-data/", AddressPolicy(allow_private=True))


def test_metadata_address_can_be_allowed_only_by_an_explicit_ip_entry():
    assert check_url("http://169.254.169.254/", AddressPolicy(allowed_hosts=["169.254.169.254"])) == [
        ipaddress.ip_address("169.254.169.254")
    ]


def test_hostname_resolving_to_loopback_is_refused(no_connect):
    with pytest.raises(
        FetchError, match=r"^image URL refused: localhost resolves to .*, a loopback address$"
    ):
        fetch_bytes("http://localhost:9/x.png", AddressPolicy())


def test_decimal_form_of_loopback_is_refused(no_connect):
    # getaddrinfo turns 2130706433 into 127.0.0.1; the check is on what it resolves to.
    with pytest.raises(FetchError, match=r"refused: 2130706433 resolves to 127\.0\.0\.1, a loopback address"):
        fetch_bytes("http://2130706433/", AddressPolicy())


def test_host_with_any_private_address_is_refused(fake_dns, no_connect):
    table, _ = fake_dns
    table["mixed.example"] = [["93.184.216.34", "10.1.2.3"]]
    with pytest.raises(FetchError, match=r"mixed\.example resolves to 10\.1\.2\.3, a private address"):
        fetch_bytes("http://mixed.example/x.png", AddressPolicy())


def test_unresolvable_host_is_a_clear_error(fake_dns, no_connect):
    with pytest.raises(FetchError, match=r"^could not resolve host nowhere\.example$"):
        fetch_bytes("http://nowhere.example/x.png", AddressPolicy())


def test_allowed_hostname_entry_allows_its_private_addresses(base, fake_dns):
    table, _ = fake_dns
    table["images.internal"] = [["127.0.0.1"]]
    table["other.internal"] = [["127.0.0.1"]]
    port = base.rsplit(":", 1)[1]
    policy = AddressPolicy(allowed_hosts=["images.internal"])
    assert fetch_bytes(f"http://images.internal:{port}/png", policy) == PNG
    with pytest.raises(FetchError, match="refused"):
        check_url(f"http://other.internal:{port}/png", AddressPolicy(allowed_hosts=["images.internal"]))


def test_connects_to_the_vetted_address_without_resolving_again(base, fake_dns):
    # First answer is allowed; any later lookup would rebind to an unroutable private address.
    table, calls = fake_dns
    table["rebind.example"] = [["127.0.0.1"], ["10.255.255.1"]]
    port = base.rsplit(":", 1)[1]
    assert fetch_bytes(f"http://rebind.example:{port}/png", ALLOW_LOCAL) == PNG
    assert calls == ["rebind.example"]


def test_socket_level_check_refuses_a_host_nobody_vetted_beforehand(base, fake_dns):
    # The backend is the last line of defence: even a request that skipped the per-hop check is
    # resolved and vetted inside connect, and the refusal comes out of httpx as a FetchError.
    table, _ = fake_dns
    table["sneaky.example"] = [["127.0.0.1"]]
    port = base.rsplit(":", 1)[1]
    backend = fetching._PinnedBackend(AddressPolicy(), "image URL", None)
    with fetching._client(backend, 5) as client:
        with pytest.raises(FetchError, match=r"sneaky\.example resolves to 127\.0\.0\.1, a loopback address"):
            client.get(f"http://sneaky.example:{port}/png")


def test_check_url_returns_the_resolved_addresses(base):
    assert check_url(f"{base}/png", ALLOW_LOCAL) == [ipaddress.ip_address("127.0.0.1")]


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x.png", "gopher://example.com/"])
def test_non_http_schemes_are_refused(url, no_connect):
    with pytest.raises(FetchError, match="only http and https URLs are allowed"):
        fetch_bytes(url, AddressPolicy(allow_private=True))


def test_public_addresses_have_no_problem():
    assert address_problem(ipaddress.ip_address("93.184.216.34")) is None
    assert address_problem(ipaddress.ip_address("2606:4700:4700::1111")) is None


# --- redirects ----------------------------------------------------------------------------------


def test_redirect_within_allowed_addresses_is_followed(base):
    assert fetch_bytes(f"{base}/redirect?to=/png", ALLOW_LOCAL) == PNG


def test_redirect_to_a_refused_address_is_refused(base, other_base):
    target = f"{other_base}/png"
    url = f"{base}/redirect?to={target}"
    # Control: the target really answers when the policy allows it ...
    assert fetch_bytes(url, AddressPolicy(allowed_hosts=["127.0.0.1", "127.0.0.2"])) == PNG
    # ... and is refused at the hop when only the first address is allowed.
    with pytest.raises(FetchError, match=r"^image URL refused: 127\.0\.0\.2 is a loopback address$"):
        fetch_bytes(url, ALLOW_LOCAL)


def test_redirect_to_a_non_http_scheme_is_refused(base):
    with pytest.raises(FetchError, match="only http and https"):
        fetch_bytes(f"{base}/redirect?to=file:///etc/passwd", ALLOW_LOCAL)


def test_too_many_redirects_are_refused(base):
    with pytest.raises(FetchError, match=r"too many redirects \(more than 3\)"):
        fetch_bytes(f"{base}/loop", AddressPolicy(allowed_hosts=["127.0.0.1"], max_redirects=3))


# --- allow-list entries and ports ---------------------------------------------------------------
# An entry with a port allows that port only, one without allows every port; the same rule holds for
# the first URL and every redirect hop, matched on the address connected (numeric spellings and
# IPv4-mapped IPv6 are the IPv4 address) or, for host-name entries, on the URL's host name.


@pytest.fixture(scope="module")
def second_port() -> Iterator[str]:
    """Another server on 127.0.0.1, on another port: what a redirect might aim at."""
    yield from _serve("127.0.0.1")


def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


IP_ENTRIES_WITH_PORT = [
    "127.0.0.1:{port}",
    "127.0.0.0/8:{port}",
    "[::ffff:127.0.0.1]:{port}",
    "[::ffff:127.0.0.0/104]:{port}",
    "2130706433:{port}",
    "0x7f000001:{port}",
]


@pytest.mark.parametrize("entry", IP_ENTRIES_WITH_PORT)
def test_ip_or_cidr_entry_with_a_port_allows_that_port(base, entry):
    policy = AddressPolicy(allowed_hosts=[entry.format(port=_port_of(base))])
    assert fetch_bytes(f"{base}/png", policy) == PNG


@pytest.mark.parametrize("entry", IP_ENTRIES_WITH_PORT)
def test_ip_or_cidr_entry_with_a_port_refuses_another_port(base, second_port, entry, no_connect):
    policy = AddressPolicy(allowed_hosts=[entry.format(port=_port_of(base))])
    other = _port_of(second_port)
    with pytest.raises(
        FetchError,
        match=rf"^image URL refused: 127\.0\.0\.1 is a loopback address, not allowed on port {other}$",
    ):
        fetch_bytes(f"{second_port}/png", policy)


@pytest.mark.parametrize("entry", ["images.internal:{port}", "IMAGES.Internal.:{port}", "*.internal:{port}"])
def test_host_name_entry_with_a_port_allows_that_port_only(base, fake_dns, entry):
    table, _ = fake_dns
    table["images.internal"] = [["127.0.0.1"]]
    port = _port_of(base)
    policy = AddressPolicy(allowed_hosts=[entry.format(port=port)])
    assert fetch_bytes(f"http://images.internal:{port}/png", policy) == PNG
    with pytest.raises(
        FetchError,
        match=rf"^image URL refused: images\.internal resolves to 127\.0\.0\.1, a loopback address, "
        rf"not allowed on port {port + 1}$",
    ):
        check_url(f"http://images.internal:{port + 1}/png", policy)


def test_host_name_entry_does_not_cover_the_address_it_resolves_to(base, fake_dns, no_connect):
    table, _ = fake_dns
    table["images.internal"] = [["127.0.0.1"]]
    policy = AddressPolicy(allowed_hosts=[f"images.internal:{_port_of(base)}"])
    with pytest.raises(FetchError, match=r"^image URL refused: 127\.0\.0\.1 is a loopback address$"):
        fetch_bytes(f"{base}/png", policy)


@pytest.mark.parametrize(
    "entry,allowed,refused",
    [
        ("[::1]:8080", "http://[::1]:8080/", "http://[::1]:8081/"),
        ("::1", "http://[::1]:8081/", "http://[::2]:8081/"),
        ("[fd00::/8]:443", "https://[fd12::1]/", "http://[fd12::1]/"),
        ("[fd00::]/8:443", "https://[fd12::1]/", "https://[fd12::1]:8443/"),
        ("fd00::/8", "http://[fd12::1]:8443/", "http://[fc00::1]/"),
    ],
)
def test_ipv6_entries_with_and_without_a_port(entry, allowed, refused, no_connect):
    policy = AddressPolicy(allowed_hosts=[entry])
    assert check_url(allowed, policy)
    with pytest.raises(FetchError, match=r"^image URL refused: "):
        check_url(refused, policy)


@pytest.mark.parametrize("host", ["0x7f000001", "2130706433"])
def test_numeric_spellings_of_an_allowed_address_are_that_address(base, host):
    policy = AddressPolicy(allowed_hosts=[f"127.0.0.1:{_port_of(base)}"])
    assert fetch_bytes(f"http://{host}:{_port_of(base)}/png", policy) == PNG


def test_ipv4_mapped_spelling_of_an_allowed_address_is_that_address(base, no_connect):
    policy = AddressPolicy(allowed_hosts=[f"127.0.0.1:{_port_of(base)}"])
    assert check_url(f"http://[::ffff:127.0.0.1]:{_port_of(base)}/png", policy) == [
        ipaddress.ip_address("::ffff:127.0.0.1")
    ]


@pytest.mark.parametrize("host", ["127.0.0.1", "0x7f000001", "2130706433", "[::ffff:127.0.0.1]", "127.1"])
def test_redirect_to_another_port_is_refused_when_only_the_first_port_is_allowed(base, second_port, host):
    other = _port_of(second_port)
    url = f"{base}/redirect?to=http://{host}:{other}/png"
    # Control: the target answers when its port is allowed too ...
    both = [f"127.0.0.1:{_port_of(base)}", f"127.0.0.1:{other}"]
    if host != "[::ffff:127.0.0.1]":  # (that one would need IPv6 on the machine to connect)
        assert fetch_bytes(url, AddressPolicy(allowed_hosts=both)) == PNG
    # ... and the hop is refused, on its port, when only the first port is.
    with pytest.raises(FetchError, match=rf"^image URL refused: .*, not allowed on port {other}$"):
        fetch_bytes(url, AddressPolicy(allowed_hosts=[f"127.0.0.1:{_port_of(base)}"]))


def test_redirect_through_a_name_to_another_port_is_refused(base, second_port, fake_dns):
    table, _ = fake_dns
    table["localhost"] = [["127.0.0.1"]]
    other = _port_of(second_port)
    policy = AddressPolicy(allowed_hosts=[f"127.0.0.1:{_port_of(base)}"])
    with pytest.raises(
        FetchError,
        match=rf"^image URL refused: localhost resolves to 127\.0\.0\.1, a loopback address, "
        rf"not allowed on port {other}$",
    ):
        fetch_bytes(f"{base}/redirect?to=http://localhost:{other}/png", policy)


def test_entry_without_a_port_allows_every_port_on_every_hop(base, second_port):
    # The documented rule: "127.0.0.1" names the host, every port of it, for the URL and its redirects.
    url = f"{base}/redirect?to={second_port}/png"
    assert fetch_bytes(url, AddressPolicy(allowed_hosts=["127.0.0.1"])) == PNG


def test_metadata_address_entry_with_a_port_allows_that_port_only(no_connect):
    policy = AddressPolicy(allowed_hosts=["169.254.169.254:80"])
    assert check_url("http://169.254.169.254/", policy)
    with pytest.raises(FetchError, match=r"cloud metadata address, not allowed on port 8080$"):
        check_url("http://169.254.169.254:8080/", policy)


@pytest.mark.parametrize(
    "entry,why",
    [
        ("127.0.0.1:18090:1", "not an IPv6 address"),
        ("127.0.0.1:0", "port must be a number from 1 to 65535"),
        ("127.0.0.1:65536", "port must be a number from 1 to 65535"),
        ("images.internal:http", "port must be a number from 1 to 65535"),
        ("10.0.0.0/33", "not a valid CIDR network"),
        ("[10.0.0.1]:80", "brackets hold an IPv6 address"),
        ("[::1]8080", "brackets hold an IPv6 address"),
        ("http://images.internal/", "not a URL"),
        ("images internal", "no spaces"),
        ("", "blank"),
        ("999.0.0.1", "not a valid IPv4 address"),
        ("a.*.example", "not a valid host name"),
    ],
)
def test_malformed_allow_list_entry_is_refused_naming_it(entry, why):
    with pytest.raises(ValueError, match=re.escape(repr(entry)) + ".*" + why):
        AddressPolicy(allowed_hosts=["127.0.0.1", entry])


def test_webhook_follows_the_same_port_rule(base, second_port):
    policy = AddressPolicy(allowed_hosts=[f"127.0.0.1:{_port_of(base)}"])
    assert post_json(f"{base}/hook", {}, None, policy, 5) == 204
    with pytest.raises(
        FetchError,
        match=r"^webhook URL refused: 127\.0\.0\.1 is a loopback address, "
        rf"not allowed on port {_port_of(second_port)}$",
    ):
        post_json(f"{second_port}/hook", {}, None, policy, 5)


# --- size, time, status -------------------------------------------------------------------------


def test_content_length_over_the_cap_is_refused(base):
    with pytest.raises(FetchError, match=r"^image is larger than 1000 bytes$"):
        fetch_bytes(f"{base}/big", AddressPolicy(allowed_hosts=["127.0.0.1"], max_bytes=1000))


def test_body_without_length_over_the_cap_is_refused_while_reading(base):
    with pytest.raises(FetchError, match=r"^image is larger than 1000 bytes$"):
        fetch_bytes(f"{base}/big-no-length", AddressPolicy(allowed_hosts=["127.0.0.1"], max_bytes=1000))


def test_body_at_the_cap_is_accepted(base):
    policy = AddressPolicy(allowed_hosts=["127.0.0.1"], max_bytes=len(BIG_BODY))
    assert fetch_bytes(f"{base}/big-no-length", policy) == BIG_BODY


def test_slow_download_times_out_overall(base):
    start = time.monotonic()
    with pytest.raises(FetchError, match=r"^timed out after 0\.4 s"):
        fetch_bytes(f"{base}/slow", AddressPolicy(allowed_hosts=["127.0.0.1"], timeout_s=0.4))
    assert time.monotonic() - start < 1.5


def test_http_404_is_a_clear_error(base):
    with pytest.raises(FetchError, match=rf"^HTTP 404 from {base}/missing\.png$"):
        fetch_bytes(f"{base}/missing.png?token=secret", ALLOW_LOCAL)


# --- load_image_source --------------------------------------------------------------------------


def test_load_image_source_decodes_a_data_url(no_connect):
    url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert load_image_source(url, AddressPolicy(), max_data_url_bytes=2**20) == PNG


def test_load_image_source_fetches_an_http_url(base):
    assert load_image_source(f"{base}/png", ALLOW_LOCAL, max_data_url_bytes=2**20) == PNG


def test_load_image_source_applies_the_policy(base, no_connect):
    with pytest.raises(FetchError, match="loopback"):
        load_image_source(f"{base}/png", AddressPolicy(), max_data_url_bytes=2**20)


# --- webhooks -----------------------------------------------------------------------------------


def test_post_json_delivers_when_allowed(base):
    Handler.hooks.clear()
    payload = {"exec_id": "abc", "status": "succeeded"}
    status = post_json(f"{base}/hook", payload, {"X-Webhook-Secret": "s3"}, ALLOW_LOCAL, 5)
    assert status == 204
    headers, body = Handler.hooks[-1]
    assert json.loads(body) == payload
    assert headers["X-Webhook-Secret"] == "s3"
    assert headers["Content-Type"] == "application/json"


def test_post_json_is_refused_by_default(base, no_connect):
    with pytest.raises(FetchError, match=r"^webhook URL refused: 127\.0\.0\.1 is a loopback address$"):
        post_json(f"{base}/hook", {}, None, AddressPolicy(), 5)


def test_post_json_does_not_follow_redirects(base):
    Handler.hooks.clear()
    assert post_json(f"{base}/hook-redirect", {"a": 1}, None, ALLOW_LOCAL, 5) == 302
    assert len(Handler.hooks) == 1
