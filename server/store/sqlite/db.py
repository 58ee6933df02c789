"""The SQLite plumbing the prediction store, the key store and the delivery store share.

Each thread gets its own connection (a sqlite3 connection is not for two threads at once), and
a process that forked opens fresh ones (a connection must never cross a fork). The file is in
WAL mode so readers never block the writer. Autocommit is on (``isolation_level=None``): the
only transactions are the explicit ones below. Schemas stay with the stores that own them.

A file SQLite cannot read (not a database, a damaged page, no permission) raises
``DatabaseUnusable`` with one sentence naming the file and what to do, instead of a bare
``sqlite3.DatabaseError``.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
CHECKPOINT_MODES = ("PASSIVE", "FULL", "RESTART", "TRUNCATE")

# What to tell the operator, by SQLite's primary error code.
_DAMAGED = ("SQLITE_NOTADB", "SQLITE_CORRUPT")
_CANNOT_OPEN = ("SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_READONLY", "SQLITE_AUTH")
RESTORE_ADVICE = "restore a backup (see README, Operations); `fluxserve db check` shows what is wrong"


def _casefold(value: object) -> str | None:
    return value.casefold() if isinstance(value, str) else None


class DatabaseUnusable(RuntimeError):
    """The database file cannot be used as it is; the message names it and says what to do."""


class DatabaseDamaged(DatabaseUnusable):
    """The file is not a database, or SQLite found damaged pages in it (``problems``)."""

    def __init__(self, path: str | os.PathLike[str], problems: list[str]) -> None:
        self.path = os.fspath(path)
        self.problems = problems
        summary = "; ".join(problems[:3])
        super().__init__(f"the database {self.path} is damaged ({summary}): {RESTORE_ADVICE}")


# What reading the database raises when it cannot be read: a bad disk, a damaged file.
STORE_ERRORS = (sqlite3.Error, OSError, DatabaseUnusable)


def is_damage(exc: sqlite3.Error) -> bool:
    """The file itself is bad (not a database, a malformed page), as opposed to busy or locked."""
    return getattr(exc, "sqlite_errorname", "").startswith(_DAMAGED)


def unusable(path: str | os.PathLike[str], exc: sqlite3.Error) -> DatabaseUnusable | None:
    """The one-line error for a failure that means the file cannot be used, else None."""
    if is_damage(exc):
        return DatabaseDamaged(path, [str(exc)])
    if getattr(exc, "sqlite_errorname", "").startswith(_CANNOT_OPEN):
        return DatabaseUnusable(
            f"cannot open the database {os.fspath(path)} ({exc}): "
            "check the path, its folder and their permissions"
        )
    return None


@contextlib.contextmanager
def reporting_unusable(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a damaged or unreadable file's sqlite3 error into ``DatabaseUnusable``."""
    try:
        yield
    except sqlite3.Error as exc:
        error = unusable(path, exc)
        if error is None:
            raise
        raise error from exc


def check_integrity(conn: sqlite3.Connection, path: str | os.PathLike[str], *, quick: bool = False) -> None:
    """Read every page of the file once: ``quick`` runs PRAGMA quick_check (about a second per
    GB), else integrity_check (which also matches each index to its table). DatabaseDamaged
    when the file is damaged, DatabaseUnusable when it cannot be opened. `serve` (quick) and
    `fluxserve db check` (full) both check through here."""
    pragma = "quick_check" if quick else "integrity_check"
    with reporting_unusable(path):
        problems = [row[0] for row in conn.execute(f"PRAGMA {pragma}")]
    if problems != ["ok"]:
        raise DatabaseDamaged(path, problems)


class _Connection(sqlite3.Connection):
    """A connection that remembers which process opened it."""

    pid: int


class SQLiteDatabase:
    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str | None = None,
        busy_timeout_ms: int = 10_000,
        schema: str | None = None,
    ) -> None:
        """``synchronous=None`` keeps SQLite's compiled-in default; ``schema`` (a script of
        CREATE ... IF NOT EXISTS statements) is run once here."""
        self.path = os.fspath(path)
        if self.path == ":memory:" or self.path.startswith("file:"):
            # Every thread would get its own, empty, database (and a URI is not a file path).
            raise ValueError(
                f"SQLite needs a database file path, not {self.path!r} (each thread opens its own connection)"
            )
        if synchronous is not None:
            synchronous = synchronous.upper()
            if synchronous not in SYNCHRONOUS_MODES:  # it goes into a PRAGMA: no free text
                raise ValueError(f"synchronous must be one of {SYNCHRONOUS_MODES}, not {synchronous!r}")
        self.synchronous = synchronous
        self.busy_timeout_ms = int(busy_timeout_ms)
        self._local = threading.local()
        with reporting_unusable(self.path):
            # WAL is a property of the file (it persists), so setting it once here is enough.
            mode = self.connection().execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise RuntimeError(f"could not put {self.path} in WAL mode (got {mode!r})")
            if schema:
                self.connection().executescript(schema)

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use (and again in a forked child)."""
        conn: _Connection | None = getattr(self._local, "conn", None)
        if conn is not None and conn.pid == os.getpid():
            return conn
        # check_same_thread=False because the last reference to a dropped connection may go
        # away in another thread; each connection is only ever used by the thread that opened it.
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout_ms / 1000,
            isolation_level=None,
            check_same_thread=False,
            factory=_Connection,
        )
        conn.pid = os.getpid()
        conn.row_factory = sqlite3.Row
        # SQLite's own lower() and LIKE fold ASCII only: a prompt search folds every letter.
        conn.create_function("casefold", 1, _casefold, deterministic=True)
        conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
        if self.synchronous is not None:
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: BEGIN IMMEDIATE takes the write lock before the first read, so
        what we read cannot change before we write (waits up to the busy timeout for it)."""
        conn = self.connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: several SELECTs see one consistent state."""
        conn = self.connection()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")

    def checkpoint(self, mode: str = "PASSIVE", busy_timeout_ms: int = 0) -> bool:
        """Copy the WAL's committed pages into the database file, so the file alone holds every
        row (a backup or a lost ``-wal`` then loses nothing). TRUNCATE also empties the WAL; it
        waits up to ``busy_timeout_ms`` for readers and writers, then does what it can. A short-lived
        connection of its own, so the wait never holds up this thread's. True when complete."""
        mode = mode.upper()
        if mode not in CHECKPOINT_MODES:  # it goes into a PRAGMA: no free text
            raise ValueError(f"checkpoint mode must be one of {CHECKPOINT_MODES}, not {mode!r}")
        conn = sqlite3.connect(self.path, timeout=busy_timeout_ms / 1000, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            busy, _, _ = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
            return busy == 0
        finally:
            conn.close()

    def close(self) -> None:
        """Close this thread's connection and drop every other thread's. Another thread's
        connection is never closed from here: it may be mid-query (closing a sqlite3 connection
        under a running statement crashes the process). A dropped connection closes itself
        when its last user lets go of it; a thread that comes back later opens a new one."""
        mine: _Connection | None = getattr(self._local, "conn", None)
        self._local = threading.local()
        if mine is not None and mine.pid == os.getpid():  # one inherited across a fork is the parent's
            with contextlib.suppress(sqlite3.Error):
                mine.close()
