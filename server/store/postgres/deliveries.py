"""Webhook deliveries and each key's signing secret in PostgreSQL.

The rules are the interface's (``server/store/deliveries.py``). Every API replica runs a
dispatcher; ``claim_due`` takes due rows with ``FOR UPDATE SKIP LOCKED`` and pushes them a lease
ahead in the same statement, so exactly one replica posts each attempt, and a replica that dies
mid-attempt leaves the row to be retried once the lease has passed.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from psycopg.types.json import Jsonb

from server.store.deliveries import PENDING, Delivery, DeliveryStore, new_signing_secret
from server.store.postgres.db import PostgresDatabase

MIGRATIONS: dict[int, list[str]] = {
    1: [
        """
        CREATE TABLE IF NOT EXISTS webhook_deliveries (
            id              TEXT PRIMARY KEY,          -- also the Standard Webhooks message id
            prediction_id   TEXT NOT NULL,
            event           TEXT NOT NULL,
            flavour         TEXT NOT NULL,
            url             TEXT NOT NULL,
            payload         JSONB NOT NULL,
            headers         JSONB NOT NULL DEFAULT '{}',
            attempts        INTEGER NOT NULL DEFAULT 0,
            next_attempt_at DOUBLE PRECISION NOT NULL,
            state           TEXT NOT NULL DEFAULT 'pending',
            last_error      TEXT,
            created_at      DOUBLE PRECISION NOT NULL,
            updated_at      DOUBLE PRECISION NOT NULL
        )
        """,
        "CREATE UNIQUE INDEX IF NOT EXISTS webhook_deliveries_once "
        "ON webhook_deliveries (prediction_id, event)",
        "CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (next_attempt_at) "
        "WHERE state = 'pending'",
        """
        CREATE TABLE IF NOT EXISTS webhook_signing_keys (
            name       TEXT PRIMARY KEY,               -- the owner: a key id, or 'anonymous'
            secret     TEXT NOT NULL,                  -- whsec_<base64 key>
            created_at DOUBLE PRECISION NOT NULL
        )
        """,
    ],
}

_COLUMNS = (
    "id, prediction_id, event, flavour, url, payload, headers, attempts, next_attempt_at, state, "
    "last_error, created_at, updated_at"
)

# Due rows, oldest first, locked so a concurrent claimer skips them, and leased in one statement.
CLAIM_DUE = f"""
WITH due AS (
    SELECT id, next_attempt_at AS was_due FROM webhook_deliveries
    WHERE state = 'pending' AND next_attempt_at <= %(now)s
    ORDER BY next_attempt_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE webhook_deliveries d SET next_attempt_at = %(now)s + %(lease)s, updated_at = %(now)s
FROM due WHERE d.id = due.id
RETURNING {", ".join("d." + c.strip() for c in _COLUMNS.split(","))}, due.was_due
"""


def _delivery(row: dict[str, Any]) -> Delivery:
    return Delivery(**row)


class PostgresDeliveryStore(DeliveryStore):
    def __init__(self, db: PostgresDatabase, *, owns_db: bool = False) -> None:
        """``owns_db``: the pool is this store's alone, closed by ``close()`` (a backend's stores share
        the prediction store's pool, which that store closes)."""
        self.db = db
        self.owns_db = owns_db
        db.migrate("webhook_deliveries", MIGRATIONS)

    def close(self) -> None:
        if self.owns_db:
            self.db.close()

    def __repr__(self) -> str:
        return "PostgresDeliveryStore()"

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
        now = time.time() if now is None else now
        delivery_id = "msg_" + uuid.uuid4().hex
        with self.db.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO webhook_deliveries (id, prediction_id, event, flavour, url, payload, headers, "
                "next_attempt_at, state, created_at, updated_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (prediction_id, event) DO NOTHING",
                (
                    delivery_id, prediction_id, event, flavour, url, Jsonb(payload), Jsonb(headers or {}),
                    now, PENDING, now, now,
                ),
            )  # fmt: skip
        return delivery_id if cur.rowcount > 0 else None

    def get(self, delivery_id: str) -> Delivery | None:
        with self.db.transaction() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM webhook_deliveries WHERE id = %s", (delivery_id,)
            ).fetchone()
        return _delivery(row) if row else None

    def with_deliveries(self, prediction_ids: list[str]) -> set[str]:
        with self.db.transaction() as conn:
            rows = conn.execute(
                "SELECT DISTINCT prediction_id FROM webhook_deliveries WHERE prediction_id = ANY(%s)",
                (prediction_ids,),
            ).fetchall()
        return {r["prediction_id"] for r in rows}

    def for_prediction(self, prediction_id: str) -> list[Delivery]:
        with self.db.transaction() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM webhook_deliveries WHERE prediction_id = %s ORDER BY created_at",
                (prediction_id,),
            ).fetchall()
        return [_delivery(r) for r in rows]

    def claim_due(self, lease_s: float, limit: int = 16, *, now: float | None = None) -> list[Delivery]:
        now = time.time() if now is None else now
        with self.db.transaction() as conn:
            rows = conn.execute(CLAIM_DUE, {"now": now, "limit": limit, "lease": lease_s}).fetchall()
        # Callers see each row as it was when due (the lease moved next_attempt_at), oldest first.
        claimed = []
        for row in rows:
            row["next_attempt_at"] = row.pop("was_due")
            claimed.append(_delivery(row))
        return sorted(claimed, key=lambda d: d.next_attempt_at)

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
        now = time.time() if now is None else now
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE webhook_deliveries SET attempts = %s, state = %s, last_error = %s, updated_at = %s, "
                "next_attempt_at = COALESCE(%s, next_attempt_at) WHERE id = %s",
                (attempts, state, error, now, next_attempt_at, delivery_id),
            )

    def release(self, delivery_id: str, *, due_at: float | None = None, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE webhook_deliveries SET next_attempt_at = %s, updated_at = %s "
                "WHERE id = %s AND state = %s",
                (now if due_at is None else due_at, now, delivery_id, PENDING),
            )

    def next_due_at(self) -> float | None:
        with self.db.transaction() as conn:
            row = conn.execute(
                "SELECT min(next_attempt_at) AS due FROM webhook_deliveries WHERE state = %s", (PENDING,)
            ).fetchone()
        return row["due"] if row else None

    def prune(self, finished_before: float) -> int:
        with self.db.transaction() as conn:
            cur = conn.execute(
                "DELETE FROM webhook_deliveries WHERE state != %s AND updated_at < %s",
                (PENDING, finished_before),
            )
        return cur.rowcount

    def signing_secret(self, owner: str) -> str:
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO webhook_signing_keys (name, secret, created_at) VALUES (%s, %s, %s) "
                "ON CONFLICT (name) DO NOTHING",
                (owner, new_signing_secret(), time.time()),
            )
            return conn.execute(
                "SELECT secret FROM webhook_signing_keys WHERE name = %s", (owner,)
            ).fetchone()["secret"]

    def rotate_signing_secret(self, owner: str) -> str:
        secret = new_signing_secret()
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO webhook_signing_keys (name, secret, created_at) VALUES (%s, %s, %s) "
                "ON CONFLICT (name) DO UPDATE SET secret = EXCLUDED.secret, created_at = EXCLUDED.created_at",
                (owner, secret, time.time()),
            )
        return secret
