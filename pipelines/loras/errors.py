"""The one error of getting an adapter's file: the message says which adapter and what went wrong."""

from __future__ import annotations

from pipelines.errors import GenerationError


class AdapterFetchError(GenerationError):
    """An adapter's file could not be found, downloaded or checked (ends the prediction in error)."""
