"""Adapter downloads through the egress client (server/workers/adapter_downloads.py with
pipelines/loras/resolve.py): URL and CivitAI sources against a loopback server (FileHost), into the
adapter cache. Loopback is reachable only where a test's config allows private addresses."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from pipelines.loras.resolve import AdapterFetchError, AdapterFilesConfig
from pipelines.loras.sources import parse_adapter_source
from server.workers.adapter_downloads import adapter_files
from tests.server.helpers import Route, safetensors_bytes

ADAPTER = safetensors_bytes()
TOKEN = "civitai-s3cret"


def config(tmp_path: Path, **overrides) -> AdapterFilesConfig:
    base = {
        "adapter_dir": str(tmp_path / "loras"),
        "cache_dir": str(tmp_path / "cache"),
        "allow_http": True,
        "allow_private_addresses": True,
        "download_timeout_s": 5,
    }
    return AdapterFilesConfig(**{**base, **overrides})


def fetch(tmp_path: Path, text: str, **overrides) -> bytes:
    with adapter_files(config(tmp_path, **overrides)).open(
        parse_adapter_source(text, allow_http=True)
    ) as path:
        return path.read_bytes()


def failure(tmp_path: Path, text: str, **overrides) -> str:
    with pytest.raises(AdapterFetchError) as caught:
        fetch(tmp_path, text, **overrides)
    return str(caught.value)


def leftovers(tmp_path: Path) -> list[str]:
    cache = tmp_path / "cache"
    return (
        sorted(p.name for p in cache.iterdir() if p.suffix in (".safetensors", ".json"))
        if cache.exists()
        else []
    )


def test_a_url_is_downloaded_once_into_the_cache(tmp_path, file_host):
    file_host.routes["/a.safetensors"] = Route(ADAPTER)
    assert fetch(tmp_path, file_host.url("/a.safetensors?sig=1")) == ADAPTER
    assert fetch(tmp_path, file_host.url("/a.safetensors?sig=2")) == ADAPTER  # a fresh signature
    assert file_host.hits == {"/a.safetensors": 1}


def test_three_workers_asking_for_the_same_url_at_once_make_one_request(tmp_path, file_host):
    file_host.routes["/a.safetensors"] = Route(ADAPTER, delay_s=0.3)
    start = threading.Barrier(3)
    got: list[bytes] = []
    errors: list[BaseException] = []

    def ask() -> None:
        start.wait()
        try:
            got.append(fetch(tmp_path, file_host.url("/a.safetensors")))
        except BaseException as exc:  # noqa: BLE001 - reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert got == [ADAPTER] * 3 and file_host.hits == {"/a.safetensors": 1}


def test_a_missing_file_is_a_404_error(tmp_path, file_host):
    url = file_host.url("/gone.safetensors")
    assert failure(tmp_path, url) == f"could not download LoRA {url}: LoRA URL returned HTTP 404"


def test_a_file_over_the_cap_is_refused_by_its_content_length(tmp_path, file_host):
    file_host.routes["/big.safetensors"] = Route(ADAPTER)
    message = failure(tmp_path, file_host.url("/big.safetensors"), max_download_bytes=10)
    assert message.endswith("LoRA URL is larger than 10 bytes (loras.max_download_mb)")
    assert leftovers(tmp_path) == []


def test_a_file_over_the_cap_is_refused_while_streaming(tmp_path, file_host):
    file_host.routes["/big.safetensors"] = Route(ADAPTER * 100, length=-1)
    message = failure(tmp_path, file_host.url("/big.safetensors"), max_download_bytes=1024)
    assert "LoRA URL is larger than 1 KiB" in message
    assert leftovers(tmp_path) == []


def test_a_private_address_is_refused_unless_allowed(tmp_path, file_host):
    file_host.routes["/a.safetensors"] = Route(ADAPTER)
    message = failure(tmp_path, file_host.url("/a.safetensors"), allow_private_addresses=False)
    assert "LoRA URL refused: 127.0.0.1 is a loopback address" in message
    assert file_host.hits == {}
    port = file_host.port
    assert fetch(tmp_path, file_host.url("/a.safetensors"), allowed_hosts=(f"127.0.0.1:{port}",)) == ADAPTER


def test_a_download_past_the_timeout_fails(tmp_path, file_host):
    file_host.routes["/slow.safetensors"] = Route(ADAPTER, delay_s=3)
    message = failure(tmp_path, file_host.url("/slow.safetensors"), download_timeout_s=0.5)
    assert "timed out after 0.5 s" in message
    assert leftovers(tmp_path) == []


def test_a_page_that_is_not_safetensors_is_refused_and_not_kept(tmp_path, file_host):
    file_host.routes["/a.safetensors"] = Route(
        b"<!DOCTYPE html><p>Sign in</p>", headers={"Content-Type": "text/html"}
    )
    assert "is not a safetensors file" in failure(tmp_path, file_host.url("/a.safetensors"))
    assert leftovers(tmp_path) == []


def test_a_download_cut_short_leaves_no_entry_and_no_temp_file(tmp_path, file_host):
    file_host.routes["/a.safetensors"] = Route(ADAPTER, send=len(ADAPTER) // 2)
    assert "invalid HTTP response" in failure(tmp_path, file_host.url("/a.safetensors"))
    assert (
        sorted(p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith((".lock", ".fetch")))
        == []
    )
    file_host.routes["/a.safetensors"] = Route(ADAPTER)
    assert fetch(tmp_path, file_host.url("/a.safetensors")) == ADAPTER


def test_a_close_delimited_download_cut_short_is_refused(tmp_path, file_host):
    file_host.routes["/a.safetensors"] = Route(ADAPTER, length=-1, send=len(ADAPTER) - 4)
    assert "is truncated" in failure(tmp_path, file_host.url("/a.safetensors"))
    assert leftovers(tmp_path) == []


# -- CivitAI --------------------------------------------------------------------------------


def civitai(file_host, cdn) -> None:
    """A stand-in: model 11's newest version is 22, whose download redirects to a signed CDN URL."""
    versions = {"id": 11, "modelVersions": [{"id": 22}, {"id": 21}]}
    file_host.routes["/api/v1/models/11"] = Route(json.dumps(versions).encode())
    file_host.routes["/api/download/models/22"] = Route(
        status=307, headers={"Location": cdn.url("/files/style.safetensors?X-Amz-Signature=abc")}
    )
    cdn.routes["/files/style.safetensors"] = Route(ADAPTER)


