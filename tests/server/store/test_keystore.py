"""KeyStore: keys made on the command line, kept as hashes in the SQLite file."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from server.store.sqlite.keys import KeyInfo, KeyStore, hash_key, key_id_from_hash


class Clock:
    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "fluxserve.db"


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(db_path, clock):
    s = KeyStore(db_path, clock=clock)
    yield s
    s.close()


def test_create_returns_a_prefixed_unguessable_key(store):
    key = store.create("alice")
    assert key.startswith("fsk_")
    assert len(key) >= 40
    assert store.create("bob") != key


def test_only_the_hash_is_stored(store, db_path):
    key = store.create("alice")
    conn = sqlite3.connect(db_path)
    rows = conn.execute("SELECT * FROM api_keys").fetchall()
    conn.close()
    assert len(rows) == 1
    assert key not in repr(rows)
    assert hash_key(key) in rows[0]


def test_list_shows_created_keys_with_their_dates(store, clock):
    store.create("alice")
    clock.now += 5
    store.create("bob")
    keys = store.list()
    assert [k.name for k in keys] == ["alice", "bob"]
    assert keys[0].created_at == 1_700_000_000.0
    assert keys[0].last_used_at is None and keys[0].revoked_at is None
    assert all(len(k.key_id) == 32 for k in keys)


def test_lookup_finds_an_active_key_by_its_hash(store):
    key = store.create("alice")
    info = store.lookup(hash_key(key))
    assert isinstance(info, KeyInfo)
    assert info.name == "alice"
    assert info.key_id == key_id_from_hash(hash_key(key))


def test_lookup_of_an_unknown_hash_is_none(store):
    store.create("alice")
    assert store.lookup(hash_key("fsk_not-a-key")) is None


def test_revoke_stops_lookup_and_records_the_time(store, clock):
    key = store.create("alice")
    clock.now += 10
    assert store.revoke("alice") is True
    assert store.lookup(hash_key(key)) is None
    [info] = store.list()
    assert info.revoked and info.revoked_at == clock.now


def test_revoke_of_an_unknown_name_is_false(store):
    assert store.revoke("nobody") is False


def test_revoke_twice_is_false_the_second_time(store):
    store.create("alice")
    assert store.revoke("alice") is True
    assert store.revoke("alice") is False


def test_duplicate_active_name_is_refused(store):
    store.create("alice")
    with pytest.raises(ValueError, match="already exists"):
        store.create("alice")
    assert len(store.list()) == 1


def test_a_revoked_name_can_be_given_to_a_new_key(store):
    old = store.create("ci")
    store.revoke("ci")
    new = store.create("ci")
    assert store.lookup(hash_key(old)) is None
    assert store.lookup(hash_key(new)).name == "ci"
    assert [k.revoked for k in store.list()] == [True, False]


@pytest.mark.parametrize("name", ["", "   ", "has space", "-leading-dash", "x" * 65, "semi;colon", None])
def test_invalid_names_are_refused(store, name):
    with pytest.raises(ValueError):
        store.create(name)


@pytest.mark.parametrize("name", ["anonymous", "config-1", "Config-2"])
def test_names_the_keyring_uses_are_reserved(store, name):
    with pytest.raises(ValueError, match="reserved"):
        store.create(name)


def test_touch_records_last_use(store, clock):
    key = store.create("alice")
    info = store.lookup(hash_key(key))
    clock.now += 3
    store.touch(info.key_id)
    assert store.lookup(hash_key(key)).last_used_at == clock.now


def test_touch_writes_at_most_once_a_minute_per_key(store, clock):
    key = store.create("alice")
    key_id = store.lookup(hash_key(key)).key_id
    store.touch(key_id)
    first = clock.now
    clock.now += 30
    store.touch(key_id)
    assert store.lookup(hash_key(key)).last_used_at == first
    clock.now += 31
    store.touch(key_id)
    assert store.lookup(hash_key(key)).last_used_at == clock.now


def test_touch_throttle_is_per_key(store, clock):
    a = store.create("alice")
    b = store.create("bob")
    store.touch(store.lookup(hash_key(a)).key_id)
    clock.now += 1
    store.touch(store.lookup(hash_key(b)).key_id)
    assert store.lookup(hash_key(b)).last_used_at == clock.now


def test_keys_persist_across_instances(store, db_path):
    key = store.create("alice")
    store.close()
    again = KeyStore(db_path)
    try:
        assert again.lookup(hash_key(key)).name == "alice"
        assert [k.name for k in again.list()] == ["alice"]
    finally:
        again.close()


def test_the_table_lives_beside_other_tables_in_a_wal_file(db_path):
    conn = sqlite3.connect(db_path)
    conn.execute("CREATE TABLE predictions (id TEXT PRIMARY KEY)")
    conn.commit()
    conn.close()
    s = KeyStore(db_path)
    s.create("alice")
    s.close()
    conn = sqlite3.connect(db_path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    conn.close()
    assert {"predictions", "api_keys"} <= tables
    assert mode == "wal"


def test_has_keys_stays_true_after_every_key_is_revoked(store):
    assert store.has_keys() is False
    store.create("alice")
    store.revoke("alice")
    assert store.has_keys() is True


def test_each_thread_uses_its_own_connection(store):
    key = store.create("alice")
    results: list[object] = []

    def worker():
        results.append(store.lookup(hash_key(key)).name)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["alice"] * 4


def test_an_in_memory_database_is_refused():
    with pytest.raises(ValueError):
        KeyStore(":memory:")
