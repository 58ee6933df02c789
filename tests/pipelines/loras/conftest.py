"""Adapter files for the cache and resolver tests: small valid safetensors files, written without torch."""

from __future__ import annotations

import pytest

from tests.server.helpers import safetensors_bytes


@pytest.fixture
def adapter_bytes() -> bytes:
    return safetensors_bytes()
