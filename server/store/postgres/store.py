"""PostgreSQL prediction store: one database shared by API replicas and worker hosts.

The same rules as every store (``server/store/base.py``), kept by PostgreSQL's transactions
rather than by one process:

- **claim** is ``FOR UPDATE SKIP LOCKED`` (the queue claim of Procrastinate, PgQueuer, River...):
  two hosts claiming at once never take the same row, and neither waits for the other;
- the claim is **fair across keys**: the next job is the oldest queued job of the key with the
  fewest jobs running, so one key's batch of a thousand does not starve another key's single
  image (InvokeAI's round-robin dequeue is the same idea);
- the per-key **in-flight limit** is counted under a transaction-scoped advisory lock on the
  owner, so two API replicas creating for one key at once cannot both pass it;
- times are unix seconds (double precision), as in the SQLite file; lease expiry is judged on
  the database's clock, so hosts whose clocks drift apart still agree on which lease expired;
- the transactions that create, ask to cancel, requeue or end a prediction also ``NOTIFY`` the
  change feed's channel (delivered at commit): every replica and worker host hears of it.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from server.predictions.feed import ChangeKind
from server.predictions.model import (
    ALL_STATUSES,
    CANCELLED,
    ERROR,
    IN_FLIGHT,
    PROCESSING,
    STARTING,
    TERMINAL,
    WEBHOOK_SIGNER,
    WORKER_LOST,
    CancelOutcome,
    InFlightLimitExceeded,
    Lease,
    ListFilter,
    Prediction,
    Preview,
)
from server.store.base import (
    DEFAULT_LEASE_S,
    FAILED,
    LOST_LOGS,
    LOST_REQUEUE_NOTE,
    REQUEUED,
    PredictionStore,
    takes_preview,
)
from server.store.hosts import HostReport
from server.store.postgres.db import PostgresDatabase, is_outage
from server.store.postgres.feed import CHANNEL, payload
from server.store.postgres.hosts import PostgresHosts

# MIGRATIONS[v] brings the tables from version v-1 to v. Append, never edit a shipped entry.
MIGRATIONS: dict[int, list[str]] = {
    1: [
        """
        CREATE TABLE IF NOT EXISTS predictions (
            seq              BIGSERIAL,                      -- FIFO tie-break
            id               TEXT PRIMARY KEY,
            owner            TEXT NOT NULL,
            model            TEXT NOT NULL,
            input            JSONB NOT NULL,
            params           JSONB NOT NULL DEFAULT '{}',
            status           TEXT NOT NULL,
            output           JSONB NOT NULL DEFAULT '[]',    -- file names, in order
            logs             TEXT NOT NULL DEFAULT '',
            error            TEXT,
            created_at       DOUBLE PRECISION NOT NULL,
            started_at       DOUBLE PRECISION,
            completed_at     DOUBLE PRECISION,
            predict_time     DOUBLE PRECISION,
            attempts         INTEGER NOT NULL DEFAULT 0,
            worker_id        TEXT,
            lease_expires_at DOUBLE PRECISION,
            cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
            data_removed     BOOLEAN NOT NULL DEFAULT FALSE,
            webhook_url      TEXT,
            webhook_secret   TEXT,
            extra            JSONB NOT NULL DEFAULT '{}'
        )
        """,
        "CREATE INDEX IF NOT EXISTS predictions_queue ON predictions (created_at, seq) "
        "WHERE status = 'starting'",
        "CREATE INDEX IF NOT EXISTS predictions_running ON predictions (owner) WHERE status = 'processing'",
        "CREATE INDEX IF NOT EXISTS predictions_owner_created "
        "ON predictions (owner, created_at DESC, seq DESC)",
        "CREATE INDEX IF NOT EXISTS predictions_owner_status ON predictions (owner, status)",
        "CREATE INDEX IF NOT EXISTS predictions_owner_started ON predictions (owner, started_at)",
        "CREATE INDEX IF NOT EXISTS predictions_retention ON predictions (completed_at) "
        "WHERE status IN ('success', 'error', 'cancelled') AND NOT data_removed",
    ],
    2: [
        # The newest live preview of a running prediction (a WebP image), dropped when it ends.
        # A table of its own: the predictions rows (read by every GET and list) stay small.
        "CREATE TABLE IF NOT EXISTS previews (prediction_id TEXT PRIMARY KEY, step INTEGER NOT NULL, "
        "data BYTEA NOT NULL, updated_at DOUBLE PRECISION NOT NULL)",
    ],
}

_COLUMNS = (
    "id, owner, model, input, params, status, output, logs, error, created_at, started_at, "
    "completed_at, predict_time, attempts, worker_id, lease_expires_at, cancel_requested, data_removed, "
    "webhook_url, webhook_secret, extra"
)
_TERMINAL = list(TERMINAL)
_IN_FLIGHT = list(IN_FLIGHT)
_NOW = "extract(epoch from clock_timestamp())"  # the database's clock, for leases
_HELD = "status = 'processing' AND worker_id = %(worker)s AND attempts = %(attempt)s"
_DROP_PREVIEW = "DELETE FROM previews WHERE prediction_id = %s"
# Queued predictions of the same model ahead of %s (created before it; ties in insertion order).
_QUEUE_POSITION = """
SELECT count(*) AS n FROM predictions me JOIN predictions q
  ON q.model = me.model AND q.status = 'starting' AND NOT q.cancel_requested
 AND (q.created_at < me.created_at OR (q.created_at = me.created_at AND q.seq < me.seq))
