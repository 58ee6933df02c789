"""Streaming downloads under the address policy (download_to in server/egress/fetch.py), against a
loopback server (FileHost); loopback is reachable only because each policy here allows it."""

from __future__ import annotations

import io

import pytest

from server.egress.fetch import AddressPolicy, FetchError, FetchStatusError, download_to
from tests.server.helpers import Route

LOOPBACK = AddressPolicy(allow_private=True, timeout_s=5)
BODY = bytes(range(256)) * 1000  # 256 000 bytes: several chunks


def test_download_streams_the_body_into_the_sink(file_host):
    file_host.routes["/a.safetensors"] = Route(BODY, headers={"Content-Type": "application/octet-stream"})
    sink = io.BytesIO()
    info = download_to(file_host.url("/a.safetensors"), LOOPBACK, sink, max_bytes=len(BODY))
    assert sink.getvalue() == BODY
    assert info.size == len(BODY) and info.content_type == "application/octet-stream"


def test_an_error_status_names_what_and_the_status(file_host):
    with pytest.raises(FetchStatusError, match=r"^LoRA URL returned HTTP 404$") as caught:
        download_to(file_host.url("/missing.safetensors"), LOOPBACK, io.BytesIO(), max_bytes=100)
    assert caught.value.status == 404


def test_a_declared_length_over_the_cap_is_refused_before_reading(file_host):
    file_host.routes["/big"] = Route(BODY)
    sink = io.BytesIO()
    with pytest.raises(FetchError, match="LoRA URL is larger than 1 KiB"):
        download_to(file_host.url("/big"), LOOPBACK, sink, max_bytes=1024)
    assert sink.getvalue() == b""


def test_a_body_without_length_is_cut_at_the_cap(file_host):
    file_host.routes["/big"] = Route(BODY, length=-1)
    with pytest.raises(FetchError, match="LoRA URL is larger than 100 KiB"):
        download_to(file_host.url("/big"), LOOPBACK, io.BytesIO(), max_bytes=100 * 1024)


def test_a_body_shorter_than_its_content_length_is_an_error(file_host):
    file_host.routes["/cut"] = Route(BODY, send=1000)
    with pytest.raises(FetchError, match="invalid HTTP response"):
        download_to(file_host.url("/cut"), LOOPBACK, io.BytesIO(), max_bytes=len(BODY))


def test_private_addresses_are_refused_by_default(file_host):
    file_host.routes["/a"] = Route(BODY)
    with pytest.raises(FetchError, match="LoRA URL refused: 127.0.0.1 is a loopback address"):
        download_to(file_host.url("/a"), AddressPolicy(), io.BytesIO(), max_bytes=len(BODY))
    assert file_host.hits == {}


def test_the_overall_deadline_holds(file_host):
    file_host.routes["/slow"] = Route(BODY, delay_s=3)
    with pytest.raises(FetchError, match="timed out after 0.5 s"):
        download_to(
            file_host.url("/slow"),
            AddressPolicy(allow_private=True, timeout_s=0.5),
            io.BytesIO(),
            max_bytes=10**6,
        )


def test_redirects_are_followed_and_named_in_an_error(file_host):
    file_host.routes["/go"] = Route(status=302, headers={"Location": "/gone"})
    file_host.routes["/gone"] = Route(b"no", status=403)
    with pytest.raises(FetchStatusError, match=r"CivitAI download returned HTTP 403 \(at http://.*/gone\)"):
        download_to(file_host.url("/go"), LOOPBACK, io.BytesIO(), max_bytes=100, what="CivitAI download")


def test_headers_go_to_the_first_origin_only(file_host, other_file_host):
    other_file_host.routes["/file"] = Route(BODY)
    file_host.routes["/go"] = Route(status=302, headers={"Location": other_file_host.url("/file")})
    sink = io.BytesIO()
    headers = {"Authorization": "Bearer t0k"}
    download_to(file_host.url("/go"), LOOPBACK, sink, max_bytes=len(BODY), headers=headers)
    assert sink.getvalue() == BODY
    assert file_host.requests[0][1].get("authorization") == "Bearer t0k"
    assert "authorization" not in other_file_host.requests[0][1]


def test_https_only_refuses_a_plain_http_url(file_host):
    with pytest.raises(FetchError, match="LoRA URL refused: only https URLs are allowed"):
        download_to(file_host.url("/a"), LOOPBACK, io.BytesIO(), max_bytes=100, https_only=True)
    assert file_host.hits == {}
