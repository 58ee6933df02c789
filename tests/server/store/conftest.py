"""One fixture per store interface, each yielding every implementation in turn: the behaviour
suite (test_stores.py) is written once against the interfaces and runs on each. A new backend
adds its name to BACKENDS and a branch to ``backend_url``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from server.store import DeliveryStore, KeyStore, PredictionStore, open_backend, sqlite_file

BACKENDS = ["sqlite", "postgres"]


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Where a test's SQLite database file goes (its folder exists)."""
    path = tmp_path / "data" / "fluxserve.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


# -- SQLite's own (its file, its migrations, its locks) ---------------------------------------------


@pytest.fixture
def sqlite_store(db_path: Path):
    from server.store.sqlite.store import SQLitePredictionStore

    store = SQLitePredictionStore(db_path)
    yield store
    store.close()


@pytest.fixture
def sqlite_keys(db_path: Path, clock: Clock):
    from server.store.sqlite.keys import SQLiteKeyStore

    store = SQLiteKeyStore(db_path, clock=clock)
    yield store
    store.close()


# -- every implementation of each interface ---------------------------------------------------------


@pytest.fixture(params=BACKENDS)
def backend_url(request: pytest.FixtureRequest, db_path: Path) -> str:
    """A fresh, empty database of each backend: a SQLite file, or a PostgreSQL database on the
    session's throwaway cluster (started on first use; the suite fails when it cannot start)."""
    if request.param == "postgres":
        return request.getfixturevalue("postgres_server").new_database()
    return f"sqlite:///{db_path}"


@pytest.fixture
def predictions(backend_url: str) -> Iterator[PredictionStore]:
    backend = open_backend(backend_url)
    yield backend.predictions
    backend.close()


@pytest.fixture
def keys(backend_url: str, clock: Clock) -> Iterator[KeyStore]:
    if backend_url.startswith("sqlite"):
        from server.store.sqlite.keys import SQLiteKeyStore

        store: KeyStore = SQLiteKeyStore(sqlite_file(backend_url)[0], clock=clock)
        yield store
        store.close()
        return
    from server.store.postgres import PostgresDatabase, PostgresKeyStore

    db = PostgresDatabase(backend_url)
    yield PostgresKeyStore(db, clock=clock)
    db.close()


@pytest.fixture
def deliveries(backend_url: str) -> Iterator[DeliveryStore]:
    backend = open_backend(backend_url)
    yield backend.deliveries
    backend.close()
