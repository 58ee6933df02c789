"""SQLite prediction store: the embedded default.

One table holds each prediction whole (InvokeAI's session-queue shape). The file is in WAL
mode so readers never block the writer; every read-modify-write runs in a ``BEGIN IMMEDIATE``
transaction, which takes the write lock up front, so two threads or processes can never both
claim (or both finish) the same row. Each thread gets its own connection.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from server.predictions.model import (
    ALL_STATUSES,
    CANCELLED,
    IN_FLIGHT,
    PROCESSING,
    STARTING,
    TERMINAL,
    WEBHOOK_SIGNER,
    CancelOutcome,
    InFlightLimitExceeded,
    ListFilter,
    Prediction,
)
from server.store.base import PredictionStore
from server.store.sqlite.db import SQLiteDatabase, check_integrity, reporting_unusable

SCHEMA_VERSION = 1
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
}

_COLUMNS = (
    "id, owner, model, input, status, output, logs, error, created_at, started_at, completed_at, "
    "predict_time, attempts, worker_id, cancel_requested, data_removed, webhook_url, "
    "webhook_secret, extra"
)
_PLACEHOLDERS = ", ".join("?" * len(_COLUMNS.split(",")))
_TERMINAL_SQL = "(" + ", ".join(f"'{s}'" for s in TERMINAL) + ")"
_IN_FLIGHT_SQL = "(" + ", ".join(f"'{s}'" for s in IN_FLIGHT) + ")"


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
                    p.webhook_secret, _to_json(p.extra),
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
        clause = " AND ".join(where)
        with self._db.snapshot() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM predictions WHERE {clause} "
                "ORDER BY created_at DESC, seq DESC LIMIT ? OFFSET ?",
                (*args, flt.limit, flt.offset),
            ).fetchall()
            total = conn.execute(f"SELECT count(*) FROM predictions WHERE {clause}", args).fetchone()[0]
        return [_row_to_prediction(r) for r in rows], total

    def claim_next(self, worker_id: str) -> Prediction | None:
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT id FROM predictions WHERE status = ? AND cancel_requested = 0 "
                "ORDER BY created_at, seq LIMIT 1",
                (STARTING,),
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE predictions SET status = ?, started_at = ?, attempts = attempts + 1, "
                "worker_id = ? WHERE id = ?",
                (PROCESSING, time.time(), worker_id, row["id"]),
            )
            return self._get(conn, row["id"])

    def append_logs(self, prediction_id: str, text: str) -> None:
        # One statement is atomic on its own; the status test keeps terminal rows untouched.
        self.connection().execute(
            f"UPDATE predictions SET logs = logs || ? WHERE id = ? AND status NOT IN {_TERMINAL_SQL}",
            (text, prediction_id),
        )

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
    ) -> bool:
        if status not in TERMINAL:
            raise ValueError(f"finish() needs a terminal status {TERMINAL}, not {status!r}")
        with self.transaction() as conn:
            current = self._get(conn, prediction_id)
            if current is None or current.terminal:
                return False
            conn.execute(
                "UPDATE predictions SET status = ?, output = ?, error = ?, predict_time = ?, "
                "logs = logs || ?, extra = ?, completed_at = ? WHERE id = ?",
                (
                    status,
                    _to_json(output if output is not None else current.output),
                    error if error is not None else current.error,
                    predict_time if predict_time is not None else current.predict_time,
                    logs or "",
                    _to_json({**current.extra, **(extra or {})}),
                    time.time(),
                    prediction_id,
                ),
            )
            return True

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
            "UPDATE predictions SET status = ?, completed_at = ?, logs = logs || ? WHERE id = ?",
            (CANCELLED, time.time(), note, prediction_id),
        )

    def requeue(self, prediction_id: str, note: str, *, never_ran: bool = False) -> bool:
        """Back to starting with its original created_at, so it is the next one claimed. A row
        whose cancel was requested while it ran is cancelled instead: it must not run again."""
        if note and not note.endswith("\n"):
            note += "\n"
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT status, cancel_requested FROM predictions WHERE id = ?", (prediction_id,)
            ).fetchone()
            if row is None or row["status"] != PROCESSING:
                return False
            if row["cancel_requested"]:
                self._cancel_queued(conn, prediction_id, note + "Cancelled: a cancel was requested.\n")
                return True
            conn.execute(
                "UPDATE predictions SET status = ?, worker_id = NULL, started_at = NULL, "
                "attempts = MAX(0, attempts - ?), logs = logs || ? WHERE id = ?",
                (STARTING, 1 if never_ran else 0, note, prediction_id),
            )
            return True

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
