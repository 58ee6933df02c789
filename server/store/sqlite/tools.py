"""`fluxserve backup` and `fluxserve db check`: the database file, copied and examined.

Both work while the server runs. The backup goes through SQLite's online backup API, which
copies a consistent snapshot including what is still in the WAL (copying the file alone can
miss every recent row), into one self-contained file a server can start on.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from server.store.sqlite.db import (
    RESTORE_ADVICE,
    DatabaseDamaged,
    DatabaseUnusable,
    check_integrity,
    reporting_unusable,
    unusable,
)


def _open_existing(path: Path) -> sqlite3.Connection:
    """A connection to a database that must exist already (mode=rw never creates one)."""
    if not path.is_file():
        raise DatabaseUnusable(f"there is no database at {path} (check data_dir / store_url)")
    return sqlite3.connect(f"{path.as_uri()}?mode=rw", uri=True, timeout=10)


def backup(source: Path, target: Path) -> int:
    """Copy the database at ``source`` to ``target`` (which must not exist); returns the number
    of predictions copied."""
    if target.exists():
        raise FileExistsError(f"{target} exists already: choose a new file name")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    with contextlib.closing(_open_existing(source)) as src:
        try:
            with contextlib.closing(sqlite3.connect(partial)) as dst:
                src.backup(dst)
                # One file on its own: no -wal beside it to forget when it is moved or restored.
                dst.execute("PRAGMA journal_mode=DELETE")
                count = _count(dst)
            os.replace(partial, target)
        except sqlite3.Error as exc:
            partial.unlink(missing_ok=True)
            error = unusable(source, exc)
            if error is None:
                raise
            raise error from exc
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    return count


def _count(conn: sqlite3.Connection) -> int:
    try:
        return conn.execute("SELECT count(*) FROM predictions").fetchone()[0]
    except sqlite3.OperationalError:  # no such table: a database no server has started on yet
        return 0


@dataclass
class CheckReport:
    path: Path
    ok: bool
    lines: list[str] = field(default_factory=list)


def _size(path: Path) -> str:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "none"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""  # unreachable


def check(path: Path) -> CheckReport:
    """SQLite's full integrity check, then what the file holds (schema version, predictions by
    status, stored keys)."""
    report = CheckReport(path, ok=False)
    wal = path.with_name(path.name + "-wal")
    report.lines.append(f"database: {path} ({_size(path)}; WAL {_size(wal)})")
    try:
        with reporting_unusable(path), contextlib.closing(_open_existing(path)) as conn:
            check_integrity(conn, path)  # the check `serve` makes at start, in full
            report.lines.append("integrity: ok")
            report.lines.append(f"schema version: {conn.execute('PRAGMA user_version').fetchone()[0]}")
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "predictions" in tables:
                rows = conn.execute(
                    "SELECT status, count(*) FROM predictions GROUP BY status ORDER BY status"
                )
                by_status = dict(rows.fetchall())
                detail = ", ".join(f"{s} {n}" for s, n in by_status.items())
                report.lines.append(
                    f"predictions: {sum(by_status.values())}" + (f" ({detail})" if detail else "")
                )
            else:
                report.lines.append("predictions: no table (no server has started on this database)")
            if "api_keys" in tables:
                keys = conn.execute("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL").fetchone()[0]
                report.lines.append(f"stored API keys: {keys} active")
    except DatabaseDamaged as exc:
        report.lines.append("integrity: FAILED")
        report.lines += [f"  {p}" for p in exc.problems[:20]]
        report.lines.append(f"the database is damaged: {RESTORE_ADVICE.split(';')[0]}")
        return report
    except sqlite3.Error as exc:  # busy, an I/O error: the file may be sound
        raise DatabaseUnusable(f"cannot read the database {path}: {exc}") from exc
    report.ok = True
    return report
