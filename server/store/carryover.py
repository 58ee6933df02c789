"""Stored API keys, webhook signing secrets and webhook deliveries that earlier versions kept in
``<data_dir>/fluxserve.db`` while ``store_url`` put the predictions in another file.

They now live in the store's own file (``Settings.db_path``). A server upgraded with such a
``store_url`` would otherwise find no stored key and start open, and lose its pending webhooks
and signing secrets. ``carry_over`` copies those rows into the store's file, once per source file
(recorded in the target's ``carried_over`` table, so a delivery sent and pruned since is never
copied again). The source is opened read-only and left as it is. A row the target holds already
is kept as the target has it; a stored key whose name an active key of the target uses already is
not copied, and reported.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from server.store.sqlite.db import DatabaseUnusable

if TYPE_CHECKING:
    from server.config import Settings

# What each table is called in a sentence, in the order the rows are copied.
TABLES = {
    "api_keys": "stored API key(s)",
    "webhook_signing_keys": "webhook signing secret(s)",
    "webhook_deliveries": "webhook deliveries",
}

_MARKER = """
CREATE TABLE IF NOT EXISTS carried_over (
    source     TEXT PRIMARY KEY,    -- the file the rows came from
    carried_at REAL NOT NULL
);
"""


@dataclass
class CarriedOver:
    source: Path
    target: Path
    copied: dict[str, int] = field(default_factory=dict)  # rows copied, by table
    skipped_keys: list[str] = field(default_factory=list)  # active key names the target had already

    def message(self) -> str | None:
        """One line for the log, or None when nothing needs saying."""
        parts = [f"{n} {TABLES[t]}" for t, n in self.copied.items() if n]
        if not parts and not self.skipped_keys:
            return None
        line = (
            f"carried {', '.join(parts) or 'nothing'} over from {self.source} into {self.target} "
            "(they live in store_url's file now; the old file is no longer read)"
        )
        if self.skipped_keys:
            names = ", ".join(repr(n) for n in self.skipped_keys)
            line += (
                f"; not the stored key(s) {names}: an active key of that name exists in {self.target} "
                "already, so the old key gets 401 (revoke one and create a new key if that is wrong)"
            )
        return line


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # the target does not exist yet
        return os.path.realpath(a) == os.path.realpath(b)


def _tables(conn: sqlite3.Connection, schema: str) -> dict[str, list[str]]:
    """The columns of each table of TABLES that ``schema`` holds."""
    names = {r[0] for r in conn.execute(f"SELECT name FROM {schema}.sqlite_master WHERE type = 'table'")}
    return {t: [r[1] for r in conn.execute(f"PRAGMA {schema}.table_info({t})")] for t in TABLES if t in names}


def _create_tables(target: Path) -> None:
    from server.store.sqlite.deliveries import SQLiteDeliveryStore
    from server.store.sqlite.keys import SQLiteKeyStore

    for store in (SQLiteKeyStore(target), SQLiteDeliveryStore(target)):
        store.close()


def carry_over(source: Path, target: Path) -> CarriedOver | None:
    """Copy the rows of TABLES from ``source`` into ``target``, unless this source was carried
    over already. None when ``source`` is ``target``, does not exist or holds no such row;
    DatabaseUnusable when it cannot be read (the server must not start without the keys it holds)."""
    if not source.is_file() or _same_file(source, target):
        return None
    result = CarriedOver(source, target)
    try:
        with contextlib.closing(
            sqlite3.connect(target.as_uri(), uri=True, timeout=10, isolation_level=None)
        ) as conn:
            conn.execute("ATTACH DATABASE ? AS source", (f"{source.as_uri()}?mode=ro",))
            found = _tables(conn, "source")
            if not any(conn.execute(f"SELECT 1 FROM source.{t} LIMIT 1").fetchone() for t in found):
                return None
            _create_tables(target)
            conn.executescript(_MARKER)
            conn.execute("BEGIN IMMEDIATE")  # one at a time: a `keys` command and `serve` may race
            try:
                if conn.execute("SELECT 1 FROM carried_over WHERE source = ?", (str(source),)).fetchone():
                    conn.execute("ROLLBACK")
                    return None
                into = _tables(conn, "main")
                for table, columns in found.items():
                    cols = ", ".join(c for c in into[table] if c in columns)
                    # A row whose key the target holds already (same key, same delivery, an owner's
                    # secret) stays as the target has it. WHERE true: an upsert after a SELECT needs it.
                    cur = conn.execute(
                        f"INSERT INTO main.{table} ({cols}) SELECT {cols} FROM source.{table} WHERE true "
                        "ON CONFLICT DO NOTHING"
                    )
                    result.copied[table] = cur.rowcount
                if "api_keys" in found:
                    result.skipped_keys = [
                        r[0]
                        for r in conn.execute(
                            "SELECT name FROM source.api_keys WHERE revoked_at IS NULL "
                            "AND key_hash NOT IN (SELECT key_hash FROM main.api_keys) ORDER BY name"
                        )
                    ]
                conn.execute(
                    "INSERT INTO carried_over (source, carried_at) VALUES (?, ?)", (str(source), time.time())
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
    except sqlite3.Error as exc:
        raise DatabaseUnusable(
            f"cannot carry the stored API keys and webhooks that earlier versions kept in {source} over "
            f"into {target} ({exc}): restore {source} from a backup, or move it away to start without them"
        ) from exc
    return result


def carry_over_keys(settings: Settings) -> str | None:
    """What earlier versions kept in the data folder's database while store_url named another
    file, carried into the store's file (`serve` and the `keys` commands call this first). The
    line to log, if any; DatabaseUnusable when those rows cannot be read."""
    carried = carry_over(settings.data_dir_db_path, settings.db_path)
    return carried.message() if carried else None
