"""SQLite prediction store: the embedded default.

One table holds each prediction whole (InvokeAI's session-queue shape). The file is in WAL
mode so readers never block the writer; every read-modify-write runs in a ``BEGIN IMMEDIATE``
transaction, which takes the write lock up front, so two threads or processes can never both
claim (or both finish) the same row. Each thread gets its own connection.

Only one server uses the file at a time (it holds the file's lock while its workers run), so at
start every processing row is a dead predecessor's: ``recover_at_start`` settles them all.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

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
from server.store.sqlite.db import SQLiteDatabase, check_integrity, reporting_unusable

SCHEMA_VERSION = 5
BUSY_TIMEOUT_MS = 10_000

# MIGRATIONS[v] brings a database from version v-1 to v. Append, never edit a shipped entry.
MIGRATIONS: dict[int, list[str]] = {
    1: [
        """
        CREATE TABLE IF NOT EXISTS predictions (
            seq              INTEGER PRIMARY KEY AUTOINCREMENT,  -- FIFO tie-break
            id               TEXT    NOT NULL UNIQUE,
            owner            TEXT    NOT NULL,
            model            TEXT    NOT NULL,
            input            TEXT    NOT NULL,  -- JSON
            status           TEXT    NOT NULL,
            output           TEXT    NOT NULL DEFAULT '[]',  -- JSON list of file names
            logs             TEXT    NOT NULL DEFAULT '',
            error            TEXT,
            created_at       REAL    NOT NULL,
            started_at       REAL,
            completed_at     REAL,
            predict_time     REAL,
            attempts         INTEGER NOT NULL DEFAULT 0,
            worker_id        TEXT,
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            data_removed     INTEGER NOT NULL DEFAULT 0,
            webhook_url      TEXT,
            webhook_secret   TEXT,
            extra            TEXT    NOT NULL DEFAULT '{}'  -- JSON object
        )
        """,
        "CREATE INDEX IF NOT EXISTS predictions_queue ON predictions (status, created_at, seq)",
        # Ascending on purpose: the implicit trailing rowid (seq) is ascending too, so SQLite walks
        # this index backwards for "created_at DESC, seq DESC" with no sort step.
        "CREATE INDEX IF NOT EXISTS predictions_owner_created ON predictions (owner, created_at)",
        "CREATE INDEX IF NOT EXISTS predictions_owner_status ON predictions (owner, status)",
        "CREATE INDEX IF NOT EXISTS predictions_retention ON predictions (status, completed_at)",
    ],
    2: [
        # The inputs resolved at create (JSON); rows made before read as {} (resolved at dispatch).
        "ALTER TABLE predictions ADD COLUMN params TEXT NOT NULL DEFAULT '{}'",
        # A running job's lease (unix seconds); NULL on rows from before: expired, recovered at once.
        "ALTER TABLE predictions ADD COLUMN lease_expires_at REAL",
    ],
    3: [
        # The fair claim asks when each key last had a job started (see CLAIM_NEXT).
        "CREATE INDEX IF NOT EXISTS predictions_owner_started ON predictions (owner, started_at)",
    ],
    4: [
        # Worker hosts' heartbeats (see store/hosts.py): report is JSON, seen_at unix seconds.
        "CREATE TABLE IF NOT EXISTS worker_hosts (host_id TEXT PRIMARY KEY, report TEXT NOT NULL, "
        "seen_at REAL NOT NULL)",
    ],
    5: [
        # The newest live preview of a running prediction (a WebP image), dropped when it ends.
        # A table of its own: the predictions rows (read by every GET and list) stay small.
        "CREATE TABLE IF NOT EXISTS previews (prediction_id TEXT PRIMARY KEY, step INTEGER NOT NULL, "
        "data BLOB NOT NULL, updated_at REAL NOT NULL)",
    ],
}

# The fair claim: among each key's oldest queued job, the one of the key with the fewest jobs
# running, then of the key whose last job started longest ago (round robin: with one worker, a
# key's batch of a thousand and another key's single image take turns), then the oldest. One key
# alone is plain FIFO. The window keeps the sort to one row per key. {models}: the worker's
# models filter the queue inside the window, so a key whose oldest job is for another model
# still has its jobs for this one taken (see claim_sql).
CLAIM_NEXT = """
WITH heads AS (
    SELECT id, owner, created_at, seq,
           row_number() OVER (PARTITION BY owner ORDER BY created_at, seq) AS place
    FROM predictions WHERE status = 'starting' AND cancel_requested = 0{models}
)
SELECT h.id FROM heads h WHERE h.place = 1
ORDER BY (SELECT count(*) FROM predictions r WHERE r.owner = h.owner AND r.status = 'processing'),
         coalesce((SELECT max(started_at) FROM predictions s WHERE s.owner = h.owner), 0),
         h.created_at, h.seq
