"""HTTP fixtures: the prediction server on the tiny model, driven through FastAPI's TestClient.

``live_server`` (session-scoped) is one app with one real worker process on the tiny random FLUX
pipeline; the modules that only need "a working server" share it, and each module asks it for
fresh API keys (``server.new_key()``), so their predictions, lists and limits never mix.
``make_server`` builds an app with other settings (limits, retention, a bad model, no workers) for
the modules that need one; apps built with ``start_workers=False`` start no process and keep every
prediction queued, which is what the queue, limit and cancel-before-start tests want.

Small sizes everywhere: megapixels 0.25 (512x512 at 1:1) and 2 steps run in well under a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

FAST = {"megapixels": "0.25", "num_inference_steps": "2"}
TERMINAL = ("success", "error", "cancelled")
STATIC_KEYS = ("key-alpha", "key-bravo")

_key_numbers = itertools.count(1)


def self_signed_cert(folder: Path, password: str | None = None) -> tuple[str, str]:
    """A throwaway certificate for https://127.0.0.1 and its key (made with the ``openssl``
    command): ``(certfile, keyfile)``. With ``password`` the key is encrypted with it."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    cert, key = folder / "cert.pem", folder / "key.pem"
    encryption = ["-nodes"] if password is None else ["-passout", f"pass:{password}"]
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", *encryption, "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)


