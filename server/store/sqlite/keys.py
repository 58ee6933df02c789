"""The key store in SQLite: the ``api_keys`` table, in the same database file as the predictions.

The rules are the interface's (``server/store/keys.py``). Every method is thread-safe: each
thread gets its own connection (WAL, busy_timeout) from ``server/store/sqlite/db.py``, like the
prediction store. The rules, for operators: docs/security.md.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable

from server.store.keys import (
    KeyInfo,
    KeyStore,
)
from server.store.sqlite.db import SQLiteDatabase

BUSY_TIMEOUT_MS = 5000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_hash     TEXT PRIMARY KEY,          -- sha256(key), 64 hex chars
    key_id       TEXT NOT NULL UNIQUE,      -- first 32 hex chars of key_hash: the owner id
    name         TEXT NOT NULL,
    created_at   REAL NOT NULL,
    last_used_at REAL,
    revoked_at   REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS api_keys_active_name
    ON api_keys (name) WHERE revoked_at IS NULL;
"""

_COLUMNS = "name, created_at, last_used_at, revoked_at, key_id"


class SQLiteKeyStore(KeyStore):
    def __init__(self, path: str | os.PathLike[str], *, clock: Callable[[], float] = time.time):
        self._db = SQLiteDatabase(path, busy_timeout_ms=BUSY_TIMEOUT_MS, schema=_SCHEMA)
        self.path = self._db.path
        super().__init__(clock=clock)

    def __repr__(self) -> str:
        return f"SQLiteKeyStore(path={self.path!r})"

    def close(self) -> None:
        """Close every connection this instance opened. Call it once no thread uses the store."""
        self._db.close()

    # -- keys ------------------------------------------------------------------------------

    def _insert_key(self, key_hash: str, key_id: str, name: str, created_at: float) -> bool:
        try:
            with self._db.transaction() as conn:
                conn.execute(
                    "INSERT INTO api_keys (key_hash, key_id, name, created_at) VALUES (?, ?, ?, ?)",
                    (key_hash, key_id, name, created_at),
                )
        except sqlite3.IntegrityError:  # the active name's unique index
            return False
        return True

    def list(self) -> list[KeyInfo]:
        """Every key ever created, revoked ones included, oldest first."""
        rows = (
            self._db.connection()
            .execute(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at, rowid")
            .fetchall()
        )
        return [KeyInfo(*row) for row in rows]

    def active(self, name: str) -> KeyInfo | None:
        """The active key named ``name``; None when there is none (unknown or revoked)."""
        row = (
            self._db.connection()
            .execute(f"SELECT {_COLUMNS} FROM api_keys WHERE name = ? AND revoked_at IS NULL", (name,))
            .fetchone()
        )
        return KeyInfo(*row) if row else None

    def revoke(self, name: str) -> bool:
        """Revoke the active key named ``name``. False when there is none."""
        with self._db.transaction() as conn:
            cur = conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                (self._clock(), name),
            )
        return cur.rowcount > 0

    def lookup(self, key_hash: str) -> KeyInfo | None:
        """The active key whose sha256 hex is ``key_hash``; None if unknown or revoked."""
        row = (
            self._db.connection()
            .execute(
                f"SELECT {_COLUMNS} FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL",
                (key_hash,),
            )
            .fetchone()
        )
        return KeyInfo(*row) if row else None

    def has_keys(self) -> bool:
        """True once any key has been created, even if every key is revoked since."""
        return self._db.connection().execute("SELECT 1 FROM api_keys LIMIT 1").fetchone() is not None

    def _record_use(self, key_id: str, when: float) -> None:
        with self._db.transaction() as conn:
            conn.execute("UPDATE api_keys SET last_used_at = ? WHERE key_id = ?", (when, key_id))
