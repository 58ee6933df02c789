"""The test harnesses of the prediction server, and what the HTTP tests share.

``Server`` is one app under FastAPI's TestClient, in this process (``tests/server/conftest.py``
builds them: ``live_server``, ``make_server``, ``queued_server``). ``LiveServer`` is a real
``fluxserve serve`` in a subprocess, for tests that need to kill, hang or restart it. Both drive the
API with the same verbs (``Harness``: new_key, headers, create, get, wait_until, wait_for_end, run,
wait_health); only the transport differs (a TestClient is an httpx client).

``LiveServer`` writes a YAML config (the same test settings ``server_settings`` builds: the tiny
model on CPU, the two static keys, no rate limits unless asked) into its own data folder, runs
``fluxserve serve --config ... --port N`` in its **own process group** (so the API process and its
spawned workers can be signalled together), and talks to it over real HTTP with httpx.

    with LiveServer(tmp_path, tiny_model_dir, workers={"job_timeout_s": 3},
                    env={"FLUXSERVE_FAULT_INJECTION": "1"}) as srv:
        pid = srv.create(KEY, {"prompt": "a cat [[fault:hang]]"})
        srv.wait_for_end(KEY, pid)["error"]  # 'timed out after 3 s'

``kill()`` is SIGKILL to the whole group (power-cut of the server: API process and workers),
``stop()`` is SIGTERM to the API process (graceful shutdown), ``start()`` runs it again on the
same data folder and config (a restart). Everything the server prints goes to ``server.log``
in the data folder; ``log_text()`` reads it.

Small sizes everywhere: megapixels 0.25 (512x512 at 1:1) and 2 steps run in well under a second.
No torch here: the tests drive the server through HTTP, ``/proc`` and the SQLite file.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
import yaml

FAST = {"megapixels": "0.25", "num_inference_steps": "2"}
TERMINAL = ("success", "error", "cancelled")
STATIC_KEYS = ("key-alpha", "key-bravo")

_key_numbers = itertools.count(1)

FLUXSERVE = str(Path(sys.executable).with_name("fluxserve"))
KEY_A, KEY_B = STATIC_KEYS

# The model settings of the live tests: the tiny pipeline with a short T5 sequence, so a job is a
# fraction of a second on a loaded 2-core box (max_sequence_length 512 makes the first job ~4 s).
FAST_MODEL = {"max_sequence_length": 64}


def png_data_url(width: int = 64, height: int = 64, color: tuple[int, int, int] = (200, 40, 40)) -> str:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


# The quickest normal job: img2img from a 64x64 PNG (the output is 64x64), 2 steps.
SMALL_IMAGE = png_data_url()
QUICK = {"image": SMALL_IMAGE, "num_inference_steps": "2"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    """Direct children of ``pid``, from /proc (Linux)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return [int(p) for p in text.split()]
    except OSError:
        pass
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may contain spaces and parentheses
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def self_signed_cert(folder: Path, password: str | None = None) -> tuple[str, str]:
    """A throwaway certificate for https://127.0.0.1 and its key (made with the ``openssl``
    command): ``(certfile, keyfile)``. With ``password`` the key is encrypted with it."""
    if shutil.which("openssl") is None:  # the TLS tests must not pass by not running
        pytest.fail("the openssl command is needed to make a test certificate (apt-get install openssl)")
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


def server_settings(data_dir: Path, weights: Path | str, **overrides: Any):
    """Settings for a test app: the tiny model on CPU, two static keys, no rate limits unless asked.
    ``models=[{...}, ...]``: several models instead of ``model``, each on the tiny model on CPU
    unless it says otherwise."""
    from server.config import Settings

    sections: dict[str, dict[str, Any]] = {
        "model": {"weights": str(weights), "device": "cpu"},
        "limits": {"requests_per_minute": 0, "reads_per_minute": 0, "max_in_flight": 0},
        "workers": {"shutdown_grace_s": 5},
    }
    if overrides.get("models") is not None:
        base = sections.pop("model")
        overrides["models"] = [{**base, **spec} for spec in overrides["models"]]
    for name in list(overrides):
        if name in ("model", "limits", "workers", "outputs", "input_images", "webhooks"):
            sections[name] = {**sections.get(name, {}), **overrides.pop(name)}
    overrides.setdefault("api_keys", list(STATIC_KEYS))
    return Settings(data_dir=str(data_dir), **sections, **overrides)


