"""HTTP fixtures: the prediction server on the tiny model, driven through FastAPI's TestClient.

``live_server`` (session-scoped) is one app with one real worker process on the tiny random FLUX
pipeline; the modules that only need "a working server" share it, and each module asks it for
fresh API keys (``server.new_key()``), so their predictions, lists and limits never mix.
``make_server`` builds an app with other settings (limits, retention, a bad model, no workers) for
the modules that need one; apps built with ``start_workers=False`` start no process and keep every
prediction queued, which is what the queue, limit and cancel-before-start tests want.

The harnesses themselves (``Server``, ``LiveServer``) and the shared constants are in
``tests/server/helpers.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server.helpers import FileHost, Server, running_server


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


@pytest.fixture
def file_host() -> Iterator[FileHost]:
    """A loopback HTTP server answering the routes a test sets (downloads of adapter files)."""
    host = FileHost()
    yield host
    host.close()


@pytest.fixture
def other_file_host() -> Iterator[FileHost]:
    """A second one, on another port: the CDN a redirect points at."""
    host = FileHost()
    yield host
    host.close()
