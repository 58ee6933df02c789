"""One server per data folder: an exclusive lock held while the server runs its workers.

A second `fluxserve serve` on the same folder would run restart recovery and end the first
server's running prediction as "worker lost"; it stops at this lock instead. The kernel drops
the lock when the process dies, so a killed server never leaves a stale one behind.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class DataDirBusy(RuntimeError):
    pass


class DataDirLock:
    def __init__(self, folder: Path) -> None:
        self.path = folder / ".fluxserve.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirBusy(
                f"another fluxserve server (pid {holder}) is using the data folder {self.path.parent}; "
                "stop it or set another data_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
