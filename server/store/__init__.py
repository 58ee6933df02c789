"""The prediction store (see ``base.py`` for the interface and its rules)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from server.store.base import PredictionStore
from server.store.sqlite.store import SQLitePredictionStore

__all__ = ["PredictionStore", "SQLitePredictionStore", "open_store", "sqlite_file"]

_SQLITE_PREFIX = "sqlite:///"


def sqlite_file(url: str) -> tuple[Path, str]:
    """The SQLite file a store url names, as an absolute path, and its ``synchronous`` mode.

    - a filesystem path, or ``sqlite:///relative/path`` / ``sqlite:////absolute/path`` (the
      SQLAlchemy spelling), optionally ``?synchronous=NORMAL``; ``~`` is the user's home, a
      relative path is taken from the working directory. Every part of the server (predictions,
      keys, deliveries, the lock) reads the file's path from here, so they all name one file;
    - ``redis://``, ``rediss://``: not available in this build (ValueError).
    """
    url = url.strip()
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme in ("redis", "rediss"):
        raise ValueError(f"Redis support is not available in this build (store url {url!r})")
    if not scheme:
        path, synchronous = url, "FULL"
    else:
        if scheme != "sqlite" or not url.startswith(_SQLITE_PREFIX):
            raise ValueError(f"unsupported store url {url!r}: use a file path or sqlite:///path")
        path, _, query = url[len(_SQLITE_PREFIX) :].partition("?")
        options = {k: v[-1] for k, v in parse_qs(query).items()}
        unknown = set(options) - {"synchronous"}
        if unknown:
            raise ValueError(f"unknown store url option(s) {sorted(unknown)} in {url!r}")
        synchronous = options.get("synchronous", "FULL")
    if not path:
        raise ValueError(f"store url {url!r} names no file")
    if path == ":memory:" or path.startswith("file:"):
        # Every thread would get its own, empty, database (and a URI is not a file path).
        raise ValueError(f"store url {url!r}: SQLite needs a database file path")
    return Path(path).expanduser().resolve(), synchronous


def open_store(url: str) -> PredictionStore:
    """Open the store a config names (see ``sqlite_file`` for the urls understood)."""
    path, synchronous = sqlite_file(url)
    return SQLitePredictionStore(path, synchronous=synchronous)