class Harness:
    """The verbs the HTTP tests share (keys, create, get, wait, run, health), over ``self.http``:
    a TestClient for ``Server``, an httpx client on a real port for ``LiveServer`` (a TestClient is
    an httpx client, so the verbs are the same code)."""

    http: httpx.Client
    settings: Any
    END_TIMEOUT: float = 60  # default wait for a prediction's end
    HEALTH_TIMEOUT: float = 90  # default wait for a health status
    HEALTH_POLL_S: float = 0.05

    def diagnostics(self) -> str:
        """What an assertion about this server adds to its message (the live server's log)."""
        return ""

    def timeout(self, seconds: float) -> dict[str, float]:
        """The per-request timeout, as keyword arguments (a TestClient takes none)."""
        return {"timeout": seconds}

    # -- keys -----------------------------------------------------------------------------------
    def new_key(self) -> str:
        """A fresh stored API key: a new owner, with its own predictions and limits."""
        from server.store.sqlite.keys import SQLiteKeyStore

        return SQLiteKeyStore(self.settings.db_path).create(f"test-{next(_key_numbers)}")

    @staticmethod
    def headers(key: str | None, **extra: str) -> dict[str, str]:
        return {**({"X-API-Key": key} if key else {}), **extra}

    @staticmethod
    def owner_of(key: str) -> str:
        from server.auth.keyring import key_id_for

        return key_id_for(key)

    # -- health ---------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        r = self.http.get("/health-check", **self.timeout(5))
        r.raise_for_status()
        return r.json()

    def wait_health(self, status: str | tuple[str, ...], timeout: float | None = None) -> dict[str, Any]:
        wanted = (status,) if isinstance(status, str) else status
        timeout = self.HEALTH_TIMEOUT if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            body = self.health()
            if body["status"] in wanted:
                return body
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"health did not become {wanted} in {timeout} s: {body}{self.diagnostics()}"
                )
            time.sleep(self.HEALTH_POLL_S)

    # -- predictions ----------------------------------------------------------------------------
    def post_create(
        self, key: str | None, input: dict[str, Any] | None = None, **body: Any
    ) -> httpx.Response:
        payload = {
            "model": "flux-dev",
            "input": {"prompt": "a lighthouse at dawn", **FAST, **(input or {})},
            **body,
        }
        return self.http.post("/v1/prediction", json=payload, headers=self.headers(key))

    def create(self, key: str | None, input: dict[str, Any] | None = None, **body: Any) -> str:
        r = self.post_create(key, input, **body)
        assert r.status_code == 200, r.text
        return r.json()["predictionID"]

    def get(self, key: str | None, prediction_id: str, wait: float = 0) -> dict[str, Any]:
        params = {"wait": wait} if wait else None
        r = self.http.get(
            f"/v1/prediction/{prediction_id}",
            params=params,
            headers=self.headers(key),
            **self.timeout(wait + 30),
        )
        assert r.status_code == 200, r.text
        return r.json()

    def wait_until(
        self, key: str | None, prediction_id: str, done: Callable[[dict[str, Any]], bool], timeout: float = 60
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            body = self.get(key, prediction_id)
            if done(body):
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"prediction {prediction_id} did not get there in {timeout} s: {body}")
            time.sleep(0.05)

    def wait_for_end(
        self, key: str | None, prediction_id: str, timeout: float | None = None
    ) -> dict[str, Any]:
        """Long-poll (?wait=) until the prediction is terminal."""
        timeout = self.END_TIMEOUT if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            body = self.get(key, prediction_id, wait=min(10.0, max(0.1, deadline - time.monotonic())))
            if body["status"] in TERMINAL:
                return body
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"prediction {prediction_id} did not end in {timeout} s: {body}{self.diagnostics()}"
                )

    def run(
        self, key: str | None, input: dict[str, Any] | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """Create and wait for the end; asserts it succeeded."""
        body = self.wait_for_end(key, self.create(key, input), timeout)
        assert body["status"] == "success", body
        return body


@dataclass
class Server(Harness):
    """One app under a TestClient (in this process)."""

    client: Any  # fastapi.testclient.TestClient
    app: Any
    settings: Any
    initial_health: dict[str, Any] = field(default_factory=dict)  # /health-check right after start

    @property
    def http(self) -> Any:
        return self.client

    def timeout(self, seconds: float) -> dict[str, float]:
        return {}  # in process: nothing to time out (and the TestClient warns about the argument)

    # -- the app's parts (for asserting on the row in the store) ---------------------------------
    @property
    def state(self):
        return self.app.state.fluxserve

    @property
    def store(self):
        return self.state.store

    def path(self, url: str) -> str:
        """An absolute URL from an answer, as a path for the TestClient."""
        base = self.settings.base_url
        assert url.startswith(base + "/"), url
        return url[len(base) :]

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
        return self.health()["status"]

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


class LiveServer(Harness):
    """One `fluxserve serve` subprocess on a free loopback port with its own data folder.

    ``role``: "serve" (API and workers), "api" (`serve --no-workers`: an API replica) or
    "worker" (`fluxserve worker`: a worker host, no HTTP; ``start`` only launches it)."""

    END_TIMEOUT = 90
    HEALTH_TIMEOUT = 120
    HEALTH_POLL_S = 0.1

    def __init__(
        self,
        data_dir: Path,
        weights: Path | str,
        *,
        env: dict[str, str] | None = None,
        api_keys: Iterable[str] | None = None,
        port: int | None = None,
        tls: tuple[str, str] | None = None,
        role: str = "serve",
        **overrides: Any,
    ) -> None:
        """``tls=(certfile, keyfile)``: serve HTTPS (``--ssl-certfile``/``--ssl-keyfile``); the
        client trusts that certificate."""
        self.tls = tls
        self.role = role
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.weights = str(weights)
        self.env_overrides = dict(env or {})
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = self.data_dir / "server.log"
        self.config_path = self.data_dir / "config.yaml"
        self._log_file = None
        self.write_config(api_keys=api_keys, **overrides)
        self.http = httpx.Client(base_url=self.url, timeout=30, verify=self.verify)

    # -- config ---------------------------------------------------------------------------------
    def write_config(self, *, api_keys: Iterable[str] | None = None, **overrides: Any) -> None:
        """(Re)write the YAML config; takes effect on the next ``start()``."""
        if overrides.get("models") is None:
            overrides.setdefault("model", {})
            overrides["model"] = {"weights": self.weights, **overrides["model"]}
        settings = server_settings(self.data_dir, self.weights, **overrides)
        data = settings.model_dump(mode="json", exclude_none=True)
        if settings.models is not None:
            data.pop("model")  # `models:` stands instead
        data["api_keys"] = list(STATIC_KEYS if api_keys is None else api_keys)
        data.pop("port", None)
        self.settings = settings
        self.config_path.write_text(yaml.safe_dump(data, sort_keys=False))

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """What a client passes as ``verify`` to trust this server."""
        return ssl.create_default_context(cafile=os.path.expanduser(self.tls[0])) if self.tls else True

    @property
    def db_path(self) -> Path:
        return self.data_dir / "fluxserve.db"

    # -- life cycle -----------------------------------------------------------------------------
    def start(
        self, wait: str | tuple[str, ...] | None = "READY", timeout: float = 120
    ) -> dict[str, Any] | None:
        """Run the server; wait until /health-check says ``wait`` (None: until it answers at all).
        A worker host has no /health-check: it is only launched."""
        self.launch()
        if self.role == "worker":
            return None
        return self.wait_started(wait, timeout)

    def command(self) -> list[str]:
        if self.role == "worker":
            return [FLUXSERVE, "worker", "--config", str(self.config_path)]
        flags = {"serve": [], "api": ["--no-workers"]}[self.role]
        return [FLUXSERVE, "serve", *flags, "--config", str(self.config_path), "--port", str(self.port)] + (
            ["--ssl-certfile", self.tls[0], "--ssl-keyfile", self.tls[1]] if self.tls else []
        )

    def launch(self) -> None:
        """Start the process and return at once (``wait_started`` waits): lets a test start
        several servers side by side."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXSERVE_")}
        env.update(
            HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1"
        )
        env.update(self.env_overrides)
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - kept open while the server runs
        self._log_file.write(f"\n===== start on port {self.port} at {time.time():.3f} =====\n".encode())
        self._log_file.flush()
        self.proc = subprocess.Popen(
            self.command(),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=str(self.data_dir),
            start_new_session=True,  # its own process group: kill() reaches the workers too
        )

    def wait_started(
        self, wait: str | tuple[str, ...] | None = "READY", timeout: float = 120
    ) -> dict[str, Any] | None:
        assert self.proc is not None
        wanted = (wait,) if isinstance(wait, str) else wait
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"fluxserve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                body = self.health()
                if wanted is None or body["status"] in wanted:
                    return body
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"server not {wanted} after {timeout} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL to the whole process group (API process and workers), as a power cut would."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self._wait_group_gone()
        self._close_log()

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM to the API process (a graceful shutdown); returns its exit code."""
        if self.proc is None or self.proc.poll() is not None:
            self._close_log()
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"server did not stop within {timeout} s after SIGTERM:\n{self.log_tail()}"
            ) from None
        self._wait_group_gone(kill_after=10)
        self._close_log()
        return code

    def restart(self, **start_kwargs: Any) -> dict[str, Any] | None:
        self.stop()
        return self.start(**start_kwargs)

    def terminate(self) -> None:
        """SIGTERM without waiting (then ``close()``): lets a test stop several servers side by side."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def close(self) -> None:
        """Stop whatever is left (tests' finalizer): SIGTERM, then SIGKILL to the group."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    pass
            if self.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(10)
        finally:
            self._close_log()
            self.http.close()

    def __enter__(self) -> LiveServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _wait_group_gone(self, kill_after: float | None = None) -> None:
        """Wait until no process of the group is left (workers are reparented when the API dies)."""
        assert self.proc is not None
        pgid = self.proc.pid
        deadline = time.monotonic() + (kill_after or 10)
        while True:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            except PermissionError:  # pragma: no cover
                return
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                if kill_after is None:
                    return
                kill_after = None
                deadline = time.monotonic() + 10
            time.sleep(0.05)

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    # -- processes ------------------------------------------------------------------------------
    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def worker_pids(self) -> list[int]:
        """The live worker processes: the API process's spawned children (not the resource tracker)."""
        return [p for p in _children(self.pid) if "multiprocessing.spawn" in _cmdline(p) and pid_alive(p)]

    def worker_pid(self, timeout: float = 30) -> int:
        """The one worker's PID (waits for it to exist)."""
        deadline = time.monotonic() + timeout
        while True:
            pids = self.worker_pids()
            if len(pids) == 1:
                return pids[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"expected one worker process, found {pids}")
            time.sleep(0.05)

    def diagnostics(self) -> str:
        return "\n" + self.log_tail()

    def log_text(self) -> str:
        try:
            return self.log_path.read_bytes().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_text()[-chars:]

    # -- HTTP -----------------------------------------------------------------------------------
    def output_path(self, url: str) -> str:
        assert url.startswith(self.settings.base_url.rsplit(":", 1)[0]), url
        return "/" + url.split("/", 3)[3]

    # -- the store, read directly -----------------------------------------------------------------
    def db(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db_path, timeout=10)
        conn.row_factory = sqlite3.Row
        return conn

    def integrity_check(self) -> str:
        with contextlib.closing(self.db()) as conn:
            return conn.execute("PRAGMA integrity_check").fetchone()[0]


class HealthWatch:
    """Polls /health-check from a thread while a fault happens: every answer must be a 200.

    with HealthWatch(srv) as watch:
        ...  # kill a worker
    assert watch.failures == []
    """

    def __init__(self, server: LiveServer, interval: float = 0.05) -> None:
        import threading

        self.server = server
        self.interval = interval
        self.statuses: list[str] = []
        self.failures: list[str] = []
        self.answered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="health-watch")

    def _run(self) -> None:
        with httpx.Client(base_url=self.server.url, timeout=5) as client:
            while not self._stop.is_set():
                try:
                    r = client.get("/health-check")
                    if r.status_code != 200:
                        self.failures.append(f"HTTP {r.status_code}: {r.text[:200]}")
                    else:
                        self.answered += 1
                        status = r.json()["status"]
                        if not self.statuses or self.statuses[-1] != status:
                            self.statuses.append(status)
                except (httpx.HTTPError, ValueError) as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                self._stop.wait(self.interval)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(10)


