"""One server per database and per data folder: exclusive locks held while the server runs.

A second `fluxserve serve` on the same database would run restart recovery and end the first
server's running prediction as "worker lost", then run its queued ones; it stops at these locks
instead. The database lock is taken on ``<database file>.lock`` beside the file, its path
resolved through symlinks, so it holds wherever ``store_url`` puts the file and whatever data
folder each server has. The data-folder lock keeps two servers out of one data folder, and the
outputs lock (``.fluxserve.lock`` in the outputs folder) out of one outputs folder wherever
``outputs.dir`` puts it: each would report the other's images as missing from its database. The
kernel drops a lock when its process dies, so a killed server never leaves a stale one behind.

On a shared PostgreSQL store only the data-folder lock is taken, by processes that run workers
(``server.services.server_lock``): it keeps two worker hosts from running under one host id.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class ServerBusy(RuntimeError):
    """Another server holds a lock; the message names it and what to do."""


class DataDirBusy(ServerBusy):
    pass


class DatabaseBusy(ServerBusy):
    pass


class OutputsBusy(ServerBusy):
    pass


class _FileLock:
    """An flock on a small file that holds the holder's pid (for the message)."""

    error: type[ServerBusy] = ServerBusy

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def busy_message(self, holder: str) -> str:
        raise NotImplementedError

    def acquire(self) -> None:
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise self.error(self.busy_message(holder)) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class DataDirLock(_FileLock):
    error = DataDirBusy

    def __init__(self, folder: Path) -> None:
        super().__init__(folder / ".fluxserve.lock")

    def busy_message(self, holder: str) -> str:
        return (
            f"another fluxserve server (pid {holder}) is using the data folder {self.path.parent}; "
            "stop it or set another data_dir"
        )


class DatabaseLock(_FileLock):
    error = DatabaseBusy

    def __init__(self, db_path: str | os.PathLike[str]) -> None:
        self.db_path = Path(os.path.realpath(db_path))
        super().__init__(self.db_path.with_name(self.db_path.name + ".lock"))

    def busy_message(self, holder: str) -> str:
        return (
            f"another fluxserve server (pid {holder}) is using the database {self.db_path}; "
            "stop it, or give this server a store_url of its own"
        )


class OutputsLock(_FileLock):
    error = OutputsBusy

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(os.path.realpath(folder))
        super().__init__(self.folder / ".fluxserve.lock")

    def busy_message(self, holder: str) -> str:
        return (
            f"another fluxserve server (pid {holder}) is using the outputs folder {self.folder}; "
            "stop it, or give this server an outputs.dir of its own"
        )


class ServerLock:
    """The locks one server holds: its data folder's, its database's, then its outputs folder's
    (which may lie outside the data folder). ``acquire`` is idempotent (`fluxserve serve` takes
    them before the app starts, the app's start-up again)."""

    def __init__(
        self,
        data_path: Path,
        db_path: str | os.PathLike[str] | None,
        outputs_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.locks: list[_FileLock] = [DataDirLock(data_path)]
        if db_path is not None:
            self.locks.append(DatabaseLock(db_path))
        if outputs_path is not None:
            outputs = OutputsLock(outputs_path)
            # An outputs.dir that is the data folder itself is under that folder's lock already
            # (a second flock on the same file from this process would refuse itself).
            if all(os.path.realpath(lock.path) != os.path.realpath(outputs.path) for lock in self.locks):
                self.locks.append(outputs)

    def acquire(self) -> None:
        try:
            for lock in self.locks:
                lock.acquire()
        except ServerBusy:
            self.release()
            raise

    def release(self) -> None:
        for lock in reversed(self.locks):
            lock.release()
