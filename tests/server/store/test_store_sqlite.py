"""The SQLite prediction store's own behaviour: its file, migrations, connections, claims across
processes, and its start-up recovery. The store's rules are tested on every implementation in
test_stores.py."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time

import pytest

from server.predictions.model import ERROR, PROCESSING, STARTING, SUCCESS, WORKER_LOST
from server.store import SQLitePredictionStore, open_store
from server.store.sqlite.store import MIGRATIONS, SCHEMA_VERSION
from tests.server.store.test_stores import add, pred, running_one

# -- claims across processes -----------------------------------------------------------------------


def _claim_in_child(db_path: str, worker_id: str, ready, go, results) -> None:
    sqlite_store = SQLitePredictionStore(db_path)
    ready.put(worker_id)
    go.wait(30)
    claimed = []
    while (p := sqlite_store.claim_next(worker_id)) is not None:
        claimed.append(p.id)
        time.sleep(0.001)  # "runs" the job, so the claimers interleave
    results.put((worker_id, claimed))
    sqlite_store.close()


def test_claim_is_atomic_across_threads_and_processes(sqlite_store, db_path):
    ids = [f"p{i:03d}" for i in range(200)]
    for i, pid in enumerate(ids):
        sqlite_store.create(pred(pid, created_at=float(i + 1)))

    ctx = multiprocessing.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(target=_claim_in_child, args=(str(db_path), f"proc-{i}", ready, go, results))
        for i in range(2)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=30)  # both children are up before anyone claims

    claimed_by: dict[str, list[str]] = {}

    def claim_in_thread(worker_id: str) -> None:
        go.wait(30)
        mine = claimed_by.setdefault(worker_id, [])
        while (p := sqlite_store.claim_next(worker_id)) is not None:
            mine.append(p.id)
            time.sleep(0.001)

    threads = [threading.Thread(target=claim_in_thread, args=(f"thread-{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join(30)
    for _ in procs:
        worker_id, claimed = results.get(timeout=30)
        claimed_by[worker_id] = claimed
    for p in procs:
        p.join(30)
        assert p.exitcode == 0

    assert sum(len(c) for w, c in claimed_by.items() if w.startswith("proc")) > 0  # they really raced
    assert sum(len(c) for w, c in claimed_by.items() if w.startswith("thread")) > 0
    every_claim = [pid for claimed in claimed_by.values() for pid in claimed]
    assert sorted(every_claim) == ids  # each row exactly once
    for worker_id, claimed in claimed_by.items():
        for pid in claimed:
            row = sqlite_store.get(pid)
            assert (row.status, row.attempts, row.worker_id) == (PROCESSING, 1, worker_id)


# -- start-up recovery: one server at a time uses the file --------------------------------------------


def test_recover_at_start_with_one_attempt_fails_running_jobs(sqlite_store, db_path):
    running_one(sqlite_store, "running")
    add(sqlite_store, pred("queued", created_at=2000.0))
    sqlite_store.close()

    reopened = SQLitePredictionStore(db_path)
    assert reopened.recover_at_start(1, "this-host") == [("running", "failed")]
    row = reopened.get("running")
    assert (row.status, row.error) == (ERROR, WORKER_LOST)
    assert "Worker lost" in row.logs
    assert reopened.get("queued").status == STARTING  # pending jobs resume
    reopened.close()


def test_recover_at_start_with_two_attempts_retries_once(sqlite_store):
    running_one(sqlite_store)
    assert sqlite_store.recover_at_start(2, "this-host") == [("p1", "requeued")]
    assert sqlite_store.get("p1").status == STARTING
    assert sqlite_store.claim_next("w").attempts == 2
    assert sqlite_store.recover_at_start(2, "this-host") == [("p1", "failed")]
    assert sqlite_store.get("p1").status == ERROR


def test_recover_at_start_settles_live_leases_of_any_host_at_once(sqlite_store):
    """The file's lock admits one server: a lease left in it is a dead predecessor's, even one
    whose host name differs (a container gets a new one at each restart)."""
    add(sqlite_store, pred("p1"))
    sqlite_store.claim_next("old-container:41:w0.1", lease_s=3600)
    assert sqlite_store.recover_at_start(1, "new-container") == [("p1", "failed")]


# -- migrations ------------------------------------------------------------------------------------


def make_version_1_file(db_path) -> None:
    """A database as the first schema made it, with one queued and one running prediction."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    for statement in MIGRATIONS[1]:
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    for pid, status, worker in (("queued", STARTING, None), ("running", PROCESSING, "old-host:7:w0.1")):
        conn.execute(
            "INSERT INTO predictions (id, owner, model, input, status, created_at, attempts, worker_id) "
            "VALUES (?, 'k', 'flux-dev', '{\"prompt\": \"a\"}', ?, 1.0, ?, ?)",
            (pid, status, 1 if worker else 0, worker),
        )
    conn.close()