WHERE me.id = %s
"""


# The fair claim: among each key's oldest queued job, the one of the key with the fewest jobs
# running, then of the key whose last job started longest ago (round robin: with one worker, a
# key's batch of a thousand and another key's single image take turns), then the oldest. One key
# alone is plain FIFO. The candidate is locked with SKIP LOCKED, so a concurrent claimer takes
# the next one instead of waiting; the UPDATE then takes it.
def _for_models(column: str) -> str:
    """%(models)s, the worker's models (NULL: any), filter the queue before the per-key order."""
    return f"(%(models)s::text[] IS NULL OR {column} = ANY(%(models)s::text[]))"


CLAIM_NEXT = f"""
WITH queued AS (
    SELECT DISTINCT owner FROM predictions
    WHERE status = 'starting' AND NOT cancel_requested AND {_for_models("model")}
), turns AS (
    SELECT q.owner,
           (SELECT count(*) FROM predictions r
            WHERE r.owner = q.owner AND r.status = 'processing') AS running,
           coalesce((SELECT max(started_at) FROM predictions s WHERE s.owner = q.owner), 0) AS last_start
    FROM queued q
), candidate AS (
    SELECT p.id FROM predictions p JOIN turns t ON t.owner = p.owner
    WHERE p.status = 'starting' AND NOT p.cancel_requested AND {_for_models("p.model")}
    ORDER BY t.running, t.last_start, p.created_at, p.seq
    LIMIT 1
    FOR UPDATE OF p SKIP LOCKED
)
UPDATE predictions SET status = 'processing', started_at = %(now)s, attempts = attempts + 1,
    worker_id = %(worker)s, lease_expires_at = {_NOW} + %(lease)s
FROM candidate WHERE predictions.id = candidate.id
RETURNING {", ".join("predictions." + c.strip() for c in _COLUMNS.split(","))}
"""


def _to_prediction(row: dict[str, Any]) -> Prediction:
    return Prediction(**row)


def _values(p: Prediction) -> dict[str, Any]:
    return {
        "id": p.id, "owner": p.owner, "model": p.model, "input": Jsonb(p.input), "params": Jsonb(p.params),
        "status": str(p.status), "output": Jsonb(p.output), "logs": p.logs, "error": p.error,
        "created_at": p.created_at, "started_at": p.started_at, "completed_at": p.completed_at,
        "predict_time": p.predict_time, "attempts": p.attempts, "worker_id": p.worker_id,
        "cancel_requested": p.cancel_requested, "data_removed": p.data_removed,
        "webhook_url": p.webhook_url, "webhook_secret": p.webhook_secret, "extra": Jsonb(p.extra),
    }  # fmt: skip


