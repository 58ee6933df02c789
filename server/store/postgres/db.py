"""One PostgreSQL database: a connection pool, versioned migrations, and what counts as an outage.

Every store of the backend (predictions, deliveries, keys) takes the same ``PostgresDatabase``, so
a process holds one pool. Each call borrows a connection for one transaction (committed when the
block ends, rolled back on an exception). A connection the server dropped (a restart of
PostgreSQL) is found and replaced when it is next borrowed, so every process reconnects by itself.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

log = logging.getLogger("fluxserve.store")

# Taken (for one transaction) while migrating: several processes starting at once against a new
# database apply the migrations one at a time, and the later ones find nothing left to do.
MIGRATION_LOCK = 0x666C7578  # "flux"
POOL_TIMEOUT_S = 10.0  # how long a call waits for a connection before it is an outage


class PostgresDatabase:
    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10) -> None:
        self.url = url
        self.pool = ConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            kwargs={"row_factory": dict_row},
            check=ConnectionPool.check_connection,  # a dropped connection is replaced, not handed out
            timeout=POOL_TIMEOUT_S,
            open=False,
            name="fluxserve",
        )
        # Fails at once (naming the database) when it cannot be reached at start.
        self.pool.open(wait=True, timeout=POOL_TIMEOUT_S)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[psycopg.Connection]:
        """A connection in a transaction: committed when the block ends, rolled back on an error."""
        with self.pool.connection() as conn:
            yield conn

    def migrate(self, name: str, migrations: dict[int, list[str]]) -> None:
        """Bring the tables called ``name`` to the latest version in ``migrations`` (version ->
        statements; append, never edit a shipped entry). One process at a time."""
        latest = max(migrations)
        with self.transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS fluxserve_schema (name TEXT PRIMARY KEY, "
                "version INTEGER NOT NULL, updated_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            row = conn.execute("SELECT version FROM fluxserve_schema WHERE name = %s", (name,)).fetchone()
            version = row["version"] if row else 0
            if version > latest:
                raise RuntimeError(
                    f"the {name} tables of {redact(self.url)} have schema version {version}, newer than "
                    f"this build's {latest}: upgrade fluxserve"
                )
            for target in range(version + 1, latest + 1):
                for statement in migrations[target]:
                    conn.execute(statement)
            if version != latest:
                conn.execute(
                    "INSERT INTO fluxserve_schema (name, version) VALUES (%s, %s) "
                    "ON CONFLICT (name) DO UPDATE SET version = EXCLUDED.version, updated_at = now()",
                    (name, latest),
                )
                log.info("%s tables migrated from version %d to %d", name, version, latest)

    def close(self) -> None:
        self.pool.close()


def is_outage(exc: BaseException) -> bool:
    """The database cannot be used right now (down, restarting, unreachable, out of connections),
    so the same call may succeed later. Constraint and programming errors are bugs or bad data."""
    from psycopg_pool import PoolTimeout

    return isinstance(exc, psycopg.OperationalError | PoolTimeout | OSError)


def redact(url: str) -> str:
    """The url without its password, for messages and logs."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "the PostgreSQL database"
    host, port, db = info.get("host", "localhost"), info.get("port", "5432"), info.get("dbname", "")
    user = info.get("user")
    return f"postgresql://{user + '@' if user else ''}{host}:{port}/{db}"
