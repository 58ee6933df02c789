"""The adapter download cache (pipelines/loras/cache.py): one fetch per key however many ask, whole
files only, LRU within the disk budget, entries in use kept."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import threading
import time
from pathlib import Path
from typing import BinaryIO

import pytest

from pipelines.loras.cache import AdapterCache
from pipelines.loras.errors import AdapterFetchError
from pipelines.loras.sources import parse_adapter_source
from tests.server.helpers import safetensors_bytes


def source(n: int = 1):
    return parse_adapter_source(f"https://files.example/a{n}.safetensors?X-Amz-Signature=s3cret")


def writer(data: bytes, calls: list[int] | None = None, delay_s: float = 0.0):
    def fetch(sink: BinaryIO) -> None:
        if calls is not None:
            calls.append(1)
        time.sleep(delay_s)
        sink.write(data)

    return fetch


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_missing_entry_is_fetched_once_then_served_from_disk(tmp_path, adapter_bytes):
    cache = AdapterCache(tmp_path, 10**6)
    calls: list[int] = []
    with cache.use(source(), writer(adapter_bytes, calls)) as first:
        assert first.read_bytes() == adapter_bytes
    with cache.use(source(), writer(adapter_bytes, calls)) as second:
        assert second == first
    assert len(calls) == 1


def test_the_sidecar_records_key_and_display_without_the_signature(tmp_path, adapter_bytes):
    cache = AdapterCache(tmp_path, 10**6)
    with cache.use(source(), writer(adapter_bytes)):
        pass
    [entry] = cache.entries()
    assert entry.key == "https://files.example/a1.safetensors"
    assert entry.display == "https://files.example/a1.safetensors?X-Amz-Signature=REDACTED"
    assert entry.size == len(adapter_bytes)
    assert "s3cret" not in "".join(p.read_text(errors="replace") for p in tmp_path.iterdir())


def test_three_threads_asking_at_once_fetch_once(tmp_path, adapter_bytes):
    cache = AdapterCache(tmp_path, 10**6)
    calls: list[int] = []
    start = threading.Barrier(3)
    got: list[bytes] = []

    def ask() -> None:
        start.wait()
        with cache.use(source(), writer(adapter_bytes, calls, delay_s=0.3)) as path:
            got.append(path.read_bytes())

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(calls) == 1 and got == [adapter_bytes] * 3


def _ask_in_another_process(root: str, count_file: str, go: float) -> None:
    def fetch(sink: BinaryIO) -> None:
        with open(count_file, "a") as fh:
            fh.write("x")
        time.sleep(0.3)
        sink.write(safetensors_bytes())

    time.sleep(max(0.0, go - time.time()))
    with AdapterCache(Path(root), 10**6).use(source(), fetch) as path:
        assert path.read_bytes() == safetensors_bytes()


def test_two_processes_asking_at_once_fetch_once(tmp_path):
    count = tmp_path / "fetches"
    count.touch()
    go = time.time() + 3  # both processes past their imports before either asks
    context = multiprocessing.get_context("spawn")
    procs = [
        context.Process(target=_ask_in_another_process, args=(str(tmp_path / "cache"), str(count), go))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert count.read_text() == "x"


def test_eviction_keeps_the_folder_within_budget_and_drops_the_least_recently_used(tmp_path):
    one = safetensors_bytes(250)  # ~1 KiB each
    cache = AdapterCache(tmp_path, 3 * len(one))
    for n in (1, 2, 3):
        with cache.use(source(n), writer(one)):
            pass
        time.sleep(0.02)  # distinct use times
    with cache.use(source(1), writer(one)):  # 1 is now the most recent, 2 the least
        pass
    time.sleep(0.02)
    with cache.use(source(4), writer(one)):
        pass
    kept = {e.key.rsplit("/", 1)[1] for e in cache.entries()}
    assert kept == {"a1.safetensors", "a3.safetensors", "a4.safetensors"}
    assert sum(e.size for e in cache.entries()) <= cache.max_bytes


def test_an_entry_in_use_is_not_evicted(tmp_path):
    one = safetensors_bytes(250)
    cache = AdapterCache(tmp_path, 2 * len(one))
    with cache.use(source(1), writer(one)) as busy:
        for n in (2, 3):
            time.sleep(0.02)
            with cache.use(source(n), writer(one)):
                pass
        assert busy.is_file()
    kept = {e.key.rsplit("/", 1)[1] for e in cache.entries()}
    assert kept == {"a1.safetensors", "a3.safetensors"}


def test_a_fetch_that_fails_midway_leaves_no_entry_and_no_temp_file(tmp_path, adapter_bytes):
    cache = AdapterCache(tmp_path, 10**6)

    def cut(sink: BinaryIO) -> None:
        sink.write(adapter_bytes[:20])
        raise AdapterFetchError("connection closed")

    with pytest.raises(AdapterFetchError, match="connection closed"):
        with cache.use(source(), cut):
            pass
    assert cache.entries() == []
    assert not [n for n in names(tmp_path) if n.startswith(".tmp-")]


def test_a_truncated_file_is_refused_and_not_kept(tmp_path, adapter_bytes):
    cache = AdapterCache(tmp_path, 10**6)
    with pytest.raises(AdapterFetchError, match=r"is truncated \(\d+ bytes on disk, \d+ expected\)"):
        with cache.use(source(), writer(adapter_bytes[:-3])):
            pass
    assert cache.entries() == [] and not [n for n in names(tmp_path) if n.startswith(".tmp-")]


def test_a_file_that_is_not_safetensors_is_refused(tmp_path):
    cache = AdapterCache(tmp_path, 10**6)
    with pytest.raises(AdapterFetchError, match="is not a safetensors file"):
        with cache.use(source(), writer(b"<!DOCTYPE html><html>login</html>")):
            pass
    assert cache.entries() == []


def test_a_file_bigger_than_the_whole_budget_is_refused(tmp_path, adapter_bytes):
    cache = AdapterCache(tmp_path, len(adapter_bytes) - 1)
    with pytest.raises(
        AdapterFetchError, match=r"more than the whole adapter cache \(.*loras.cache_max_gb\)"
    ):
        with cache.use(source(), writer(adapter_bytes)):
            pass
    assert cache.entries() == []


def test_leftover_temp_files_are_removed_at_start_but_not_a_live_download(tmp_path, adapter_bytes):
    AdapterCache(tmp_path, 10**6)
    an_hour_ago = time.time() - 3600
    dead = tmp_path / ".tmp-dead-1.safetensors"
    dead.write_bytes(b"partial")
    live = tmp_path / ".tmp-live-2.safetensors"
    just_made = tmp_path / ".tmp-new-3.safetensors"  # made by another worker, not locked yet
    just_made.write_bytes(b"")
    with open(live, "wb") as writing:
        fcntl.flock(writing, fcntl.LOCK_EX)  # what a download in another process holds
        for old in (dead, live):
            os.utime(old, (an_hour_ago, an_hour_ago))
        AdapterCache(tmp_path, 10**6)
        assert not dead.exists()
        assert live.exists() and just_made.exists()


def test_a_worker_starting_during_a_download_leaves_it_alone(tmp_path):
    # Another worker's cache opened while a download runs: it neither deletes the temporary file
    # nor the locks, so the download completes once and every asker gets the entry.
    data = safetensors_bytes(64)
    started, release = threading.Event(), threading.Event()

    def slow(sink):
        started.set()
        release.wait(10)
        sink.write(data)

    got = []
    asker = threading.Thread(target=lambda: got.append(_read(AdapterCache(tmp_path, 10**6), source(1), slow)))
    asker.start()
    started.wait(10)
    AdapterCache(tmp_path, 10**6)  # a worker starting now
    release.set()
    asker.join(10)

    calls: list[int] = []
    assert got == [data]
    assert _read(AdapterCache(tmp_path, 10**6), source(1), writer(data, calls)) == data and calls == []


def _read(cache, src, fetch) -> bytes:
    with cache.use(src, fetch) as path:
        return path.read_bytes()


def test_an_evicted_entry_is_fetched_again(tmp_path):
    one = safetensors_bytes(250)
    cache = AdapterCache(tmp_path, len(one))
    calls: list[int] = []
    for n in (1, 2, 1):
        with cache.use(source(n), writer(one, calls)):
            pass
    assert len(calls) == 3
    assert [os.path.basename(e.key) for e in cache.entries()] == ["a1.safetensors"]


def test_workers_starting_and_asking_at_once_download_once(tmp_path):
    # Each asker opens its own cache (a worker starting: its clean-up runs) at the same moment as
    # the others ask: the clean-up must never unlink a lock another asker holds. Repeated, since
    # the race it guards against needs a particular interleaving.
    data = safetensors_bytes(16)
    for trial in range(120):
        root = tmp_path / f"trial-{trial}"
        calls: list[int] = []
        got: list[bytes] = []
        barrier = threading.Barrier(3)

        def ask(calls=calls, got=got, root=root, barrier=barrier) -> None:
            barrier.wait()
            got.append(_read(AdapterCache(root, 10**6), source(1), writer(data, calls, delay_s=0.01)))

        threads = [threading.Thread(target=ask) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert got == [data] * 3, f"trial {trial}: {len(got)} of 3 askers got the file"
        assert len(calls) == 1, f"trial {trial}: {len(calls)} downloads"
