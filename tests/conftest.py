"""Shared fixtures: the tiny random FLUX pipeline (written and loaded once per session through the
real loading code), tiny safety checkers, and the test services (PostgreSQL, Redis, S3).

Nothing heavy is imported at module level, so test modules that never ask for these fixtures do
not pay for torch or diffusers.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple, TypeVar

import pytest

from tests.services.base import ServiceUnavailable
from tests.services.postgres import PostgresServer
from tests.services.redis import RedisServer
from tests.services.s3 import S3Server


def pytest_configure(config: pytest.Config) -> None:
    # Tests never reach a model hub: everything is built locally.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # One torch thread unless told otherwise (FLUXSERVE_TEST_THREADS): the tiny model gains little
    # from two, and on a busy 2-core machine spinning OpenMP threads make each step ~10x slower.
    threads = os.environ.get("FLUXSERVE_TEST_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", threads)
    if "torch" in sys.modules:  # imported by a plugin before us: set it directly
        sys.modules["torch"].set_num_threads(int(threads))


@pytest.fixture
def empty_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No Hugging Face cache at all: env vars for anything that reads them later, and the constant
    huggingface_hub computed at import time."""
    import huggingface_hub.constants as hf_constants

    home = tmp_path / "hf-home"
    (home / "hub").mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HOME", str(home))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(home / "hub"))
    return home


class SafetyDirs(NamedTuple):
    flag_all: Path  # a tiny StableDiffusionSafetyChecker that flags every image
    flag_none: Path  # one that flags nothing


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A diffusers folder holding the tiny random FLUX pipeline (marked as tiny in model_index.json)."""
    from pipelines.tiny import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny-flux") / "model")


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path):
    """The tiny pipeline loaded by ``load_model`` with default options (no safety checker).

    Shared by the whole session: tests that change the model (its safety checker, its spec) load
    their own instead.
    """
    from pipelines.loading import load_model
    from pipelines.spec import ModelSpec

    return load_model(ModelSpec(weights=str(tiny_model_dir)))


@pytest.fixture(scope="session")
def generator(tiny_model):
    from pipelines.generate import FluxGenerator

    return FluxGenerator(tiny_model)


@pytest.fixture(scope="session")
def safety_dirs(tmp_path_factory: pytest.TempPathFactory) -> SafetyDirs:
    from pipelines.tiny_safety import write_tiny_safety_checker

    root = tmp_path_factory.mktemp("tiny-safety")
    return SafetyDirs(
        flag_all=write_tiny_safety_checker(root / "flag-all", flag_everything=True),
        flag_none=write_tiny_safety_checker(root / "flag-none", flag_everything=False),
    )


# -- Test services ----------------------------------------------------------------------------
# PostgreSQL, Redis and an S3-compatible server (moto), started by the tests themselves on free
# loopback ports (harnesses in tests/services/), one of each per session, on first use. A suite
# that needs one FAILS when it cannot start, saying what to install: it never skips, so a machine
# without the service cannot pass by running nothing. `.ci/run` installs the system packages,
# `scripts/setup.sh --dev` the Python ones.

T = TypeVar("T")


def _started(start: Callable[[], T], what: str) -> T:
    try:
        return start()
    except ServiceUnavailable as exc:
        pytest.fail(f"{what} is needed by these tests and could not start: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        yield _started(server.start, "PostgreSQL")
    finally:
        server.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        yield _started(server.start, "Redis")
    finally:
        server.close()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    server = S3Server()
    try:
        yield _started(server.start, "An S3-compatible server (moto)")
    finally:
        server.close()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket on the session's S3 server."""
    return s3_server.new_bucket()
