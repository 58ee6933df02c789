"""The SQLite prediction store: each test is one rule of server/store/base.py."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from server.predictions.model import (
    ALL_STATUSES,
    CANCELLED,
    ERROR,
    PROCESSING,
    STARTING,
    SUCCESS,
    WORKER_LOST,
    CancelOutcome,
    InFlightLimitExceeded,
    ListFilter,
    Prediction,
)
from server.store import SQLitePredictionStore, open_store
from server.store.sqlite.store import SCHEMA_VERSION


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "fluxserve.db"


@pytest.fixture
def store(db_path: Path):
    s = SQLitePredictionStore(db_path)
    yield s
    s.close()


def pred(
    pid: str, *, owner: str = "key-a", model: str = "flux-dev", created_at: float = 1000.0, **kw
) -> Prediction:
    kw.setdefault("input", {"prompt": pid})
    return Prediction(id=pid, owner=owner, model=model, created_at=created_at, **kw)


def add(store: SQLitePredictionStore, *preds: Prediction) -> None:
    for p in preds:
        store.create(p)


def running_one(store: SQLitePredictionStore, pid: str = "p1") -> Prediction:
    add(store, pred(pid))
    claimed = store.claim_next("w0")
    assert claimed is not None and claimed.id == pid
    return claimed


# -- the queue ---------------------------------------------------------------------------------


def test_claim_next_takes_the_oldest_first_and_ties_in_insertion_order(store):
    add(store, pred("late", created_at=30.0), pred("tie-1", created_at=10.0), pred("tie-2", created_at=10.0))
    add(store, pred("early", created_at=5.0))
    order = [store.claim_next("w").id for _ in range(4)]
    assert order == ["early", "tie-1", "tie-2", "late"]
    assert store.claim_next("w") is None


def test_claim_next_marks_the_row_processing_for_the_worker(store):
    add(store, pred("p1"))
    claimed = store.claim_next("gpu-0")
    assert claimed.status == PROCESSING
    assert claimed.worker_id == "gpu-0"
    assert claimed.attempts == 1
    assert claimed.started_at is not None and claimed.started_at >= claimed.created_at
    assert store.get("p1") == claimed


def test_create_sets_created_at_when_missing(store):
    p = pred("p1", created_at=0.0)
    store.create(p)
    assert p.created_at > 0
    assert store.get("p1").created_at == p.created_at


def test_prediction_round_trips_every_field(store):
    p = pred(
        "p1",
        input={"prompt": "un chat é", "seed": 4, "guidance": "3.5"},
        webhook_url="https://example.com/hook",
        webhook_secret="s3cret",
        extra={"api": "eachlabs", "events": ["completed"]},
    )
    store.create(p)
    assert store.get("p1") == p
    assert store.get("missing") is None


def _claim_in_child(db_path: str, worker_id: str, ready, go, results) -> None:
    store = SQLitePredictionStore(db_path)
    ready.put(worker_id)
    go.wait(30)
    claimed = []
    while (p := store.claim_next(worker_id)) is not None:
        claimed.append(p.id)
        time.sleep(0.001)  # "runs" the job, so the claimers interleave
    results.put((worker_id, claimed))
    store.close()


def test_claim_is_atomic_across_threads_and_processes(store, db_path):
    ids = [f"p{i:03d}" for i in range(200)]
    for i, pid in enumerate(ids):
        store.create(pred(pid, created_at=float(i + 1)))

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
        while (p := store.claim_next(worker_id)) is not None:
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
            row = store.get(pid)
            assert (row.status, row.attempts, row.worker_id) == (PROCESSING, 1, worker_id)


# -- terminal states are sticky ----------------------------------------------------------------


def test_finish_moves_to_terminal_appending_logs_and_merging_extra(store):
    add(store, pred("p1", logs="Using seed: 7\n", extra={"api": "eachlabs"}))
    store.claim_next("w")
    assert store.finish(
        "p1", SUCCESS, output=["out-0.webp"], predict_time=1.5, logs="done\n", extra={"seed": 7}
    )
    row = store.get("p1")
    assert row.status == SUCCESS
    assert row.output == ["out-0.webp"]
    assert row.predict_time == 1.5
    assert row.logs == "Using seed: 7\ndone\n"
    assert row.extra == {"api": "eachlabs", "seed": 7}
    assert row.completed_at is not None


def test_finish_twice_keeps_the_first_result(store):
    running_one(store)
    assert store.finish("p1", SUCCESS, output=["out-0.png"])
    first = store.get("p1")
    assert not store.finish("p1", ERROR, error="late failure", logs="late\n", extra={"x": 1})
    assert store.get("p1") == first


def test_finish_refuses_a_non_terminal_status(store):
    running_one(store)
    with pytest.raises(ValueError):
        store.finish("p1", STARTING)
    assert store.get("p1").status == PROCESSING


def test_finish_of_a_missing_prediction_returns_false(store):
    assert not store.finish("nope", SUCCESS)


def test_cancel_after_success_leaves_it_unchanged(store):
    running_one(store)
    store.finish("p1", SUCCESS, output=["out-0.webp"])
    before = store.get("p1")
    assert store.request_cancel("p1") is CancelOutcome.ALREADY_FINISHED
    assert store.get("p1") == before


def test_append_logs_after_terminal_is_a_no_op(store):
    running_one(store)
    store.append_logs("p1", "step 1/28\n")
    store.finish("p1", ERROR, error="boom")
    store.append_logs("p1", "step 2/28\n")
    assert store.get("p1").logs == "step 1/28\n"


def test_requeue_of_a_terminal_prediction_is_refused(store):
    running_one(store)
    store.finish("p1", SUCCESS)
    assert not store.requeue("p1", "again")
    assert store.get("p1").status == SUCCESS


# -- in-flight limit ---------------------------------------------------------------------------


def test_in_flight_limit_refusal_inserts_nothing(store):
    add(store, pred("a1"), pred("a2"))
    store.claim_next("w")  # one processing, one starting: both count
    with pytest.raises(InFlightLimitExceeded) as refused:
        store.create(pred("a3"), max_in_flight=2)
    assert (refused.value.in_flight, refused.value.limit) == (2, 2)
    assert store.get("a3") is None
    assert store.counts_by_status()[STARTING] == 1


def test_in_flight_limit_counts_only_the_owner_and_only_in_flight(store):
    add(store, pred("a1"), pred("b1", owner="key-b"), pred("b2", owner="key-b"))
    store.request_cancel("a1")  # terminal: no longer in flight
    store.create(pred("a2"), max_in_flight=1)
    assert store.in_flight("key-a") == 1
    assert store.in_flight("key-b") == 2
    assert store.in_flight("key-z") == 0


# -- cancel ------------------------------------------------------------------------------------


def test_cancel_of_a_queued_prediction_cancels_it_and_it_never_runs(store):
    add(store, pred("p1"))
    assert store.request_cancel("p1") is CancelOutcome.CANCELLED
    row = store.get("p1")
    assert row.status == CANCELLED
    assert row.completed_at is not None
    assert "Cancel" in row.logs
    assert store.claim_next("w") is None


def test_cancel_of_a_running_prediction_only_sets_the_flag(store):
    running_one(store)
    assert store.request_cancel("p1") is CancelOutcome.REQUESTED
    row = store.get("p1")
    assert (row.status, row.cancel_requested) == (PROCESSING, True)
    assert store.finish("p1", CANCELLED)  # the worker ends it


def test_cancel_of_a_finished_prediction_says_already_finished(store):
    running_one(store)
    store.finish("p1", ERROR, error="boom")
    assert store.request_cancel("p1") is CancelOutcome.ALREADY_FINISHED
    assert store.get("p1").status == ERROR


def test_cancel_of_an_unknown_prediction_says_not_found(store):
    assert store.request_cancel("nope") is CancelOutcome.NOT_FOUND


# -- requeue and restart -----------------------------------------------------------------------


def test_requeue_puts_it_back_at_the_head_of_the_queue(store):
    add(store, pred("first", created_at=1.0), pred("second", created_at=2.0))
    store.claim_next("w")
    assert store.requeue("first", "Requeued after the worker was lost.")
    row = store.get("first")
    assert (row.status, row.worker_id, row.started_at, row.created_at) == (STARTING, None, None, 1.0)
    assert row.logs.endswith("Requeued after the worker was lost.\n")
    again = store.claim_next("w2")
    assert (again.id, again.attempts) == ("first", 2)


def test_requeue_of_a_job_its_worker_never_got_gives_the_attempt_back(store):
    add(store, pred("first"))
    store.claim_next("w")
    assert store.requeue("first", "Requeued: its worker stopped before it started.", never_ran=True)
    assert store.get("first").attempts == 0
    assert store.claim_next("w2").attempts == 1


def test_ended_with_webhook_since_lists_recent_ends_that_have_a_webhook(store):
    add(
        store,
        pred("old", created_at=1.0, webhook_url="http://hook"),
        pred("hooked", created_at=2.0, webhook_url="http://hook"),
        pred("plain", created_at=3.0),
        pred("queued", created_at=4.0, webhook_url="http://hook"),
    )
    for _ in range(3):
        store.claim_next("w")
    store.finish("old", SUCCESS, output=[])
    store.connection().execute("UPDATE predictions SET completed_at = 10 WHERE id = 'old'")
    store.finish("hooked", ERROR, error="boom")
    store.finish("plain", SUCCESS, output=[])
    assert store.ended_with_webhook_since(100.0) == ["hooked"]
    assert store.ended_with_webhook_since(0.0) == ["old", "hooked"]


def test_requeue_of_a_queued_prediction_is_refused(store):
    add(store, pred("p1"))
    assert not store.requeue("p1", "no")
    assert not store.requeue("missing", "no")


def test_requeue_of_a_cancel_requested_prediction_cancels_it(store):
    running_one(store)
    store.request_cancel("p1")
    assert store.requeue("p1", "worker lost")
    assert store.get("p1").status == CANCELLED
    assert store.claim_next("w") is None


def test_recover_after_restart_with_one_attempt_fails_running_jobs(store, db_path):
    running_one(store, "running")
    add(store, pred("queued", created_at=2000.0))
    store.close()

    reopened = SQLitePredictionStore(db_path)
    assert reopened.recover_after_restart(max_attempts=1) == [("running", "failed")]
    row = reopened.get("running")
    assert (row.status, row.error) == (ERROR, WORKER_LOST)
    assert "Worker lost" in row.logs
    assert reopened.get("queued").status == STARTING  # pending jobs resume
    reopened.close()


def test_recover_after_restart_with_two_attempts_retries_once(store):
    running_one(store)
    assert store.recover_after_restart(max_attempts=2) == [("p1", "requeued")]
    assert store.get("p1").status == STARTING
    assert store.claim_next("w").attempts == 2
    assert store.recover_after_restart(max_attempts=2) == [("p1", "failed")]
    assert store.get("p1").status == ERROR


def test_running_lists_processing_rows_optionally_per_worker(store):
    add(store, pred("p1", created_at=1.0), pred("p2", created_at=2.0), pred("p3", created_at=3.0))
    store.claim_next("w1")
    store.claim_next("w2")
    assert [p.id for p in store.running()] == ["p1", "p2"]
    assert [p.id for p in store.running("w2")] == ["p2"]
    assert store.running("w9") == []


# -- listing and counts ------------------------------------------------------------------------


def test_list_returns_the_owners_predictions_newest_first_with_the_total(store):
    add(store, pred("old", created_at=1.0), pred("tie-a", created_at=5.0), pred("tie-b", created_at=5.0))
    add(store, pred("other", owner="key-b", created_at=9.0))
    items, total = store.list(ListFilter(owner="key-a"))
    assert [p.id for p in items] == ["tie-b", "tie-a", "old"]
    assert total == 3


def test_list_pages_with_limit_and_offset(store):
    add(store, *(pred(f"p{i}", created_at=float(i + 1)) for i in range(5)))
    items, total = store.list(ListFilter(owner="key-a", limit=2, offset=1))
    assert [p.id for p in items] == ["p3", "p2"]
    assert total == 5
    items, total = store.list(ListFilter(owner="key-a", limit=2, offset=10))
    assert (items, total) == ([], 5)


def test_list_filters_by_status_model_and_dates(store):
    add(
        store,
        pred("a", created_at=10.0),
        pred("b", created_at=20.0, model="flux-schnell"),
        pred("c", created_at=30.0),
        pred("d", created_at=40.0),
    )
    store.request_cancel("c")
    assert [p.id for p in store.list(ListFilter(owner="key-a", status=CANCELLED))[0]] == ["c"]
    assert [p.id for p in store.list(ListFilter(owner="key-a", model="flux-schnell"))[0]] == ["b"]
    items, total = store.list(ListFilter(owner="key-a", created_from=20.0, created_to=30.0))
    assert ([p.id for p in items], total) == (["c", "b"], 2)  # both ends inclusive
    items, total = store.list(ListFilter(owner="key-a", status=STARTING, model="flux-dev", created_from=15.0))
    assert ([p.id for p in items], total) == (["d"], 1)


def test_counts_by_status_reports_every_status_including_zeros(store):
    assert store.counts_by_status() == dict.fromkeys(ALL_STATUSES, 0)
    add(store, pred("p1", created_at=1.0), pred("p2", created_at=2.0), pred("p3", created_at=3.0))
    store.claim_next("w")
    store.request_cancel("p3")
    assert store.counts_by_status() == {STARTING: 1, PROCESSING: 1, SUCCESS: 0, ERROR: 0, CANCELLED: 1}


# -- retention ---------------------------------------------------------------------------------


def test_finished_before_and_mark_data_removed(store, monkeypatch):
    import server.store.sqlite.store as sqlite_module

    add(store, pred("old"), pred("new"), pred("queued"))
    monkeypatch.setattr(sqlite_module.time, "time", lambda: 100.0)
    store.request_cancel("old")
    monkeypatch.setattr(sqlite_module.time, "time", lambda: 200.0)
    store.request_cancel("new")
    monkeypatch.undo()

    assert [p.id for p in store.finished_before(150.0)] == ["old"]
    assert [p.id for p in store.finished_before(250.0)] == ["old", "new"]
    assert [p.id for p in store.finished_before(250.0, limit=1)] == ["old"]
    store.mark_data_removed("old")
    assert store.get("old").data_removed
    assert [p.id for p in store.finished_before(250.0)] == ["new"]


# -- the file ----------------------------------------------------------------------------------


def test_data_survives_reopening_the_file(store, db_path):
    add(store, pred("p1", extra={"seed": 3}))
    store.claim_next("w")
    store.finish("p1", SUCCESS, output=["out-0.webp"])
    before = store.get("p1")
    store.close()
    reopened = SQLitePredictionStore(db_path)
    assert reopened.get("p1") == before
    reopened.close()


def test_the_file_is_in_wal_mode_with_a_schema_version(store, db_path):
    assert store.connection().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.schema_version() == SCHEMA_VERSION
    assert db_path.exists()  # the parent folder was created


def test_integrity_check_of_a_sound_file_passes(store):
    add(store, pred("p1"))
    store.check_integrity()
    store.check_integrity(quick=True)


def test_a_file_from_a_newer_schema_is_refused(store, db_path):
    store.connection().execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    store.close()
    with pytest.raises(RuntimeError, match="newer"):
        SQLitePredictionStore(db_path)


def test_each_thread_gets_its_own_connection(store):
    seen: list[sqlite3.Connection] = []
    t = threading.Thread(target=lambda: seen.append(store.connection()))
    t.start()
    t.join()
    assert seen[0] is not store.connection()
    assert store.connection() is store.connection()


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


def test_open_store_with_a_redis_url_says_redis_is_not_available():
    with pytest.raises(ValueError, match="Redis support is not available"):
        open_store("redis://localhost:6379/0")


def test_open_store_refuses_unknown_schemes():
    with pytest.raises(ValueError, match="unsupported"):
        open_store("postgres://db/fluxserve")
