"""A small Python client for a fluxserve server (the Eachlabs prediction routes), and the
`fluxserve client ...` commands built on it (``cli.py``, ``batch.py``)."""

from server.client.api import (
    FluxAPIError,
    FluxClient,
    FluxConnectionError,
    WaitTimeout,
    output_urls,
    parse_progress,
    parse_seed,
)

__all__ = [
    "FluxAPIError",
    "FluxClient",
    "FluxConnectionError",
    "WaitTimeout",
    "output_urls",
    "parse_progress",
    "parse_seed",
]