class PostgresPredictionStore(PredictionStore):
    def __init__(self, db: PostgresDatabase, origin: str) -> None:
        """``origin``: this process's token in its notifications (its feed skips its own)."""
        self.db = db
        self.origin = origin
        db.migrate("predictions", MIGRATIONS)
        self._hosts = PostgresHosts(db)
        self._prompt_match: str | None = None

    shared = True  # API replicas and worker hosts share this database

    def record_host(self, report: HostReport) -> None:
        self._hosts.record(report)

    def hosts(self, seen_within_s: float) -> list[HostReport]:
        return self._hosts.seen_within(seen_within_s)

    def forget_host(self, host_id: str) -> None:
        self._hosts.forget(host_id)

    def is_unreachable(self, exc: BaseException) -> bool:
        return is_outage(exc)

    def _notify(self, conn: psycopg.Connection, kind: ChangeKind, prediction_id: str) -> None:
        """Tell every listener, when this transaction commits."""
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload(kind, prediction_id, self.origin)))

    def is_outage(self, exc: BaseException) -> bool:
        return is_outage(exc)

    def probe_write(self) -> bool:
        with self.db.transaction() as conn:
            conn.execute("UPDATE fluxserve_schema SET updated_at = updated_at WHERE name = 'predictions'")
        return True

    def close(self) -> None:
        self.db.close()

    def create(self, prediction: Prediction, max_in_flight: int | None = None) -> None:
        if not prediction.created_at:
            prediction.created_at = time.time()
        values = _values(prediction)
        with self.db.transaction() as conn:
            if max_in_flight is not None:
                # Held until commit: another replica's create for this owner waits here.
                conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (prediction.owner,))
                count = conn.execute(
                    "SELECT count(*) AS n FROM predictions WHERE owner = %s AND status = ANY(%s)",
                    (prediction.owner, _IN_FLIGHT),
                ).fetchone()["n"]
                if count >= max_in_flight:
                    raise InFlightLimitExceeded(count, max_in_flight)
            names = ", ".join(values)
            marks = ", ".join(f"%({k})s" for k in values)
            conn.execute(f"INSERT INTO predictions ({names}) VALUES ({marks})", values)
            self._notify(conn, ChangeKind.CREATED, prediction.id)

    def get(self, prediction_id: str) -> Prediction | None:
        with self.db.transaction() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM predictions WHERE id = %s", (prediction_id,)
            ).fetchone()
        return _to_prediction(row) if row else None

    def list(self, flt: ListFilter) -> tuple[list[Prediction], int]:
        where, args = ["owner = %s"], [flt.owner]
        for column, op, value in (
            ("status", "=", flt.status),
            ("model", "=", flt.model),
            ("created_at", ">=", flt.created_from),
            ("created_at", "<=", flt.created_to),
        ):
            if value is not None:
                where.append(f"{column} {op} %s")
                args.append(value)
        if flt.q:
            where.append(self._prompt_match_sql())
            args.append(flt.q)
        clause = " AND ".join(where)
        with self.db.transaction() as conn:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")  # the page and its total agree
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM predictions WHERE {clause} "
                "ORDER BY created_at DESC, seq DESC LIMIT %s OFFSET %s",
                (*args, flt.limit, flt.offset),
            ).fetchall()
            total = conn.execute(f"SELECT count(*) AS n FROM predictions WHERE {clause}", args).fetchone()[
                "n"
            ]
        return [_to_prediction(r) for r in rows], total

    def _prompt_match_sql(self) -> str:
        """The prompt search's condition. lower() folds only what the database's locale knows (a C
        locale: ASCII alone); ICU's root collation, where the server has it, folds every letter."""
        if self._prompt_match is None:
            with self.db.transaction() as conn:
                icu = conn.execute("SELECT 1 FROM pg_collation WHERE collname = 'und-x-icu'").fetchone()
            collate = ' COLLATE "und-x-icu"' if icu else ""
            self._prompt_match = f"strpos(lower((input->>'prompt'){collate}), lower(%s{collate})) > 0"
        return self._prompt_match

    def delete(self, prediction_id: str) -> bool:
        with self.db.transaction() as conn:
            cursor = conn.execute(
                "DELETE FROM predictions WHERE id = %s AND status = ANY(%s)", (prediction_id, list(TERMINAL))
            )
            return cursor.rowcount > 0

    def claim_next(
        self, worker_id: str, lease_s: float = DEFAULT_LEASE_S, models: Collection[str] | None = None
    ) -> Prediction | None:
        if models is not None and not models:
            return None
        args = {
            "now": time.time(),
            "worker": worker_id,
            "lease": lease_s,
            "models": list(models) if models is not None else None,
        }
        with self.db.transaction() as conn:
            row = conn.execute(CLAIM_NEXT, args).fetchone()
        return _to_prediction(row) if row else None

    def append_logs(self, prediction_id: str, text: str, *, lease: Lease | None = None) -> None:
        sql = (
            "UPDATE predictions SET logs = logs || %(text)s "
            "WHERE id = %(id)s AND NOT (status = ANY(%(terminal)s))"
        )
        args: dict[str, Any] = {"text": text, "id": prediction_id, "terminal": _TERMINAL}
        if lease is not None:
            sql += " AND " + _HELD
            args.update(worker=lease.worker_id, attempt=lease.attempt)
        with self.db.transaction() as conn:
            conn.execute(sql, args)

    def append_note(self, prediction_id: str, text: str) -> None:
        with self.db.transaction() as conn:
            conn.execute("UPDATE predictions SET logs = logs || %s WHERE id = %s", (text, prediction_id))

    def finish(
        self,
        prediction_id: str,
        status: str,
        *,
        output: list[str] | None = None,
        error: str | None = None,
        predict_time: float | None = None,
        logs: str | None = None,
        extra: dict[str, Any] | None = None,
        lease: Lease | None = None,
    ) -> bool:
        if status not in TERMINAL:
            raise ValueError(f"finish() needs a terminal status {TERMINAL}, not {status!r}")
        with self.db.transaction() as conn:
            return self._finish(conn, prediction_id, status, output, error, predict_time, logs, extra, lease)

    def _finish(
        self,
        conn: psycopg.Connection,
        prediction_id: str,
        status: str,
        output: list[str] | None = None,
        error: str | None = None,
        predict_time: float | None = None,
        logs: str | None = None,
        extra: dict[str, Any] | None = None,
        lease: Lease | None = None,
    ) -> bool:
        held = f" AND {_HELD}" if lease is not None else ""
        cur = conn.execute(
            "UPDATE predictions SET status = %(status)s, output = coalesce(%(output)s, output), "
            "error = coalesce(%(error)s, error), "
            "predict_time = coalesce(%(predict_time)s, predict_time), logs = logs || %(logs)s, "
            "extra = extra || %(extra)s, completed_at = %(now)s, lease_expires_at = NULL "
            "WHERE id = %(id)s AND NOT (status = ANY(%(terminal)s))" + held,
            {
                "status": str(status),
                "output": Jsonb(output) if output is not None else None,
                "error": error,
                "predict_time": predict_time,
                "logs": logs or "",
                "extra": Jsonb(extra or {}),
                "now": time.time(),
                "id": prediction_id,
                "terminal": _TERMINAL,
                "worker": lease.worker_id if lease else None,
                "attempt": lease.attempt if lease else None,
            },
        )
        if cur.rowcount != 1:
            return False
        conn.execute(_DROP_PREVIEW, (prediction_id,))
        self._notify(conn, ChangeKind.ENDED, prediction_id)
        return True

    def request_cancel(self, prediction_id: str) -> CancelOutcome:
        with self.db.transaction() as conn:
            row = conn.execute(
                "SELECT status FROM predictions WHERE id = %s FOR UPDATE", (prediction_id,)
            ).fetchone()
            if row is None:
                return CancelOutcome.NOT_FOUND
            if row["status"] == STARTING:
                self._cancel_queued(conn, prediction_id, "Cancelled before it started.\n")
                return CancelOutcome.CANCELLED
            if row["status"] == PROCESSING:
                # The worker owns a running row: it sees the flag (or the notification) and stops.
                conn.execute("UPDATE predictions SET cancel_requested = TRUE WHERE id = %s", (prediction_id,))
                self._notify(conn, ChangeKind.CANCEL_REQUESTED, prediction_id)
                return CancelOutcome.REQUESTED
            return CancelOutcome.ALREADY_FINISHED

    def _cancel_queued(self, conn: psycopg.Connection, prediction_id: str, note: str) -> None:
        conn.execute(
            "UPDATE predictions SET status = %s, completed_at = %s, logs = logs || %s, "
            "lease_expires_at = NULL WHERE id = %s",
            (str(CANCELLED), time.time(), note, prediction_id),
        )
        conn.execute(_DROP_PREVIEW, (prediction_id,))
        self._notify(conn, ChangeKind.ENDED, prediction_id)

    def requeue(
        self, prediction_id: str, note: str, *, never_ran: bool = False, lease: Lease | None = None
    ) -> bool:
        """Back to starting with its original created_at, so it is the next one claimed. A row
        whose cancel was requested while it ran is cancelled instead: it must not run again."""
        with self.db.transaction() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM predictions WHERE id = %s FOR UPDATE", (prediction_id,)
            ).fetchone()
            current = _to_prediction(row) if row else None
            if current is None or current.status != PROCESSING or not current.allows(lease):
                return False
            self._requeue(conn, current, note, never_ran=never_ran)
            return True

    def _requeue(self, conn: psycopg.Connection, current: Prediction, note: str, *, never_ran: bool) -> None:
        if note and not note.endswith("\n"):
            note += "\n"
        if current.cancel_requested:
            self._cancel_queued(conn, current.id, note + "Cancelled: a cancel was requested.\n")
            return
        conn.execute(
            "UPDATE predictions SET status = %s, worker_id = NULL, started_at = NULL, "
            "lease_expires_at = NULL, attempts = greatest(0, attempts - %s), logs = logs || %s WHERE id = %s",
            (str(STARTING), 1 if never_ran else 0, note, current.id),
        )
        conn.execute(_DROP_PREVIEW, (current.id,))  # the next attempt starts over
        self._notify(conn, ChangeKind.CREATED, current.id)  # queued again: a worker may take it

    def renew_leases(self, leases: Iterable[Lease], lease_s: float) -> list[str]:
        leases = list(leases)
        if not leases:
            return []
        with self.db.transaction() as conn:
            rows = conn.execute(
                f"UPDATE predictions p SET lease_expires_at = {_NOW} + %(lease)s "
                "FROM unnest(%(ids)s::text[], %(workers)s::text[], %(attempts)s::int[]) "
                "AS l(id, worker, attempt) "
                "WHERE p.id = l.id AND p.status = 'processing' AND p.worker_id = l.worker "
                "AND p.attempts = l.attempt RETURNING p.id",
                {
                    "lease": lease_s,
                    "ids": [x.prediction_id for x in leases],
                    "workers": [x.worker_id for x in leases],
                    "attempts": [x.attempt for x in leases],
                },
            ).fetchall()
        held = {r["id"] for r in rows}
        return [x.prediction_id for x in leases if x.prediction_id not in held]

    def recover_expired(
        self, max_attempts: int = 1, *, host_id: str | None = None, skip: Collection[str] = ()
    ) -> list[tuple[str, str]]:
        """SKIP LOCKED: a row another host is settling (or finishing) right now is left to it."""
        where = f"(lease_expires_at IS NULL OR lease_expires_at <= {_NOW}"
        args: dict[str, Any] = {"skip": list(skip)}
        if host_id is not None:
            # The worker ids of one host start with "<host id>:" (a prefix test: no LIKE wildcards).
            where += " OR left(worker_id, %(n)s) = %(prefix)s"
            args.update(n=len(host_id) + 1, prefix=host_id + ":")
        outcomes = []
        with self.db.transaction() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM predictions WHERE status = 'processing' AND {where}) "
                "AND NOT (id = ANY(%(skip)s)) ORDER BY created_at, seq FOR UPDATE SKIP LOCKED",
                args,
            ).fetchall()
            for pred in map(_to_prediction, rows):
                if pred.attempts < max_attempts:
                    self._requeue(
                        conn, pred, LOST_REQUEUE_NOTE.format(attempts=pred.attempts), never_ran=False
                    )
                    outcomes.append((pred.id, REQUEUED))
                else:
                    self._finish(conn, pred.id, ERROR, error=WORKER_LOST, logs=LOST_LOGS)
                    outcomes.append((pred.id, FAILED))
        return outcomes

    def queue_position(self, prediction: Prediction) -> int | None:
        if prediction.status != STARTING:
            return None
        with self.db.transaction() as conn:
            return conn.execute(_QUEUE_POSITION, (prediction.id,)).fetchone()["n"]

    def put_preview(self, prediction_id: str, step: int, data: bytes, *, lease: Lease | None = None) -> bool:
        with self.db.transaction() as conn:
            # FOR SHARE: an end being written now (which drops the preview) is waited for.
            row = conn.execute(
                "SELECT status, worker_id, attempts FROM predictions WHERE id = %s FOR SHARE",
                (prediction_id,),
            ).fetchone()
            if row is None or not takes_preview(row["status"], row["worker_id"], row["attempts"], lease):
                return False
            conn.execute(
                "INSERT INTO previews (prediction_id, step, data, updated_at) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (prediction_id) DO UPDATE SET step = EXCLUDED.step, data = EXCLUDED.data, "
                "updated_at = EXCLUDED.updated_at",
                (prediction_id, step, data, time.time()),
            )
            return True

    def get_preview(self, prediction_id: str) -> Preview | None:
        with self.db.transaction() as conn:
            row = conn.execute(
                "SELECT step, data FROM previews WHERE prediction_id = %s", (prediction_id,)
            ).fetchone()
        return Preview(row["step"], bytes(row["data"])) if row else None

    def preview_step(self, prediction_id: str) -> int | None:
        with self.db.transaction() as conn:
            row = conn.execute(
                "SELECT step FROM previews WHERE prediction_id = %s", (prediction_id,)
            ).fetchone()
        return row["step"] if row else None

    def running(self, worker_id: str | None = None) -> list[Prediction]:
        sql, args = f"SELECT {_COLUMNS} FROM predictions WHERE status = 'processing'", []
        if worker_id is not None:
            sql += " AND worker_id = %s"
            args.append(worker_id)
        with self.db.transaction() as conn:
            rows = conn.execute(sql + " ORDER BY created_at, seq", args).fetchall()
        return [_to_prediction(r) for r in rows]

    def in_flight(self, owner: str) -> int:
        with self.db.transaction() as conn:
            return conn.execute(
                "SELECT count(*) AS n FROM predictions WHERE owner = %s AND status = ANY(%s)",
                (owner, _IN_FLIGHT),
            ).fetchone()["n"]

    def reassign_owner(self, old_owner: str, new_owner: str) -> int:
        with self.db.transaction() as conn:
            cur = conn.execute(
                "UPDATE predictions SET owner = %(new)s, extra = CASE WHEN webhook_url IS NOT NULL "
                "AND NOT extra ? %(signer)s THEN extra || jsonb_build_object(%(signer)s, owner) "
                "ELSE extra END "
                "WHERE owner = %(old)s",
                {"new": new_owner, "old": old_owner, "signer": WEBHOOK_SIGNER},
            )
            return cur.rowcount

    def counts_by_status(self) -> dict[str, int]:
        counts = dict.fromkeys(ALL_STATUSES, 0)
        with self.db.transaction() as conn:
            for row in conn.execute("SELECT status, count(*) AS n FROM predictions GROUP BY status"):
                counts[row["status"]] = row["n"]
        return counts

    def finished_before(self, completed_before: float, limit: int = 500) -> list[Prediction]:
        with self.db.transaction() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM predictions WHERE status IN ('success', 'error', 'cancelled') "
                "AND completed_at < %s AND NOT data_removed ORDER BY completed_at LIMIT %s",
                (completed_before, limit),
            ).fetchall()
        return [_to_prediction(r) for r in rows]

    def ended_with_webhook_since(self, completed_after: float) -> list[str]:
        with self.db.transaction() as conn:
            rows = conn.execute(
                "SELECT id FROM predictions WHERE status = ANY(%s) AND completed_at >= %s "
                "AND webhook_url IS NOT NULL ORDER BY completed_at",
                (_TERMINAL, completed_after),
            ).fetchall()
        return [r["id"] for r in rows]

    def unknown_ids(self, prediction_ids: list[str]) -> list[str]:
        with self.db.transaction() as conn:
            rows = conn.execute("SELECT id FROM predictions WHERE id = ANY(%s)", (prediction_ids,)).fetchall()
        known = {r["id"] for r in rows}
        return [pid for pid in prediction_ids if pid not in known]

    def mark_data_removed(self, prediction_id: str) -> None:
        with self.db.transaction() as conn:
            conn.execute("UPDATE predictions SET data_removed = TRUE WHERE id = %s", (prediction_id,))
