"""Worker hosts' heartbeats in PostgreSQL (see store/hosts.py), timed on the database's clock."""

from __future__ import annotations

from psycopg.types.json import Jsonb

from server.store.hosts import HostReport
from server.store.postgres.db import PostgresDatabase

_NOW = "extract(epoch from clock_timestamp())"

# MIGRATIONS[v] brings the table from version v-1 to v. Append, never edit a shipped entry.
MIGRATIONS: dict[int, list[str]] = {
    1: [
        "CREATE TABLE IF NOT EXISTS worker_hosts (host_id TEXT PRIMARY KEY, report JSONB NOT NULL, "
        "seen_at DOUBLE PRECISION NOT NULL)",
    ],
}


class PostgresHosts:
    def __init__(self, db: PostgresDatabase) -> None:
        self.db = db
        db.migrate("worker_hosts", MIGRATIONS)

    def record(self, report: HostReport) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                f"INSERT INTO worker_hosts (host_id, report, seen_at) VALUES (%s, %s, {_NOW}) "
                "ON CONFLICT (host_id) DO UPDATE SET report = EXCLUDED.report, seen_at = EXCLUDED.seen_at",
                (report.host_id, Jsonb(report.to_json())),
            )

    def seen_within(self, seconds: float) -> list[HostReport]:
        with self.db.transaction() as conn:
            rows = conn.execute(
                f"SELECT host_id, report, {_NOW} - seen_at AS ago FROM worker_hosts "
                f"WHERE seen_at >= {_NOW} - %s ORDER BY host_id",
                (seconds,),
            ).fetchall()
        return [HostReport.from_json(r["host_id"], r["report"], r["ago"]) for r in rows]

    def forget(self, host_id: str) -> None:
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM worker_hosts WHERE host_id = %s", (host_id,))
