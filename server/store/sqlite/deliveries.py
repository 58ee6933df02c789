"""The delivery store in SQLite: ``webhook_deliveries`` and ``webhook_signing_keys``, in the same
database file as the predictions.

The rules are the interface's (``server/store/deliveries.py``). Claiming runs in one write
transaction, so two processes sharing the file never lease the same row. Connections (one per
thread, WAL, busy timeout) come from ``server/store/sqlite/db.py``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from typing import Any

from server.store.deliveries import PENDING, Delivery, DeliveryStore, new_signing_secret
from server.store.sqlite.db import SQLiteDatabase

BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id              TEXT PRIMARY KEY,         -- also the Standard Webhooks message id
    prediction_id   TEXT NOT NULL,
    event           TEXT NOT NULL,            -- 'finished' (Eachlabs) or 'completed' (Replicate)
    flavour         TEXT NOT NULL,            -- 'eachlabs' or 'replicate' (signed at send time)
    url             TEXT NOT NULL,
    payload         TEXT NOT NULL,            -- JSON
    headers         TEXT NOT NULL DEFAULT '{}',  -- JSON object
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    state           TEXT NOT NULL DEFAULT 'pending',  -- pending, delivered, failed
    last_error      TEXT,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS webhook_deliveries_once ON webhook_deliveries (prediction_id, event);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (state, next_attempt_at);
-- One secret per owner. A row named 'default' is the single server-wide secret of earlier
-- versions: no longer used (it was known to every key), and no owner id can be that name.
CREATE TABLE IF NOT EXISTS webhook_signing_keys (
    name       TEXT PRIMARY KEY,              -- the owner: a key id, or 'anonymous'
    secret     TEXT NOT NULL,                 -- whsec_<base64 key>
    created_at REAL NOT NULL                  -- when this secret was made (a rotation resets it)
);
"""

_COLUMNS = (
    "id, prediction_id, event, flavour, url, payload, headers, attempts, next_attempt_at, state, "
    "last_error, created_at, updated_at"
)


