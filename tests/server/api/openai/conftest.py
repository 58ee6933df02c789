"""Fixtures of the OpenAI Images API tests.

``openai_server``: one live ``fluxserve serve`` for the module (its start is the expensive part)
with one worker on the tiny model, a create budget of 1 a minute per key (each test takes a fresh
key, so the budget is its own; the 429 test spends it) and the alias ``dall-e-3`` for flux-dev.
``queued_openai_server``: an app without workers and a short wait limit, for what happens before
and instead of a run.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from openai import OpenAI

from tests.server.helpers import FAST_MODEL, LiveServer, Server


def openai_client_for(server: LiveServer, key: str, **options) -> OpenAI:
    """The official client on the server's OpenAI base URL, without retries."""
    return OpenAI(base_url=f"{server.url}/openai/v1", api_key=key, max_retries=0, **options)


@pytest.fixture(scope="module")
def openai_server(tmp_path_factory, tiny_model_dir) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("openai-live")
    with LiveServer(
        folder / "data",
        tiny_model_dir,
        model={"dtype": "float32", **FAST_MODEL},
        workers={"count": 1, "shutdown_grace_s": 5},
        limits={"requests_per_minute": 1},
        openai={"model_aliases": {"dall-e-3": "flux-dev"}},
    ) as server:
        server.start(timeout=240)
        yield server


@pytest.fixture
def openai_key(openai_server) -> str:
    """A fresh key: its own predictions and create budget."""
    return openai_server.new_key()


@pytest.fixture
def openai_client(openai_server, openai_key) -> Iterator[OpenAI]:
    client = openai_client_for(openai_server, openai_key)
    yield client
    client.close()


@pytest.fixture(scope="module")
def queued_openai_server(make_server) -> Iterator[Server]:
    """No worker: every prediction stays queued, so each image request waits out its 0.3 s."""
    with make_server(
        start_workers=False, limits={"max_body_bytes": 20_000}, openai={"wait_timeout_s": 0.3}
    ) as server:
        yield server
