"""Which backend a store url opens, and the errors that name what is wrong with it."""

from __future__ import annotations

import sys

import pytest

from server.predictions.feed import InProcessChangeFeed
from server.store import open_backend


def test_a_file_url_opens_the_sqlite_backend_with_the_in_process_feed(tmp_path):
    backend = open_backend(f"sqlite:///{tmp_path / 'f.db'}")
    try:
        assert type(backend.feed) is InProcessChangeFeed
        assert {type(s).__name__ for s in (backend.predictions, backend.deliveries, backend.keys)} == {
            "SQLitePredictionStore",
            "SQLiteDeliveryStore",
            "SQLiteKeyStore",
        }
    finally:
        backend.close()


def test_a_postgresql_url_opens_the_shared_backend_and_its_listening_feed(postgres_server):
    backend = open_backend(postgres_server.new_database())
    try:
        assert type(backend.feed).__name__ == "PostgresChangeFeed"
        assert type(backend.predictions).__name__ == "PostgresPredictionStore"
    finally:
        backend.close()


def test_a_postgresql_url_without_the_driver_says_which_extra_to_install(monkeypatch):
    for name in [
        m for m in sys.modules if m == "psycopg" or m.startswith(("psycopg.", "server.store.postgres"))
    ]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if it were not installed
    with pytest.raises(ValueError, match=r"fluxserve\[postgres\]"):
        open_backend("postgresql://db.example/fluxserve")