def test_a_version_1_file_is_migrated_and_its_rows_read_with_no_params_and_no_lease(db_path):
    make_version_1_file(db_path)
    store = SQLitePredictionStore(db_path)
    try:
        assert store.schema_version() == SCHEMA_VERSION
        queued, running = store.get("queued"), store.get("running")
        assert (queued.params, queued.input) == ({}, {"prompt": "a"})
        assert (running.params, running.lease_expires_at) == ({}, None)
    finally:
        store.close()


def test_a_running_row_from_before_leases_counts_as_expired(db_path):
    make_version_1_file(db_path)
    store = SQLitePredictionStore(db_path)
    try:
        assert store.recover_expired(1) == [("running", "failed")]
    finally:
        store.close()


# -- the file ----------------------------------------------------------------------------------


def test_data_survives_reopening_the_file(sqlite_store, db_path):
    add(sqlite_store, pred("p1", extra={"seed": 3}))
    sqlite_store.claim_next("w")
    sqlite_store.finish("p1", SUCCESS, output=["out-0.webp"])
    before = sqlite_store.get("p1")
    sqlite_store.close()
    reopened = SQLitePredictionStore(db_path)
    assert reopened.get("p1") == before
    reopened.close()


def test_the_file_is_in_wal_mode_with_a_schema_version(sqlite_store, db_path):
    assert sqlite_store.connection().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert sqlite_store.schema_version() == SCHEMA_VERSION
    assert db_path.exists()  # the parent folder was created


def test_integrity_check_of_a_sound_file_passes(sqlite_store):
    add(sqlite_store, pred("p1"))
    sqlite_store.check_integrity()
    sqlite_store.check_integrity(quick=True)


def test_a_file_from_a_newer_schema_is_refused(sqlite_store, db_path):
    sqlite_store.connection().execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    sqlite_store.close()
    with pytest.raises(RuntimeError, match="newer"):
        SQLitePredictionStore(db_path)


def test_each_thread_gets_its_own_connection(sqlite_store):
    seen: list[sqlite3.Connection] = []
    t = threading.Thread(target=lambda: seen.append(sqlite_store.connection()))
    t.start()
    t.join()
    assert seen[0] is not sqlite_store.connection()
    assert sqlite_store.connection() is sqlite_store.connection()


def test_bad_synchronous_mode_is_refused(db_path):
    with pytest.raises(ValueError):
        SQLitePredictionStore(db_path, synchronous="FULL; DROP TABLE predictions")


# -- open_store --------------------------------------------------------------------------------


def test_open_store_accepts_a_path_and_a_sqlite_url(tmp_path, monkeypatch):
    by_path = open_store(str(tmp_path / "a.db"))
    assert isinstance(by_path, SQLitePredictionStore)
    by_path.close()
    absolute = open_store(f"sqlite:///{tmp_path}/b.db?synchronous=normal")  # tmp_path starts with /
    assert absolute.path == tmp_path / "b.db"
    assert absolute.synchronous == "NORMAL"
    absolute.close()
    monkeypatch.chdir(tmp_path)
    relative = open_store("sqlite:///rel/c.db")
    assert relative.path == tmp_path.resolve() / "rel" / "c.db"
    relative.close()


def test_open_store_with_a_redis_url_says_redis_cannot_hold_predictions_and_what_can():
    with pytest.raises(ValueError, match="Redis cannot hold the predictions.*postgresql://"):
        open_store("redis://localhost:6379/0")


def test_open_store_refuses_unknown_schemes():
    with pytest.raises(ValueError, match="unsupported"):
        open_store("mysql://db/fluxserve")
