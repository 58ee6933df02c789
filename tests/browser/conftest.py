"""Fixtures of the browser tests: a live fluxserve (uvicorn in a thread, the tiny model, one API
key) and headless Debian chromium driven by Playwright.

Missing chromium or the playwright package makes every browser test FAIL with a message naming
scripts/install_browser.sh; set FLUXSERVE_SKIP_BROWSER_TESTS=1 to skip them on purpose.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

SKIP_ENV = "FLUXSERVE_SKIP_BROWSER_TESTS"
INSTALL_HINT = "run scripts/install_browser.sh (Debian chromium + the playwright package)"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
API_KEY = "browser-test-key-0123456789abcdef"
REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts"
READY_TIMEOUT_S = 240.0
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


def leaves_loopback(url: str) -> bool:
    """Whether a request for ``url`` would go to another machine (data: and blob: stay here)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about"):
        return False
    return parts.hostname not in LOOPBACK_HOSTS


def missing_browser_reason() -> str | None:
    """Why the browser tests cannot run here, or None."""
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright Python package")
    if shutil.which("chromium") is None:
        missing.append("the chromium browser")
    if not missing:
        return None
    return (
        f"browser tests need {' and '.join(missing)}: {INSTALL_HINT}. "
        f"To skip them on purpose, set {SKIP_ENV}=1."
    )


@pytest.fixture(scope="session")
def browser_missing() -> str | None:
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1: browser tests skipped on request")
    return missing_browser_reason()


@dataclass
class LiveServer:
    url: str
    key: str
    app: Any
    server: Any
    thread: threading.Thread

    def api(self) -> Any:
        import httpx

        return httpx.Client(base_url=self.url, headers={"X-API-Key": self.key}, timeout=30)


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _wait_ready(url: str, thread: threading.Thread, ready: tuple[str, ...] = ("READY", "BUSY")) -> None:
    import httpx

    deadline = time.monotonic() + READY_TIMEOUT_S
    last: Any = None
    while time.monotonic() < deadline:
        if not thread.is_alive():
            raise RuntimeError("the live server stopped while starting")
        try:
            last = httpx.get(f"{url}/health-check", timeout=5).json()
            if last.get("status") in ready:
                return
            if last.get("status") == "SETUP_FAILED":
                raise RuntimeError(f"the tiny model failed to load: {last}")
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.25)
    raise RuntimeError(f"the live server was not ready after {READY_TIMEOUT_S:.0f} s: {last}")


@contextlib.contextmanager
def _serve(settings: Any, sock: socket.socket, key: str, ready: tuple[str, ...]) -> Iterator[LiveServer]:
    """The app for ``settings`` under uvicorn on ``sock``, in a thread, until the block ends."""
    import uvicorn

    from server.app import create_app

    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="live-fluxserve"
    )
    thread.start()
    port = sock.getsockname()[1]
    live = LiveServer(url=f"http://127.0.0.1:{port}", key=key, app=app, server=server, thread=thread)
    try:
        _wait_ready(live.url, thread, ready)
        yield live
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()


@pytest.fixture(scope="session")
def live_server(browser_missing, request, tmp_path_factory) -> Iterator[LiveServer | None]:
    """fluxserve on a free loopback port, serving the tiny model with one worker."""
    if browser_missing:
        yield None  # each test fails with the reason; no point starting a server
        return
    from pipelines.spec import ModelSpec
    from server.config import Settings, WorkerSettings

    tiny_model_dir = request.getfixturevalue("tiny_model_dir")
    sock = _free_socket()
    settings = Settings(
        host="127.0.0.1",
        port=sock.getsockname()[1],
        data_dir=str(tmp_path_factory.mktemp("browser-data")),
        api_keys=[API_KEY],
        log_level="warning",
        model=ModelSpec(weights=str(tiny_model_dir), device="cpu"),
        workers=WorkerSettings(count=1, progress_interval_s=0.05, shutdown_grace_s=5),
    )
    with _serve(settings, sock, API_KEY, ("READY", "BUSY")) as live:
        yield live


@pytest.fixture
def open_live_server(browser_missing, tmp_path) -> Iterator[LiveServer | None]:
    """fluxserve without any API key (open mode) and without workers: for what the page does
    when the server stops being open."""
    if browser_missing:
        yield None
        return
    from server.config import Settings, WorkerSettings

    sock = _free_socket()
    settings = Settings(
        host="127.0.0.1",
        port=sock.getsockname()[1],
        data_dir=str(tmp_path / "open-data"),
        log_level="warning",
        workers=WorkerSettings(count=0),
    )
    with _serve(settings, sock, "", ("STARTING",)) as live:
        yield live


@pytest.fixture(scope="session")
def browser(browser_missing) -> Iterator[Any]:
    if browser_missing:
        yield None
        return
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class PageFactory:
    """Opens pages in fresh browser contexts; records console errors, failed requests, and every
    request URL (none may leave loopback: the page loads nothing from elsewhere)."""

    browser: Any
    live: LiveServer | None
    missing: str | None
    contexts: list[Any] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def __call__(self, *, key: str | None = None, **context_options: Any):
        if self.missing:
            pytest.fail(self.missing, pytrace=False)
        options = {"viewport": {"width": 1280, "height": 900}, "accept_downloads": True, **context_options}
        context = self.browser.new_context(**options)
        context.set_default_timeout(30_000)
        if key is not None:
            context.add_init_script(f"window.localStorage.setItem('fluxserve.apiKey', {key!r});")
        self.contexts.append(context)
        page = context.new_page()
        page.on("console", lambda msg: msg.type == "error" and self.problems.append(f"console: {msg.text}"))
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.on("request", self._record_request)
        return page

    def _record_request(self, request: Any) -> None:
        self.requests.append(request.url)
        if leaves_loopback(request.url):
            self.problems.append(f"request left loopback: {request.url}")

    def assert_no_problems(self, allow: tuple[str, ...] = ()) -> None:
        """No script error, no CSP violation, no failed load (except messages containing ``allow``),
        and no request to anywhere but loopback (never allowed)."""
        assert self.requests, "no request was recorded"
        assert not [u for u in self.requests if leaves_loopback(u)], "a request left loopback"
        left = [p for p in self.problems if not any(a in p for a in allow)]
        assert not left, "the page reported problems:\n" + "\n".join(left)


@pytest.fixture
def new_page(browser, live_server, browser_missing) -> Iterator[Callable[..., Any]]:
    factory = PageFactory(browser, live_server, browser_missing)
    try:
        yield factory
    finally:
        for context in factory.contexts:
            context.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