def _row(row: sqlite3.Row) -> Delivery:
    return Delivery(
        id=row["id"],
        prediction_id=row["prediction_id"],
        event=row["event"],
        flavour=row["flavour"],
        url=row["url"],
        payload=json.loads(row["payload"]),
        headers=json.loads(row["headers"]),
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        state=row["state"],
        last_error=row["last_error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


class SQLiteDeliveryStore(DeliveryStore):
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._db = SQLiteDatabase(path, busy_timeout_ms=BUSY_TIMEOUT_MS, schema=_SCHEMA)
        self.path = self._db.path

    def __repr__(self) -> str:
        return f"SQLiteDeliveryStore(path={self.path!r})"

    def close(self) -> None:
        self._db.close()

    # -- deliveries -----------------------------------------------------------------------

    def enqueue(
        self,
        prediction_id: str,
        event: str,
        flavour: str,
        url: str,
        payload: Any,
        headers: dict[str, str] | None = None,
        *,
        now: float | None = None,
    ) -> str | None:
        """Add a pending delivery, due now. Returns its id, or None when this prediction already
        has a delivery for this event (nothing is changed)."""
        now = time.time() if now is None else now
        delivery_id = "msg_" + uuid.uuid4().hex
        cur = self._db.connection().execute(
            "INSERT OR IGNORE INTO webhook_deliveries (id, prediction_id, event, flavour, url, payload, "
            "headers, next_attempt_at, state, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                delivery_id, prediction_id, event, flavour, url,
                json.dumps(payload, ensure_ascii=False, separators=(",", ":")),
                json.dumps(headers or {}), now, PENDING, now, now,
            ),
        )  # fmt: skip
        return delivery_id if cur.rowcount > 0 else None

    def get(self, delivery_id: str) -> Delivery | None:
        row = (
            self._db.connection()
            .execute(f"SELECT {_COLUMNS} FROM webhook_deliveries WHERE id = ?", (delivery_id,))
            .fetchone()
        )
        return _row(row) if row is not None else None

    def with_deliveries(self, prediction_ids: list[str]) -> set[str]:
        """Those of the ids that have at least one delivery row."""
        found: set[str] = set()
        conn = self._db.connection()
        for start in range(0, len(prediction_ids), 500):  # under SQLite's bound-variable limit
            chunk = prediction_ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            rows = conn.execute(
                f"SELECT DISTINCT prediction_id FROM webhook_deliveries WHERE prediction_id IN ({marks})",
                chunk,
            ).fetchall()
            found.update(r[0] for r in rows)
        return found

    def for_prediction(self, prediction_id: str) -> list[Delivery]:
        rows = (
            self._db.connection()
            .execute(
                f"SELECT {_COLUMNS} FROM webhook_deliveries WHERE prediction_id = ? ORDER BY created_at",
                (prediction_id,),
            )
            .fetchall()
        )
        return [_row(r) for r in rows]

    def claim_due(self, lease_s: float, limit: int = 16, *, now: float | None = None) -> list[Delivery]:
        """Pending deliveries due now, oldest first; each is leased (its next_attempt_at moved
        ``lease_s`` ahead) so no other process takes it while this one posts it."""
        now = time.time() if now is None else now
        with self._db.transaction() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM webhook_deliveries WHERE state = ? AND next_attempt_at <= ? "
                "ORDER BY next_attempt_at LIMIT ?",
                (PENDING, now, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE webhook_deliveries SET next_attempt_at = ?, updated_at = ? WHERE id = ?",
                [(now + lease_s, now, r["id"]) for r in rows],
            )
        return [_row(r) for r in rows]

    def record_attempt(
        self,
        delivery_id: str,
        attempts: int,
        state: str,
        *,
        next_attempt_at: float | None = None,
        error: str | None = None,
        now: float | None = None,
    ) -> None:
        """Store the outcome of attempt number ``attempts``: delivered, failed for good, or
        pending again at ``next_attempt_at``."""
        now = time.time() if now is None else now
        self._db.connection().execute(
            "UPDATE webhook_deliveries SET attempts = ?, state = ?, last_error = ?, updated_at = ?, "
            "next_attempt_at = COALESCE(?, next_attempt_at) WHERE id = ?",
            (attempts, state, error, now, next_attempt_at, delivery_id),
        )

    def release(self, delivery_id: str, *, due_at: float | None = None, now: float | None = None) -> None:
        """Give a leased delivery back, due at ``due_at`` (default now), its attempt count
        unchanged: its attempt did not run to the end, or did not start."""
        now = time.time() if now is None else now
        self._db.connection().execute(
            "UPDATE webhook_deliveries SET next_attempt_at = ?, updated_at = ? WHERE id = ? AND state = ?",
            (now if due_at is None else due_at, now, delivery_id, PENDING),
        )

    def next_due_at(self) -> float | None:
        """When the earliest pending delivery is due (None when nothing is pending)."""
        row = (
            self._db.connection()
            .execute("SELECT min(next_attempt_at) FROM webhook_deliveries WHERE state = ?", (PENDING,))
            .fetchone()
        )
        return row[0] if row is not None else None

    def prune(self, finished_before: float) -> int:
        """Delete delivered and failed rows last touched before the given time."""
        cur = self._db.connection().execute(
            "DELETE FROM webhook_deliveries WHERE state != ? AND updated_at < ?", (PENDING, finished_before)
        )
        return cur.rowcount

    # -- signing secrets -------------------------------------------------------------------

    def signing_secret(self, owner: str) -> str:
        """``owner``'s webhook signing secret, ``whsec_<base64 of 32 random bytes>``: made on
        first use, then the same until rotated (every process sharing the file sees the same)."""
        conn = self._db.connection()
        row = conn.execute("SELECT secret FROM webhook_signing_keys WHERE name = ?", (owner,)).fetchone()
        if row is not None:
            return row[0]
        conn.execute(
            "INSERT OR IGNORE INTO webhook_signing_keys (name, secret, created_at) VALUES (?, ?, ?)",
            (owner, new_signing_secret(), time.time()),
        )
        return conn.execute("SELECT secret FROM webhook_signing_keys WHERE name = ?", (owner,)).fetchone()[0]

    def rotate_signing_secret(self, owner: str) -> str:
        """Replace ``owner``'s secret with a new random one and return it. The old one stops
        signing at once: every delivery from now on, queued ones included, uses the new one."""
        secret = new_signing_secret()
        self._db.connection().execute(
            "INSERT INTO webhook_signing_keys (name, secret, created_at) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET secret = excluded.secret, created_at = excluded.created_at",
            (owner, secret, time.time()),
        )
        return secret