LIMIT 1
"""


def claim_sql(models: Collection[str] | None) -> tuple[str, list[str]]:
    """The claim and its arguments, for a worker taking any model's jobs (None) or these."""
    if models is None:
        return CLAIM_NEXT.format(models=""), []
    slugs = list(models)
    return CLAIM_NEXT.format(models=f" AND model IN ({', '.join('?' * len(slugs))})"), slugs


_COLUMNS = (
    "id, owner, model, input, status, output, logs, error, created_at, started_at, completed_at, "
    "predict_time, attempts, worker_id, cancel_requested, data_removed, webhook_url, "
    "webhook_secret, extra, params, lease_expires_at"
)
_PLACEHOLDERS = ", ".join("?" * len(_COLUMNS.split(",")))
_TERMINAL_SQL = "(" + ", ".join(f"'{s}'" for s in TERMINAL) + ")"
_IN_FLIGHT_SQL = "(" + ", ".join(f"'{s}'" for s in IN_FLIGHT) + ")"


_DROP_PREVIEW = "DELETE FROM previews WHERE prediction_id = ?"
# Queued predictions of the same model ahead of ?1 (created before it; ties in insertion order).
_QUEUE_POSITION = """
SELECT count(*) FROM predictions me JOIN predictions q
  ON q.model = me.model AND q.status = 'starting' AND q.cancel_requested = 0
 AND (q.created_at < me.created_at OR (q.created_at = me.created_at AND q.seq < me.seq))
WHERE me.id = ?
"""

# A row still held by a lease's worker for the lease's attempt (status, worker_id, attempt).
_HELD_SQL = "status = ? AND worker_id = ? AND attempts = ?"


