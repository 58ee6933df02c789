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

import time
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
        weights = str(tiny_model_dir)
        if overrides.get("models") is None:  # several models: each on the tiny model unless it says
            overrides.setdefault("model", {})
            overrides["model"] = {"weights": weights, **overrides["model"]}
            weights = overrides["model"]["weights"]
        return running_server(
            data_dir,
            weights,
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


# The tiny model served twice: as flux-dev (with a short default run) and as flux-schnell.
TWO_MODELS = [
    {"name": "flux-dev", "defaults": {"num_inference_steps": 3}, "max_sequence_length": 64},
    {"family": "flux-schnell", "max_sequence_length": 64},
]


@pytest.fixture(scope="module")
def two_models_server(make_server) -> Iterator[Server]:
    """flux-dev (and its LoRA face) and flux-schnell, one worker each, both ready."""
    with make_server(models=TWO_MODELS) as server:
        server.wait_health("READY")
        for _ in range(600):  # READY means one model is; wait for both
            if all(m["status"] == "READY" for m in server.health()["models"].values()):
                break
            time.sleep(0.1)
        yield server


@pytest.fixture(scope="module")
def schnell_failed_server(make_server, tmp_path_factory) -> Iterator[Server]:
    """flux-dev ready; flux-schnell's weights are missing, so its one worker failed to load."""
    missing = str(tmp_path_factory.mktemp("no-weights") / "nonexistent")
    models = [TWO_MODELS[0], {**TWO_MODELS[1], "weights": missing}]
    with make_server(models=models) as server:
        for _ in range(1200):
            if server.health()["models"]["flux-schnell"]["status"] == "SETUP_FAILED":
                break
            time.sleep(0.1)
        yield server
