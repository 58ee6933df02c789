"""A throwaway PostgreSQL cluster for tests: ``initdb`` in a temporary folder, served on a free
loopback port with trust authentication, removed at the end.

Debian's packages keep ``initdb`` and ``pg_ctl`` in /usr/lib/postgresql/<version>/bin, off PATH;
they are looked up there (the newest version) when PATH has none. PostgreSQL refuses to run as
root, so as root the cluster belongs to the ``postgres`` user and every command runs through
``runuser -u postgres``; as any other user it runs directly.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.services.base import Service, ServiceUnavailable, accepts_connections, free_port, log_tail

INSTALL_HINT = "install it: apt-get install -y postgresql (.ci/run does this as root)"
RUN_AS_WHEN_ROOT = "postgres"


def find_bin_dir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: PATH's, else the newest Debian version folder."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).parent
    candidates = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")]
    candidates = [p for p in candidates if (p / "initdb").is_file()]

    def version(bin_dir: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", bin_dir.parent.name)) or (0,)

    return max(candidates, key=version, default=None)


class PostgresServer(Service):
    """``start()``, ``dsn``, ``restart(mode="fast")``, ``stop()``; ``new_database()`` for a fresh
    database per test."""

    def __init__(self, port: int | None = None, bin_dir: Path | None = None) -> None:
        self.port = port or free_port()
        self.bin_dir = bin_dir or find_bin_dir()
        self.as_root = os.geteuid() == 0
        self.user = "postgres"  # the superuser initdb creates (-U)
        self.root: Path | None = None
        self._databases = 0

    # -- paths and commands -----------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        assert self.root is not None, "start() first"
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        assert self.root is not None, "start() first"
        return self.root / "postgres.log"

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def _run(self, tool: str, *args: str, timeout: float = 60) -> None:
        assert self.bin_dir is not None and self.root is not None
        command = [str(self.bin_dir / tool), *args]
        if self.as_root:
            command = ["runuser", "-u", RUN_AS_WHEN_ROOT, "--", *command]
        done = subprocess.run(command, cwd=self.root, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            output = (done.stdout + done.stderr).strip()[-2000:]
            raise ServiceUnavailable(
                f"PostgreSQL: {tool} {args[0] if args else ''} failed ({done.returncode}):\n{output}\n"
                f"log:\n{log_tail(self.log_file)}"
            )

    def _server_options(self) -> str:
        # Loopback TCP only, the socket in our folder (not /var/run/postgresql), and no fsync:
        # a test cluster need not survive a power cut, and fsync makes every commit slow.
        return f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> PostgresServer:
        if self.bin_dir is None or not (self.bin_dir / "initdb").is_file():
            raise ServiceUnavailable(f"PostgreSQL's initdb and pg_ctl were not found: {INSTALL_HINT}")
        if self.as_root and shutil.which("runuser") is None:
            raise ServiceUnavailable(
                "running as root, PostgreSQL needs runuser (util-linux) to drop to postgres"
            )
        if self.root is None:
            # Not under pytest's tmp_path: that folder is private to root, and the cluster's
            # owner must be able to reach its own files.
            self.root = Path(tempfile.mkdtemp(prefix="fluxserve-test-pg-"))
            if self.as_root:
                try:
                    shutil.chown(self.root, user=RUN_AS_WHEN_ROOT, group=RUN_AS_WHEN_ROOT)
                except (LookupError, OSError) as exc:
                    raise ServiceUnavailable(
                        f"no usable '{RUN_AS_WHEN_ROOT}' user to run PostgreSQL as ({exc}): {INSTALL_HINT}"
                    ) from None
            self._run("initdb", "-D", str(self.data_dir), "-U", self.user, "--auth=trust",
                      "--encoding=UTF8", "--locale=C", "--no-sync")  # fmt: skip
        self._pg_ctl("start")
        return self

    def _pg_ctl(self, action: str, mode: str | None = None) -> None:
        args = [action, "-D", str(self.data_dir), "-w", "-t", "60"]
        if mode is not None:
            args += ["-m", mode]
        if action in ("start", "restart"):
            args += ["-l", str(self.log_file), "-o", self._server_options()]
        self._run("pg_ctl", *args, timeout=90)
        if action in ("start", "restart") and not accepts_connections(self.port):
            raise ServiceUnavailable(f"PostgreSQL started but port {self.port} refuses connections")

    def restart(self, mode: str = "fast") -> None:
        """``fast``: roll back open transactions and close every connection, then start again
        (``smart`` waits for clients; ``immediate`` stops without a checkpoint, like a crash)."""
        self._pg_ctl("restart", mode)

    def stop(self, mode: str = "fast") -> None:
        if self.root is not None and (self.data_dir / "postmaster.pid").exists():
            self._pg_ctl("stop", mode)

    def close(self) -> None:
        try:
            self.stop("immediate")
        finally:
            if self.root is not None:
                shutil.rmtree(self.root, ignore_errors=True)
                self.root = None

    def new_database(self) -> str:
        """A fresh, empty database; its DSN."""
        import psycopg

        self._databases += 1
        name = f"test_{self._databases}"
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn_for(name)

    def __repr__(self) -> str:
        who = f" as {RUN_AS_WHEN_ROOT}" if self.as_root else f" as {getpass.getuser()}"
        return f"PostgresServer({self.dsn}{who}, {self.bin_dir})"
