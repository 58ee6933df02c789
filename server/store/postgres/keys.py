"""The key store in PostgreSQL: the ``api_keys`` table, beside the predictions.

The rules are the interface's (``server/store/keys.py``); the table is the SQLite one's, so both
backends answer alike. Every API replica reads the same table: a key created or revoked on one
host is seen by every other at its next request.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg

from server.store.keys import (
    KeyInfo,
    KeyStore,
)
from server.store.postgres.db import PostgresDatabase

MIGRATIONS: dict[int, list[str]] = {
    1: [
        """
        CREATE TABLE IF NOT EXISTS api_keys (
            seq          BIGSERIAL,                  -- creation order
            key_hash     TEXT PRIMARY KEY,           -- sha256(key), 64 hex chars
            key_id       TEXT NOT NULL UNIQUE,       -- first 32 hex chars of key_hash: the owner id
            name         TEXT NOT NULL,
            created_at   DOUBLE PRECISION NOT NULL,
            last_used_at DOUBLE PRECISION,
            revoked_at   DOUBLE PRECISION
        )
        """,
        "CREATE UNIQUE INDEX IF NOT EXISTS api_keys_active_name ON api_keys (name) WHERE revoked_at IS NULL",
    ],
}

_COLUMNS = "name, created_at, last_used_at, revoked_at, key_id"


def _info(row: dict) -> KeyInfo:
    return KeyInfo(**row)


class PostgresKeyStore(KeyStore):
    def __init__(
        self, db: PostgresDatabase, *, clock: Callable[[], float] = time.time, owns_db: bool = False
    ) -> None:
        """``owns_db``: the pool is this store's alone, closed by ``close()`` (a backend's stores share
        the prediction store's pool, which that store closes)."""
        self.db = db
        self.owns_db = owns_db
        super().__init__(clock=clock)
        db.migrate("api_keys", MIGRATIONS)

    def close(self) -> None:
        if self.owns_db:
            self.db.close()

    def __repr__(self) -> str:
        return "PostgresKeyStore()"

    def _insert_key(self, key_hash: str, key_id: str, name: str, created_at: float) -> bool:
        try:
            with self.db.transaction() as conn:
                conn.execute(
                    "INSERT INTO api_keys (key_hash, key_id, name, created_at) VALUES (%s, %s, %s, %s)",
                    (key_hash, key_id, name, created_at),
                )
        except psycopg.errors.UniqueViolation:  # the active name's unique index
            return False
        return True

    def list(self) -> list[KeyInfo]:
        with self.db.transaction() as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at, seq").fetchall()
        return [_info(r) for r in rows]

    def active(self, name: str) -> KeyInfo | None:
        with self.db.transaction() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM api_keys WHERE name = %s AND revoked_at IS NULL", (name,)
            ).fetchone()
        return _info(row) if row else None

    def revoke(self, name: str) -> bool:
        with self.db.transaction() as conn:
            cur = conn.execute(
                "UPDATE api_keys SET revoked_at = %s WHERE name = %s AND revoked_at IS NULL",
                (self._clock(), name),
            )
        return cur.rowcount > 0

    def lookup(self, key_hash: str) -> KeyInfo | None:
        with self.db.transaction() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM api_keys WHERE key_hash = %s AND revoked_at IS NULL", (key_hash,)
            ).fetchone()
        return _info(row) if row else None

    def has_keys(self) -> bool:
        with self.db.transaction() as conn:
            return conn.execute("SELECT 1 FROM api_keys LIMIT 1").fetchone() is not None

    def _record_use(self, key_id: str, when: float) -> None:
        with self.db.transaction() as conn:
            conn.execute("UPDATE api_keys SET last_used_at = %s WHERE key_id = %s", (when, key_id))