def run_in_own_loop(coro, timeout: float = 30) -> Any:
    """``asyncio.run`` on a thread of its own: another test's event loop (Playwright's, kept for
    the session) may be running on the main thread, where ``asyncio.run`` would refuse."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result(timeout=timeout)


@dataclass
class Server:
    """One app under a TestClient, with the helpers the HTTP tests share."""

    client: Any  # fastapi.testclient.TestClient
    app: Any
    settings: Any
    initial_health: dict[str, Any] = field(default_factory=dict)  # /health-check right after start

    # -- the app's parts (for asserting on the row in the store) ---------------------------------
    @property
    def state(self):
        return self.app.state.fluxserve

    @property
    def store(self):
        return self.state.store

    # -- keys -----------------------------------------------------------------------------------
    def new_key(self) -> str:
        """A fresh stored API key: a new owner, with its own predictions and limits."""
        from server.store.sqlite.keys import KeyStore

        return KeyStore(self.settings.db_path).create(f"test-{next(_key_numbers)}")

    @staticmethod
    def headers(key: str, **extra: str) -> dict[str, str]:
        return {"X-API-Key": key, **extra}

    @staticmethod
    def owner_of(key: str) -> str:
        from server.auth.keyring import key_id_for

        return key_id_for(key)

    # -- requests -------------------------------------------------------------------------------
    def post_create(self, key: str, input: dict[str, Any] | None = None, **body: Any):
        payload = {
            "model": "flux-dev",
            "input": {"prompt": "a lighthouse at dawn", **FAST, **(input or {})},
            **body,
        }
        return self.client.post("/v1/prediction", json=payload, headers=self.headers(key))

    def create(self, key: str, input: dict[str, Any] | None = None, **body: Any) -> str:
        r = self.post_create(key, input, **body)
        assert r.status_code == 200, r.text
        return r.json()["predictionID"]

    def get(self, key: str, prediction_id: str) -> dict[str, Any]:
        r = self.client.get(f"/v1/prediction/{prediction_id}", headers=self.headers(key))
        assert r.status_code == 200, r.text
        return r.json()

    def wait_until(
        self, key: str, prediction_id: str, done: Callable[[dict[str, Any]], bool], timeout: float = 60
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            body = self.get(key, prediction_id)
            if done(body):
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"prediction {prediction_id} did not get there in {timeout} s: {body}")
            time.sleep(0.05)

    def wait_for_end(self, key: str, prediction_id: str, timeout: float = 60) -> dict[str, Any]:
        """Long-poll (?wait=) until the prediction is terminal."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.client.get(f"/v1/prediction/{prediction_id}?wait=10", headers=self.headers(key))
            assert r.status_code == 200, r.text
            body = r.json()
            if body["status"] in TERMINAL:
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"prediction {prediction_id} did not end in {timeout} s: {body}")

    def run(self, key: str, input: dict[str, Any] | None = None) -> dict[str, Any]:
        """Create and wait for the end; asserts it succeeded."""
        body = self.wait_for_end(key, self.create(key, input))
        assert body["status"] == "success", body
        return body

    def path(self, url: str) -> str:
        """An absolute URL from an answer, as a path for the TestClient."""
        base = self.settings.base_url
        assert url.startswith(base + "/"), url
        return url[len(base) :]

    def wait_health(self, status: str, timeout: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            body = self.client.get("/health-check").json()
            if body["status"] == status:
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"health did not become {status} in {timeout} s: {body}")
            time.sleep(0.05)

    def wait_idle(self, timeout: float = 60) -> None:
        """No prediction queued or running anywhere on this server."""
        deadline = time.monotonic() + timeout
        while True:
            counts = self.store.counts_by_status()
            if counts["starting"] == 0 and counts["processing"] == 0 and self.wait_health_now() == "READY":
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"server not idle after {timeout} s: {counts}")
            time.sleep(0.05)

    def wait_health_now(self) -> str:
        return self.client.get("/health-check").json()["status"]

    def raw_get(self, raw_path: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """GET a path exactly as given (httpx would normalise ``..`` and encodings away): the
        request goes straight to the ASGI app, the way uvicorn hands it over (``path`` is the
        percent-decoded ``raw_path``)."""
        return self.client.portal.call(_asgi_get, self.app, raw_path, headers or {})


async def _asgi_get(app, raw_path: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    path, _, query = raw_path.partition(b"?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": unquote(path.decode("latin-1")),
        "raw_path": path,
        "query_string": query,
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 12345),
        "server": ("testserver", 80),
        "state": {},
    }
    sent: list[dict] = []
    request_done = False

    async def receive():
        nonlocal request_done
        if not request_done:
            request_done = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body


def server_settings(data_dir: Path, weights: Path | str, **overrides: Any):
    """Settings for a test app: the tiny model on CPU, two static keys, no rate limits unless asked."""
    from server.config import Settings

    sections: dict[str, dict[str, Any]] = {
        "model": {"weights": str(weights), "device": "cpu"},
        "limits": {"requests_per_minute": 0, "reads_per_minute": 0, "max_in_flight": 0},
        "workers": {"shutdown_grace_s": 5},
    }
    for name in list(overrides):
        if name in ("model", "limits", "workers", "outputs", "input_images", "webhooks"):
            sections[name] = {**sections.get(name, {}), **overrides.pop(name)}
    overrides.setdefault("api_keys", list(STATIC_KEYS))
    return Settings(data_dir=str(data_dir), **sections, **overrides)


@contextlib.contextmanager
def running_server(
    data_dir: Path,
    weights: Path | str,
    *,
    start_workers: bool = True,
    wait_ready: bool = True,
    **overrides: Any,
) -> Iterator[Server]:
    from fastapi.testclient import TestClient

    from server.app import create_app

    settings = server_settings(data_dir, weights, **overrides)
    app = create_app(settings, start_workers=start_workers)
    with TestClient(app, raise_server_exceptions=False) as client:
        server = Server(client=client, app=app, settings=settings)
        server.initial_health = client.get("/health-check").json()
        if start_workers and wait_ready:
            server.wait_health("READY")
        yield server


@pytest.fixture(scope="session")
def make_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    """``with make_server(**settings) as server:`` — an app with its own data folder."""

    def make(*, start_workers: bool = True, wait_ready: bool = True, **overrides: Any):
        data_dir = tmp_path_factory.mktemp("fluxserve-data")
        overrides.setdefault("model", {})
        overrides["model"] = {"weights": str(tiny_model_dir), **overrides["model"]}
        return running_server(
            data_dir,
            overrides["model"]["weights"],
            start_workers=start_workers,
            wait_ready=wait_ready,
            **overrides,
        )

    return make


@pytest.fixture(scope="session")
def live_server(make_server) -> Iterator[Server]:
    """The shared server: one real worker on the tiny model, bodies capped at 200 kB."""
    with make_server(limits={"max_body_bytes": 200_000}) as server:
        yield server


@pytest.fixture(scope="module")
def queued_server(make_server) -> Iterator[Server]:
    """A server whose workers never start: every prediction stays queued (status starting)."""
    with make_server(start_workers=False) as server:
        yield server
