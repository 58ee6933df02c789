"""The PostgreSQL backend: predictions, webhook deliveries and API keys in one database that
several API replicas and worker hosts share (psycopg 3, psycopg_pool), and a change feed over
LISTEN/NOTIFY."""

from __future__ import annotations

from typing import TYPE_CHECKING

from server.store.postgres.db import PostgresDatabase
from server.store.postgres.deliveries import PostgresDeliveryStore
from server.store.postgres.feed import PostgresChangeFeed, new_origin
from server.store.postgres.keys import PostgresKeyStore
from server.store.postgres.store import PostgresPredictionStore

if TYPE_CHECKING:
    from server.store import Backend
    from server.store.base import PredictionStore


def open_postgres(url: str, *, predictions: PredictionStore | None = None) -> Backend:
    """The three stores on one connection pool (the prediction store's: closing it closes the
    pool), and the LISTEN/NOTIFY feed; migrations applied first."""
    from server.store import Backend

    if predictions is not None and not isinstance(predictions, PostgresPredictionStore):
        raise TypeError(f"a PostgreSQL backend needs a PostgreSQL prediction store, not {predictions!r}")
    store = predictions or open_postgres_store(url)
    try:
        deliveries, keys = PostgresDeliveryStore(store.db), PostgresKeyStore(store.db)
    except BaseException:
        if predictions is None:
            store.close()
        raise
    return Backend(store, deliveries, keys, feed=PostgresChangeFeed(url, store.origin))


def open_postgres_store(url: str) -> PostgresPredictionStore:
    """The prediction store alone, on a pool of its own (closed with it)."""
    return PostgresPredictionStore(PostgresDatabase(url), new_origin())


def open_postgres_keys(url: str) -> PostgresKeyStore:
    """The key store alone (the ``keys`` commands), on a pool of its own that its close() closes."""
    return PostgresKeyStore(PostgresDatabase(url), owns_db=True)


def open_postgres_deliveries(url: str) -> PostgresDeliveryStore:
    """The delivery store alone, on a pool of its own that its close() closes."""
    return PostgresDeliveryStore(PostgresDatabase(url), owns_db=True)


__all__ = [
    "PostgresChangeFeed",
    "PostgresDatabase",
    "PostgresDeliveryStore",
    "PostgresKeyStore",
    "PostgresPredictionStore",
    "open_postgres",
    "open_postgres_deliveries",
    "open_postgres_keys",
    "open_postgres_store",
]
