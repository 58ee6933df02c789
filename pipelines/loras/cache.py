"""The download cache of adapter files: one folder, shared by every worker process of a host.

Layout: ``<sha256(key)>.safetensors`` (the entry), ``<sha256>.json`` (key, display, size, fetched_at),
``<sha256>.lock`` and ``.fetch`` (its locks), and ``.tmp-*`` files while a download runs. An entry exists
only once its file was checked and fsynced: a download goes to a temporary file in the same folder
and is renamed into place, so a crash leaves a temporary file (removed at the next start), never a
partial entry.

Locks (``fcntl.flock``, so they hold across threads and processes, and die with their process):

- ``<sha256>.fetch``, exclusive, while one asker downloads: the others wait on it and then find the
  entry (one download however many ask at once);
- ``<sha256>.lock``, shared, while a caller uses the file (``use``): eviction takes it exclusive
  without waiting and skips an entry it cannot take;
- ``.evict.lock`` so two processes do not evict at once.

LRU: each use touches the entry's mtime; after an insert the least recently used entries are
deleted until the folder is within ``max_bytes``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pipelines.images import format_bytes
from pipelines.loras.errors import AdapterFetchError
from pipelines.loras.sources import AdapterSource
from pipelines.safetensors_check import SafetensorsError, TruncatedSafetensors, check_safetensors_header

log = logging.getLogger(__name__)

# Writes an adapter's bytes into the sink, or raises AdapterFetchError.
Fetch = Callable[[BinaryIO], None]

_SUFFIX = ".safetensors"
_TEMP_PREFIX = ".tmp-"
# A temporary file younger than this may be one another worker has just created and not locked
# yet: left alone by the start-up clean-up (an older unlocked one is a dead process's).
_TEMP_GRACE_S = 300.0


@dataclass(frozen=True)
class CacheEntry:
    key: str
    display: str
    size: int
    fetched_at: float
    last_used: float
    path: Path


def not_safetensors_message(display: str, problem: SafetensorsError) -> str:
    if isinstance(problem, TruncatedSafetensors):
        return f"LoRA {display} is truncated ({problem})"
    return f"LoRA {display} is not a safetensors file ({problem}); only .safetensors adapters are loaded"


class AdapterCache:
    """Adapter files keyed by ``AdapterSource.key``, at most ``max_bytes`` on disk (LRU)."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_leftovers()

    # -- the public side ----------------------------------------------------------------------
    @contextlib.contextmanager
    def use(self, source: AdapterSource, fetch: Fetch) -> Iterator[Path]:
        """The entry of ``source`` (fetched first if missing), held so no eviction deletes it
        until the block ends. Raises AdapterFetchError (fetch failed, not a safetensors file,
        larger than the whole cache, the folder not writable)."""
        stem = self._stem(source.key)
        path = self.root / f"{stem}{_SUFFIX}"
        while True:
            held = _lock(self.root / f"{stem}.lock", fcntl.LOCK_SH)
            if path.is_file():
                try:
                    _touch(path)
                    yield path
                    return
                finally:
                    _unlock(held)
            _unlock(held)
            # Missing: the first asker to get the fetch lock downloads, the others wait on it.
            fetching = _lock(self.root / f"{stem}.fetch", fcntl.LOCK_EX)
            try:
                inserted = not path.is_file()
                if inserted:
                    self._fetch_into(source, stem, fetch)
                held = _lock(self.root / f"{stem}.lock", fcntl.LOCK_SH)  # before others may evict
            finally:
                _unlock(fetching)
            try:
                if not path.is_file():
                    continue  # evicted between another's insert and our lock: ask again
                _touch(path)
                if inserted:
                    self.evict()
                yield path
                return
            finally:
                _unlock(held)

    def entries(self) -> list[CacheEntry]:
        """The entries, least recently used first."""
        found = []
        for path in self.root.glob(f"*{_SUFFIX}"):
            if path.name.startswith(_TEMP_PREFIX):
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            try:
                meta = json.loads(path.with_suffix(".json").read_text())
            except (OSError, ValueError):
                meta = {}
            found.append(
                CacheEntry(
                    key=str(meta.get("key", "")),
                    display=str(meta.get("display", "")),
                    size=stat.st_size,
                    fetched_at=float(meta.get("fetched_at", stat.st_mtime)),
                    last_used=stat.st_mtime,
                    path=path,
                )
            )
        return sorted(found, key=lambda e: (e.last_used, e.path.name))

    def evict(self) -> list[CacheEntry]:
        """Delete least recently used entries until the total is within ``max_bytes``; an entry in
        use is skipped. The evicted entries."""
        evicted: list[CacheEntry] = []
        with open(self.root / ".evict.lock", "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            entries = self.entries()
            total = sum(e.size for e in entries)
            for entry in entries:
                if total <= self.max_bytes:
                    break
                if not self._delete_if_unused(entry.path.name[: -len(_SUFFIX)]):
                    continue
                total -= entry.size
                evicted.append(entry)
                log.info(
                    "Evicted LoRA %s from the adapter cache (%s)", entry.display, format_bytes(entry.size)
                )
        return evicted

    # -- inside -------------------------------------------------------------------------------
    @staticmethod
    def _stem(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    def _fetch_into(self, source: AdapterSource, stem: str, fetch: Fetch) -> None:
        try:
            self._fetch_checked(source, stem, fetch)
        except OSError as exc:
            raise AdapterFetchError(
                f"could not store LoRA {source.display} in the adapter cache {self.root}: {exc}"
            ) from None

    def _fetch_checked(self, source: AdapterSource, stem: str, fetch: Fetch) -> None:
        fd, name = tempfile.mkstemp(prefix=f"{_TEMP_PREFIX}{stem[:16]}-", suffix=_SUFFIX, dir=self.root)
        temp = Path(name)
        try:
            with os.fdopen(fd, "r+b") as sink:
                # Held while writing: the start-up clean-up of another process leaves this file alone.
                fcntl.flock(sink, fcntl.LOCK_EX)
                fetch(sink)
                sink.flush()
                os.fsync(sink.fileno())
                size = sink.tell()
                if size > self.max_bytes:
                    raise AdapterFetchError(
                        f"LoRA {source.display} is {format_bytes(size)}, more than the whole adapter "
                        f"cache ({format_bytes(self.max_bytes)}, loras.cache_max_gb)"
                    )
                try:
                    check_safetensors_header(temp)
                except SafetensorsError as exc:
                    raise AdapterFetchError(not_safetensors_message(source.display, exc)) from None
                meta = {"key": source.key, "display": source.display, "size": size, "fetched_at": time.time()}
                # The file first: a sidecar without its file would be cleaned as a leftover.
                os.replace(temp, self.root / f"{stem}{_SUFFIX}")
                _write_atomically(self.root / f"{stem}.json", json.dumps(meta).encode())
            _fsync_dir(self.root)
            log.info("Downloaded LoRA %s (%s) into the adapter cache", source.display, format_bytes(size))
        finally:
            temp.unlink(missing_ok=True)

    def _delete_if_unused(self, stem: str) -> bool:
        lock_path = self.root / f"{stem}.lock"
        lock = _try_lock(lock_path, fcntl.LOCK_EX)
        if lock is None:
            return False
        try:
            (self.root / f"{stem}{_SUFFIX}").unlink(missing_ok=True)
            (self.root / f"{stem}.json").unlink(missing_ok=True)
            lock_path.unlink(missing_ok=True)  # waiters notice the unlinked inode and reopen
            fetch_lock = _try_lock(self.root / f"{stem}.fetch", fcntl.LOCK_EX, create=False)
            if fetch_lock is not None:  # none is downloading it: the fetch lock goes too
                (self.root / f"{stem}.fetch").unlink(missing_ok=True)
                _unlock(fetch_lock)
            return True
        finally:
            _unlock(lock)

    def _remove_leftovers(self) -> None:
        """Temporary files of a killed process, and sidecars or locks without an entry."""
        for temp in self.root.glob(f"{_TEMP_PREFIX}*"):
            try:
                if time.time() - temp.stat().st_mtime < _TEMP_GRACE_S:
                    continue
            except FileNotFoundError:
                continue
            held = _try_lock(temp, fcntl.LOCK_EX, create=False)
            if held is not None:  # no live writer holds it
                temp.unlink(missing_ok=True)
                _unlock(held)
        for extra in [*self.root.glob("*.json"), *self.root.glob("*.lock"), *self.root.glob("*.fetch")]:
            if extra.name.startswith(".") or (self.root / f"{extra.stem}{_SUFFIX}").exists():
                continue
            if extra.suffix == ".json":
                extra.unlink(missing_ok=True)
            else:
                self._remove_orphan_locks(extra.stem)

    def _remove_orphan_locks(self, stem: str) -> None:
        """The lock files of a key with no entry, unless another process is fetching or using it
        right now (another worker of this host may be: this runs whenever a worker starts)."""
        fetch_path, lock_path = self.root / f"{stem}.fetch", self.root / f"{stem}.lock"
        fetching = _try_lock(fetch_path, fcntl.LOCK_EX, create=False)
        if fetching is None and fetch_path.exists():
            return  # a download is under way: its entry is about to appear
        try:
            using = _try_lock(lock_path, fcntl.LOCK_EX, create=False)
            if using is None and lock_path.exists():
                return
            try:
                # Holding the fetch lock, no entry can appear meanwhile: check once more. Only a
                # lock file held here is unlinked (one created since is another asker's, in use);
                # waiters on an unlinked one notice and reopen.
                if not (self.root / f"{stem}{_SUFFIX}").exists():
                    if using is not None:
                        lock_path.unlink(missing_ok=True)
                    if fetching is not None:
                        fetch_path.unlink(missing_ok=True)
            finally:
                if using is not None:
                    _unlock(using)
        finally:
            if fetching is not None:
                _unlock(fetching)


# --- locks ----------------------------------------------------------------------------------
# Lock files are deleted with their entry. A waiter may then hold a lock on the deleted inode, so
# every acquisition checks that the file it locked is still the one at the path, else reopens.


def _lock(path: Path, mode: int) -> BinaryIO:
    while True:
        fh = open(path, "ab")  # noqa: SIM115 - closed by _unlock
        fcntl.flock(fh, mode)
        if _same_file(fh, path):
            return fh
        fh.close()


def _try_lock(path: Path, mode: int, *, create: bool = True) -> BinaryIO | None:
    try:
        fh = open(path, "ab" if create else "rb")  # noqa: SIM115 - closed by _unlock
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fh, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    if not _same_file(fh, path):
        fh.close()
        return None
    return fh


def _same_file(fh: BinaryIO, path: Path) -> bool:
    try:
        return os.fstat(fh.fileno()).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _unlock(fh: BinaryIO) -> None:
    fh.close()  # closing the descriptor releases its flock


def _touch(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.utime(path)


def _write_atomically(path: Path, data: bytes) -> None:
    temp = path.with_name(f"{_TEMP_PREFIX}{path.name}")
    with open(temp, "wb") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # see _fetch_into
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(temp, path)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
