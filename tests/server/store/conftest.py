"""One fixture per store interface, each yielding every implementation in turn: the behaviour
suite (test_stores.py) is written once against the interfaces and runs on each. A new backend
adds its name to BACKENDS and a branch to each opener."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from server.store import DeliveryStore, KeyStore, PredictionStore

BACKENDS = ["sqlite"]


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
def predictions(request: pytest.FixtureRequest, db_path: Path) -> Iterator[PredictionStore]:
    from server.store.sqlite.store import SQLitePredictionStore

    store = SQLitePredictionStore(db_path)
    yield store
    store.close()


@pytest.fixture(params=BACKENDS)
def keys(request: pytest.FixtureRequest, db_path: Path, clock: Clock) -> Iterator[KeyStore]:
    from server.store.sqlite.keys import SQLiteKeyStore

    store = SQLiteKeyStore(db_path, clock=clock)
    yield store
    store.close()


@pytest.fixture(params=BACKENDS)
def deliveries(request: pytest.FixtureRequest, db_path: Path) -> Iterator[DeliveryStore]:
    from server.store.sqlite.deliveries import SQLiteDeliveryStore

    store = SQLiteDeliveryStore(db_path)
    yield store
    store.close()