def test_a_civitai_model_page_resolves_its_newest_version_and_sends_the_token(
    tmp_path, file_host, other_file_host
):
    civitai(file_host, other_file_host)
    settings = {"civitai_base_url": file_host.url(""), "civitai_token": TOKEN}
    assert fetch(tmp_path, "https://civitai.com/models/11/some-style", **settings) == ADAPTER
    assert [path for path, _ in file_host.requests] == ["/api/v1/models/11", "/api/download/models/22"]
    assert all(headers.get("authorization") == f"Bearer {TOKEN}" for _, headers in file_host.requests)
    assert "authorization" not in other_file_host.requests[0][1]  # the signed CDN URL gets no token
    # Cached by version: the download link of version 22 is not fetched again.
    assert fetch(tmp_path, "https://civitai.com/api/download/models/22", **settings) == ADAPTER
    assert other_file_host.hits == {"/files/style.safetensors": 1}


def test_a_civitai_refusal_without_a_token_names_the_setting(tmp_path, file_host):
    file_host.routes["/api/download/models/5"] = Route(b"{}", status=401)
    message = failure(tmp_path, "civitai.com/api/download/models/5", civitai_base_url=file_host.url(""))
    assert "CivitAI download returned HTTP 401" in message and "loras.civitai_token" in message


def test_an_unknown_civitai_model_says_so(tmp_path, file_host):
    message = failure(
        tmp_path, "civitai.com/models/404", civitai_base_url=file_host.url(""), civitai_token=TOKEN
    )
    assert "could not look up civitai model 404 on CivitAI" in message and "no such model" in message
    assert TOKEN not in message
