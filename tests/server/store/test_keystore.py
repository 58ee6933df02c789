"""The SQLite key store's own behaviour: what it keeps in the file, connections, the file itself.
The key store's rules are tested on every implementation in test_stores.py."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from server.store.keys import hash_key
from server.store.sqlite.keys import SQLiteKeyStore


def test_only_the_hash_is_stored(sqlite_keys, db_path):
    key = sqlite_keys.create("alice")
    conn = sqlite3.connect(db_path)
    rows = conn.execute("SELECT * FROM api_keys").fetchall()
    conn.close()
    assert len(rows) == 1
    assert key not in repr(rows)
    assert hash_key(key) in rows[0]


def test_keys_persist_across_instances(sqlite_keys, db_path):
    key = sqlite_keys.create("alice")
    sqlite_keys.close()
    again = SQLiteKeyStore(db_path)
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
    s = SQLiteKeyStore(db_path)
    s.create("alice")
    s.close()
    conn = sqlite3.connect(db_path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    conn.close()
    assert {"predictions", "api_keys"} <= tables
    assert mode == "wal"


def test_each_thread_uses_its_own_connection(sqlite_keys):
    key = sqlite_keys.create("alice")
    results: list[object] = []

    def worker():
        results.append(sqlite_keys.lookup(hash_key(key)).name)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["alice"] * 4


def test_an_in_memory_database_is_refused():
    with pytest.raises(ValueError):
        SQLiteKeyStore(":memory:")