def raw_request(port: int, request: bytes, timeout: float = 10) -> tuple[int, bytes]:
    """Send bytes as they are (no client-side normalisation of paths, encodings or bodies) and
    return the status code and the body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        chunks = []
        while True:
            try:
                data = s.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            chunks.append(data)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body


@dataclass
class Route:
    """One answer of a FileHost. ``length`` overrides the Content-Length sent (None: the body's,
    -1: none, the body ends when the connection closes); ``send`` cuts the body after that many bytes;
    ``delay_s`` waits before answering."""

    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    length: int | None = None
    send: int | None = None
    delay_s: float = 0.0


class FileHost:
    """A loopback HTTP server for download tests: ``routes`` maps a path to its Route; every GET is
    counted per path (``hits``) and its headers kept, names lowercased (``requests``). Adapter
    sources and redirects use ``url(path)``."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlsplit

        self.routes: dict[str, Route] = {}
        self.hits: dict[str, int] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        host = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = urlsplit(self.path).path
                host.hits[path] = host.hits.get(path, 0) + 1
                host.requests.append((path, {k.lower(): v for k, v in self.headers.items()}))
                route = host.routes.get(path, Route(b"not found", status=404))
                time.sleep(route.delay_s)
                self.send_response(route.status)
                for name, value in route.headers.items():
                    self.send_header(name, value)
                length = len(route.body) if route.length is None else route.length
                if length >= 0:
                    self.send_header("Content-Length", str(length))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(route.body[: route.send])
                self.close_connection = True

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def safetensors_bytes(values: int = 4, name: str = "lora.weight") -> bytes:
    """A small, valid safetensors file (one float32 tensor), written without torch."""
    data = b"\0" * (4 * values)
    header = json.dumps({name: {"dtype": "F32", "shape": [values], "data_offsets": [0, len(data)]}}).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + data
