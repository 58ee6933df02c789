"""The prediction store (see ``base.py`` for the interface and its rules)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from server.store.base import (
    ALL_STATUSES,
    CANCELLED,
    ERROR,
    IN_FLIGHT,
    PROCESSING,
    STARTING,
    SUCCESS,
    TERMINAL,
    WEBHOOK_SIGNER,
    WORKER_LOST,
    CancelOutcome,
    InFlightLimitExceeded,
    ListFilter,
    Prediction,
    PredictionStore,
)
from server.store.sqlite import SQLitePredictionStore

__all__ = [
    "ALL_STATUSES",
    "CANCELLED",
    "ERROR",
    "IN_FLIGHT",
    "PROCESSING",
    "STARTING",
    "SUCCESS",
    "TERMINAL",
    "WEBHOOK_SIGNER",
    "WORKER_LOST",
    "CancelOutcome",
    "InFlightLimitExceeded",
    "ListFilter",
    "Prediction",
    "PredictionStore",
    "SQLitePredictionStore",
    "open_store",
    "sqlite_file",
]

_SQLITE_PREFIX = "sqlite:///"


def sqlite_file(url: str) -> tuple[str, str]:
    """The SQLite file a store url names, and its ``synchronous`` mode.

    - a filesystem path, or ``sqlite:///relative/path`` / ``sqlite:////absolute/path`` (the
      SQLAlchemy spelling), optionally ``?synchronous=NORMAL``;
    - ``redis://``, ``rediss://``: not available in this build (ValueError).
    """
    url = url.strip()
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme in ("redis", "rediss"):
        raise ValueError(f"Redis support is not available in this build (store url {url!r})")
    if not scheme:
        return url, "FULL"
    if scheme != "sqlite" or not url.startswith(_SQLITE_PREFIX):
        raise ValueError(f"unsupported store url {url!r}: use a file path or sqlite:///path")
    path, _, query = url[len(_SQLITE_PREFIX) :].partition("?")
    if not path:
        raise ValueError(f"store url {url!r} names no file")
    options = {k: v[-1] for k, v in parse_qs(query).items()}
    unknown = set(options) - {"synchronous"}
    if unknown:
        raise ValueError(f"unknown store url option(s) {sorted(unknown)} in {url!r}")
    return path, options.get("synchronous", "FULL")


def open_store(url: str) -> PredictionStore:
    """Open the store a config names (see ``sqlite_file`` for the urls understood)."""
    path, synchronous = sqlite_file(url)
    return SQLitePredictionStore(path, synchronous=synchronous)
