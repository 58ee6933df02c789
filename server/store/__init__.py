"""The stores behind the server, opened from one ``store_url``.

Three interfaces, each with its rules in its docstring: the prediction store (``base.py``), the
webhook delivery store (``deliveries.py``) and the key store (``keys.py``). ``open_backend``
opens all three on the url a config names, with the change feed that goes with them; callers
type against the interfaces. Two implementations:

- SQLite (``sqlite/``, the default): every table in one database file, one server at a time,
  the change feed in process;
- PostgreSQL (``postgres/``, ``postgresql://...``): one database shared by API replicas and
  worker hosts, the change feed over LISTEN/NOTIFY.
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from server.predictions.feed import ChangeFeed, InProcessChangeFeed
from server.store.base import PredictionStore
from server.store.deliveries import DeliveryStore
from server.store.keys import KeyStore
from server.store.sqlite.deliveries import SQLiteDeliveryStore
from server.store.sqlite.keys import SQLiteKeyStore
from server.store.sqlite.store import SQLitePredictionStore

__all__ = [
    "Backend",
    "display_store_url",
    "is_postgres",
    "DeliveryStore",
    "KeyStore",
    "PredictionStore",
    "SQLitePredictionStore",
    "open_backend",
    "open_delivery_store",
    "open_key_store",
    "open_store",
    "sqlite_file",
]

_SQLITE_PREFIX = "sqlite:///"
POSTGRES_SCHEMES = ("postgresql", "postgres")


def is_postgres(url: str) -> bool:
    """Whether a store url names a PostgreSQL database (``postgresql://`` or ``postgres://``)."""
    return "://" in url and urlsplit(url.strip()).scheme.lower() in POSTGRES_SCHEMES


def display_store_url(url: str) -> str:
    """A PostgreSQL url without its password (for messages and logs)."""
    parts = urlsplit(url.strip())
    user = f"{parts.username}@" if parts.username else ""
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{user}{host}{port}{parts.path}"


def sqlite_file(url: str) -> tuple[Path, str]:
    """The SQLite file a store url names, as an absolute path, and its ``synchronous`` mode.

    - a filesystem path, or ``sqlite:///relative/path`` / ``sqlite:////absolute/path`` (the
      SQLAlchemy spelling), optionally ``?synchronous=NORMAL``; ``~`` is the user's home, a
      relative path is taken from the working directory. Every part of the server (predictions,
      keys, deliveries, the lock) reads the file's path from here, so they all name one file;
    - ``redis://``, ``rediss://``: not available in this build (ValueError);
    - ``postgresql://``: not a file (ValueError; see ``is_postgres``).
    """
    url = url.strip()
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme in ("redis", "rediss"):
        raise ValueError(
            f"Redis cannot hold the predictions (store url {url!r}): use sqlite:///path or postgresql://..."
        )
    if scheme in POSTGRES_SCHEMES:
        raise ValueError(f"store url {url!r} names a PostgreSQL database, not a SQLite file")
    if not scheme:
        path, synchronous = url, "FULL"
    else:
        if scheme != "sqlite" or not url.startswith(_SQLITE_PREFIX):
            raise ValueError(
                f"unsupported store url {url!r}: use a file path, sqlite:///path or postgresql://..."
            )
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


def _postgres():
    """The PostgreSQL backend's package (psycopg is imported only when a config names it)."""
    try:
        postgres = importlib.import_module("server.store.postgres")
    except ImportError as exc:
        raise ValueError(
            f"a PostgreSQL store needs psycopg ({exc.name} is missing): pip install 'fluxserve[postgres]'"
        ) from None
    return postgres


def open_store(url: str) -> PredictionStore:
    """Open the prediction store a config names (see ``sqlite_file`` and ``is_postgres``)."""
    if is_postgres(url):
        return _postgres().open_postgres_store(url)
    path, synchronous = sqlite_file(url)
    return SQLitePredictionStore(path, synchronous=synchronous)


def open_key_store(url: str) -> KeyStore:
    """Open the key store of ``store_url`` (the same database as the predictions)."""
    if is_postgres(url):
        return _postgres().open_postgres_keys(url)
    return SQLiteKeyStore(sqlite_file(url)[0])


def open_delivery_store(url: str) -> DeliveryStore:
    """Open the webhook delivery store of ``store_url`` (the same database as the predictions)."""
    if is_postgres(url):
        return _postgres().open_postgres_deliveries(url)
    return SQLiteDeliveryStore(sqlite_file(url)[0])


@dataclass
class Backend:
    """Every store the server uses, opened on one ``store_url``, and the change feed that tells
    every process sharing them what changed."""

    predictions: PredictionStore
    deliveries: DeliveryStore
    keys: KeyStore
    feed: ChangeFeed

    def close(self) -> None:
        for store in (self.keys, self.deliveries, self.predictions):
            store.close()


def open_backend(url: str, *, predictions: PredictionStore | None = None) -> Backend:
    """Open the stores ``url`` names. ``predictions``: a prediction store the caller opened (and
    checked) already, on that url, to use instead of opening another."""
    if is_postgres(url):
        return _postgres().open_postgres(url, predictions=predictions)
    opened = predictions is None
    predictions = predictions or open_store(url)
    try:
        return Backend(predictions, open_delivery_store(url), open_key_store(url), InProcessChangeFeed())
    except BaseException:
        if opened:
            with contextlib.suppress(Exception):
                predictions.close()
        raise
