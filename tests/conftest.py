"""Shared fixtures: the tiny random FLUX pipeline (written and loaded once per session through the
real loading code) and tiny safety checkers.

Nothing heavy is imported at module level, so test modules that never ask for these fixtures do
not pay for torch or diffusers.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NamedTuple

import pytest


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