def _to_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _row_to_prediction(row: sqlite3.Row) -> Prediction:
    return Prediction(
        id=row["id"],
        owner=row["owner"],
        model=row["model"],
        input=json.loads(row["input"]),
        status=row["status"],
        output=json.loads(row["output"]),
        logs=row["logs"],
        error=row["error"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        predict_time=row["predict_time"],
        attempts=row["attempts"],
        worker_id=row["worker_id"],
        cancel_requested=bool(row["cancel_requested"]),
        data_removed=bool(row["data_removed"]),
        webhook_url=row["webhook_url"],
        webhook_secret=row["webhook_secret"],
        extra=json.loads(row["extra"]),
        params=json.loads(row["params"]),
        lease_expires_at=row["lease_expires_at"],
    )


class SQLitePredictionStore(PredictionStore):
    def __init__(self, path: str | Path, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = SQLiteDatabase(self.path, synchronous=synchronous, busy_timeout_ms=BUSY_TIMEOUT_MS)
        self.synchronous: str = synchronous.upper()
        with reporting_unusable(self.path):
            self._migrate(self.connection())

    # -- connections and transactions ------------------------------------------------------------

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use). Other tables living in the same file
        (API keys...) may use it; wrap read-modify-writes in ``transaction()``."""
        return self._db.connection()

    def transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE): see ``SQLiteDatabase.transaction``."""
        return self._db.transaction()

    def _migrate(self, conn: sqlite3.Connection) -> None:
        if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return
        with self.transaction():
            # Read again under the write lock: another process may have just migrated.
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path} has schema version {version}, newer than this build's "
                    f"{SCHEMA_VERSION}: upgrade fluxserve"
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[target]:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def probe_write(self) -> bool:
        # Rewriting the header's user_version with its own value appends a frame to the WAL: it
        # fails exactly when the file takes no writes (disk full, read-only), and changes nothing.
        with self.transaction() as conn:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            conn.execute(f"PRAGMA user_version = {version}")
        return True

    def schema_version(self) -> int:
        return self.connection().execute("PRAGMA user_version").fetchone()[0]

    def check_integrity(self, quick: bool = False) -> None:
        """See ``sqlite_db.check_integrity``: DatabaseDamaged when the file is damaged."""
        check_integrity(self.connection(), self.path, quick=quick)

    def checkpoint(self, mode: str = "PASSIVE", busy_timeout_ms: int = 0) -> bool:
        """See ``SQLiteDatabase.checkpoint``."""
        return self._db.checkpoint(mode, busy_timeout_ms)

    def close(self) -> None:
        self._db.close()

    def is_outage(self, exc: BaseException) -> bool:
        # OperationalError: disk full, I/O error, locked, read-only, cannot open; a bare
        # DatabaseError: the file is not (or no longer) a database. Integrity and programming
        # errors are bugs.
        return isinstance(exc, sqlite3.OperationalError | OSError) or type(exc) is sqlite3.DatabaseError

    # -- the store interface ---------------------------------------------------------------------

    def create(self, prediction: Prediction, max_in_flight: int | None = None) -> None:
        """Insert it as given; a zero ``created_at`` is set to now (on the object too)."""
        if not prediction.created_at:
            prediction.created_at = time.time()
        p = prediction
        with self.transaction() as conn:
            if max_in_flight is not None:
                count = conn.execute(
                    f"SELECT count(*) FROM predictions WHERE owner = ? AND status IN {_IN_FLIGHT_SQL}",
                    (p.owner,),
                ).fetchone()[0]
                if count >= max_in_flight:
                    raise InFlightLimitExceeded(count, max_in_flight)
            conn.execute(
                f"INSERT INTO predictions ({_COLUMNS}) VALUES ({_PLACEHOLDERS})",
                (
                    p.id, p.owner, p.model, _to_json(p.input), p.status, _to_json(p.output), p.logs,
                    p.error, p.created_at, p.started_at, p.completed_at, p.predict_time, p.attempts,
                    p.worker_id, int(p.cancel_requested), int(p.data_removed), p.webhook_url,
                    p.webhook_secret, _to_json(p.extra), _to_json(p.params), p.lease_expires_at,
                ),
            )  # fmt: skip

    def get(self, prediction_id: str) -> Prediction | None:
        return self._get(self.connection(), prediction_id)

    @staticmethod
    def _get(conn: sqlite3.Connection, prediction_id: str) -> Prediction | None:
        row = conn.execute(f"SELECT {_COLUMNS} FROM predictions WHERE id = ?", (prediction_id,)).fetchone()
        return _row_to_prediction(row) if row is not None else None

    def list(self, flt: ListFilter) -> tuple[list[Prediction], int]:
        where, args = ["owner = ?"], [flt.owner]
        if flt.status is not None:
            where.append("status = ?")
            args.append(flt.status)
        if flt.model is not None:
            where.append("model = ?")
            args.append(flt.model)
        if flt.created_from is not None:
            where.append("created_at >= ?")
            args.append(flt.created_from)
        if flt.created_to is not None:
            where.append("created_at <= ?")
            args.append(flt.created_to)
        if flt.q:
            where.append("instr(casefold(json_extract(input, '$.prompt')), ?) > 0")
            args.append(flt.q.casefold())
        clause = " AND ".join(where)
        with self._db.snapshot() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM predictions WHERE {clause} "
                "ORDER BY created_at DESC, seq DESC LIMIT ? OFFSET ?",
                (*args, flt.limit, flt.offset),
            ).fetchall()
            total = conn.execute(f"SELECT count(*) FROM predictions WHERE {clause}", args).fetchone()[0]
        return [_row_to_prediction(r) for r in rows], total

    def delete(self, prediction_id: str) -> bool:
        cursor = self.connection().execute(
            f"DELETE FROM predictions WHERE id = ? AND status IN {_TERMINAL_SQL}", (prediction_id,)
        )
        return cursor.rowcount > 0

    def claim_next(
        self, worker_id: str, lease_s: float = DEFAULT_LEASE_S, models: Collection[str] | None = None
    ) -> Prediction | None:
        if models is not None and not models:
            return None
        with self.transaction() as conn:
            row = conn.execute(*claim_sql(models)).fetchone()
            if row is None:
                return None
            now = time.time()
            conn.execute(
                "UPDATE predictions SET status = ?, started_at = ?, attempts = attempts + 1, "
                "worker_id = ?, lease_expires_at = ? WHERE id = ?",
                (PROCESSING, now, worker_id, now + lease_s, row["id"]),
            )
            return self._get(conn, row["id"])

    def append_logs(self, prediction_id: str, text: str, *, lease: Lease | None = None) -> None:
        # One statement is atomic on its own; the status test keeps terminal rows untouched.
        sql = f"UPDATE predictions SET logs = logs || ? WHERE id = ? AND status NOT IN {_TERMINAL_SQL}"
        args: list[Any] = [text, prediction_id]
        if lease is not None:
            sql += " AND " + _HELD_SQL
            args += [PROCESSING, lease.worker_id, lease.attempt]
        self.connection().execute(sql, args)

    def append_note(self, prediction_id: str, text: str) -> None:
        self.connection().execute(
            "UPDATE predictions SET logs = logs || ? WHERE id = ?", (text, prediction_id)
        )

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
        with self.transaction() as conn:
            current = self._get(conn, prediction_id)
            if current is None or current.terminal or not current.allows(lease):
                return False
            self._finish(conn, current, status, output, error, predict_time, logs, extra)
            return True

    @staticmethod
    def _finish(
        conn: sqlite3.Connection,
        current: Prediction,
        status: str,
        output: list[str] | None = None,
        error: str | None = None,
        predict_time: float | None = None,
        logs: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        conn.execute(
            "UPDATE predictions SET status = ?, output = ?, error = ?, predict_time = ?, "
            "logs = logs || ?, extra = ?, completed_at = ?, lease_expires_at = NULL WHERE id = ?",
            (
                status,
                _to_json(output if output is not None else current.output),
                error if error is not None else current.error,
                predict_time if predict_time is not None else current.predict_time,
                logs or "",
                _to_json({**current.extra, **(extra or {})}),
                time.time(),
                current.id,
            ),
        )
        conn.execute(_DROP_PREVIEW, (current.id,))

    def request_cancel(self, prediction_id: str) -> CancelOutcome:
        with self.transaction() as conn:
            row = conn.execute("SELECT status FROM predictions WHERE id = ?", (prediction_id,)).fetchone()
            if row is None:
                return CancelOutcome.NOT_FOUND
            if row["status"] == STARTING:
                self._cancel_queued(conn, prediction_id, "Cancelled before it started.\n")
                return CancelOutcome.CANCELLED
            if row["status"] == PROCESSING:
                # The worker owns a running row: it sees the flag at its next step and ends it.
                conn.execute("UPDATE predictions SET cancel_requested = 1 WHERE id = ?", (prediction_id,))
                return CancelOutcome.REQUESTED
            return CancelOutcome.ALREADY_FINISHED

    @staticmethod
    def _cancel_queued(conn: sqlite3.Connection, prediction_id: str, note: str) -> None:
        conn.execute(
            "UPDATE predictions SET status = ?, completed_at = ?, logs = logs || ?, lease_expires_at = NULL "
            "WHERE id = ?",
            (CANCELLED, time.time(), note, prediction_id),
        )
        conn.execute(_DROP_PREVIEW, (prediction_id,))

    def requeue(
        self, prediction_id: str, note: str, *, never_ran: bool = False, lease: Lease | None = None
    ) -> bool:
        """Back to starting with its original created_at, so it is the next one claimed. A row
        whose cancel was requested while it ran is cancelled instead: it must not run again."""
        with self.transaction() as conn:
            current = self._get(conn, prediction_id)
            if current is None or current.status != PROCESSING or not current.allows(lease):
                return False
            self._requeue(conn, current, note, never_ran=never_ran)
            return True

    def _requeue(self, conn: sqlite3.Connection, current: Prediction, note: str, *, never_ran: bool) -> None:
        if note and not note.endswith("\n"):
            note += "\n"
        if current.cancel_requested:
            self._cancel_queued(conn, current.id, note + "Cancelled: a cancel was requested.\n")
            return
        conn.execute(
            "UPDATE predictions SET status = ?, worker_id = NULL, started_at = NULL, "
            "lease_expires_at = NULL, attempts = MAX(0, attempts - ?), logs = logs || ? WHERE id = ?",
            (STARTING, 1 if never_ran else 0, note, current.id),
        )
        conn.execute(_DROP_PREVIEW, (current.id,))  # the next attempt starts over

    def renew_leases(self, leases: Iterable[Lease], lease_s: float) -> list[str]:
        lost: list[str] = []
        with self.transaction() as conn:
            expires = time.time() + lease_s
            for lease in leases:
                cur = conn.execute(
                    f"UPDATE predictions SET lease_expires_at = ? WHERE id = ? AND {_HELD_SQL}",
                    (expires, lease.prediction_id, PROCESSING, lease.worker_id, lease.attempt),
                )
                if cur.rowcount == 0:
                    lost.append(lease.prediction_id)
        return lost

    def recover_expired(
        self, max_attempts: int = 1, *, host_id: str | None = None, skip: Collection[str] = ()
    ) -> list[tuple[str, str]]:
        sql = f"SELECT {_COLUMNS} FROM predictions WHERE status = ? AND (lease_expires_at IS NULL OR "
        sql += "lease_expires_at <= ?"
        args: list[Any] = [PROCESSING, time.time()]
        if host_id is not None:
            # The worker ids of one host start with "<host id>:" (a prefix test: no LIKE wildcards).
            sql += " OR substr(worker_id, 1, ?) = ?"
            args += [len(host_id) + 1, host_id + ":"]
        return self._recover(sql + ") ORDER BY created_at, seq", args, max_attempts, skip)

    def recover_at_start(self, max_attempts: int, host_id: str) -> list[tuple[str, str]]:
        """Every processing row: the file's lock admits one server at a time, so each belongs to
        a dead predecessor, whatever host id it carries (a container's host name changes at
        each restart)."""
        sql = f"SELECT {_COLUMNS} FROM predictions WHERE status = ? ORDER BY created_at, seq"
        return self._recover(sql, [PROCESSING], max_attempts, ())

    def _recover(
        self, select: str, args: list[Any], max_attempts: int, skip: Collection[str]
    ) -> list[tuple[str, str]]:
        """Settle the rows ``select`` finds, in one write transaction: no lease is renewed, and
        no result recorded, between the read and the write."""
        outcomes = []
        with self.transaction() as conn:
            for pred in (_row_to_prediction(r) for r in conn.execute(select, args).fetchall()):
                if pred.id in skip:
                    continue
                if pred.attempts < max_attempts:
                    note = LOST_REQUEUE_NOTE.format(attempts=pred.attempts)
                    self._requeue(conn, pred, note, never_ran=False)
                    outcomes.append((pred.id, REQUEUED))
                else:
                    self._finish(conn, pred, ERROR, error=WORKER_LOST, logs=LOST_LOGS)
                    outcomes.append((pred.id, FAILED))
        return outcomes

    def queue_position(self, prediction: Prediction) -> int | None:
        if prediction.status != STARTING:
            return None
        return self.connection().execute(_QUEUE_POSITION, (prediction.id,)).fetchone()[0]

    def put_preview(self, prediction_id: str, step: int, data: bytes, *, lease: Lease | None = None) -> bool:
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT status, worker_id, attempts FROM predictions WHERE id = ?", (prediction_id,)
            ).fetchone()
            if row is None or not takes_preview(row["status"], row["worker_id"], row["attempts"], lease):
                return False
            conn.execute(
                "INSERT INTO previews (prediction_id, step, data, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (prediction_id) DO UPDATE SET step = excluded.step, data = excluded.data, "
                "updated_at = excluded.updated_at",
                (prediction_id, step, data, time.time()),
            )
            return True

    def get_preview(self, prediction_id: str) -> Preview | None:
        row = (
            self.connection()
            .execute("SELECT step, data FROM previews WHERE prediction_id = ?", (prediction_id,))
            .fetchone()
        )
        return Preview(row["step"], bytes(row["data"])) if row is not None else None

    def preview_step(self, prediction_id: str) -> int | None:
        row = (
            self.connection()
            .execute("SELECT step FROM previews WHERE prediction_id = ?", (prediction_id,))
            .fetchone()
        )
        return row["step"] if row is not None else None

    def running(self, worker_id: str | None = None) -> list[Prediction]:
        sql = f"SELECT {_COLUMNS} FROM predictions WHERE status = ?"
        args: list[Any] = [PROCESSING]
        if worker_id is not None:
            sql += " AND worker_id = ?"
            args.append(worker_id)
        rows = self.connection().execute(sql + " ORDER BY created_at, seq", args).fetchall()
        return [_row_to_prediction(r) for r in rows]

    def in_flight(self, owner: str) -> int:
        return (
            self.connection()
            .execute(
                f"SELECT count(*) FROM predictions WHERE owner = ? AND status IN {_IN_FLIGHT_SQL}", (owner,)
            )
            .fetchone()[0]
        )

    def reassign_owner(self, old_owner: str, new_owner: str) -> int:
        with self.transaction() as conn:
            # Rows made before the signer was recorded get it now, so their webhooks keep the
            # secret their receivers were given.
            signer = "$." + WEBHOOK_SIGNER
            cur = conn.execute(
                "UPDATE predictions SET owner = :new, extra = CASE WHEN webhook_url IS NOT NULL "
                "AND json_type(extra, :signer) IS NULL THEN json_set(extra, :signer, owner) ELSE extra END "
                "WHERE owner = :old",
                {"new": new_owner, "old": old_owner, "signer": signer},
            )
        return cur.rowcount

    def counts_by_status(self) -> dict[str, int]:
        counts = dict.fromkeys(ALL_STATUSES, 0)
        for row in self.connection().execute("SELECT status, count(*) FROM predictions GROUP BY status"):
            counts[row[0]] = row[1]
        return counts

    def finished_before(self, completed_before: float, limit: int = 500) -> list[Prediction]:
        rows = (
            self.connection()
            .execute(
                f"SELECT {_COLUMNS} FROM predictions WHERE status IN {_TERMINAL_SQL} "
                "AND completed_at < ? AND data_removed = 0 ORDER BY completed_at LIMIT ?",
                (completed_before, limit),
            )
            .fetchall()
        )
        return [_row_to_prediction(r) for r in rows]

    def ended_with_webhook_since(self, completed_after: float) -> list[str]:
        rows = (
            self.connection()
            .execute(
                f"SELECT id FROM predictions WHERE status IN {_TERMINAL_SQL} AND completed_at >= ? "
                "AND webhook_url IS NOT NULL ORDER BY completed_at",
                (completed_after,),
            )
            .fetchall()
        )
        return [r["id"] for r in rows]

    def unknown_ids(self, prediction_ids: list[str]) -> list[str]:
        known: set[str] = set()
        conn = self.connection()
        for start in range(0, len(prediction_ids), 500):  # under SQLite's bound-parameter limit
            chunk = prediction_ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            rows = conn.execute(f"SELECT id FROM predictions WHERE id IN ({marks})", chunk)
            known.update(row[0] for row in rows)
        return [pid for pid in prediction_ids if pid not in known]

    def mark_data_removed(self, prediction_id: str) -> None:
        self.connection().execute("UPDATE predictions SET data_removed = 1 WHERE id = ?", (prediction_id,))

    # -- worker hosts -----------------------------------------------------------------------------
    def record_host(self, report: HostReport) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO worker_hosts (host_id, report, seen_at) VALUES (?, ?, ?) "
                "ON CONFLICT (host_id) DO UPDATE SET report = excluded.report, seen_at = excluded.seen_at",
                (report.host_id, _to_json(report.to_json()), time.time()),
            )

    def hosts(self, seen_within_s: float) -> list[HostReport]:
        now = time.time()
        rows = (
            self.connection()
            .execute(
                "SELECT host_id, report, seen_at FROM worker_hosts WHERE seen_at >= ? ORDER BY host_id",
                (now - seen_within_s,),
            )
            .fetchall()
        )
        return [HostReport.from_json(r[0], json.loads(r[1]), now - r[2]) for r in rows]

    def forget_host(self, host_id: str) -> None:
        with self.transaction() as conn:
            conn.execute("DELETE FROM worker_hosts WHERE host_id = ?", (host_id,))
