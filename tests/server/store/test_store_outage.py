"""The supervisor while the prediction store refuses writes (its disk is full), driven directly:
a real SQLite store whose writes are made to fail the way SQLite fails on a full disk, the real
output folder, a stand-in worker process and pipe (see test_supervisor_races.py). A real full
disk under a real server is in test_faults.py.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
import uuid
from pathlib import Path

import pytest

from server.config import Settings
from server.outputs.local import LocalOutputStorage
from server.predictions.model import CANCELLED, ERROR, PROCESSING, SUCCESS, CancelOutcome, Prediction
from server.store.sqlite.store import SQLitePredictionStore
from server.workers import jobs as jobs_module
from server.workers.messages import JobSucceeded, OutputImage
from server.workers.supervisor import W_BUSY, W_READY, Supervisor, WorkerSlot
from tests.server.helpers import run_in_own_loop
from tests.server.workers.test_supervisor_races import FakePipe, FakeProcess, queue

DISK_FULL = "database or disk is full"
IMAGE = OutputImage(b"RIFF\x1a\x00\x00\x00WEBPVP8 fake image", "webp", "image/webp", 64, 64, 7)


class Outage:
    """While ``active``, the store's writes raise what SQLite raises on a full disk; reads work."""

    WRITES = ("create", "claim_next", "append_logs", "finish", "requeue", "request_cancel", "probe_write")

    def __init__(self, store: SQLitePredictionStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.active = False
        for name in self.WRITES:
            monkeypatch.setattr(store, name, self._guard(getattr(store, name)))

    def _guard(self, real):
        def call(*args, **kwargs):
            if self.active:
                raise sqlite3.OperationalError(DISK_FULL)
            return real(*args, **kwargs)

        return call


@pytest.fixture
def parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    settings = Settings(data_dir=str(tmp_path / "data"))
    store = SQLitePredictionStore(tmp_path / "data" / "fluxserve.db")
    finished: list[Prediction] = []
    supervisor = Supervisor(
        settings,
        store,
        LocalOutputStorage(tmp_path / "outputs"),
        notify=lambda _pid: None,
        on_finished=finished.append,
    )
    slot = WorkerSlot(index=0, gpu=None, generation=1)
    slot.process, slot.conn = FakeProcess(), FakePipe()
    supervisor.slots.append(slot)
    yield supervisor, store, slot, finished, Outage(store, monkeypatch)
    store.close()


def running(store, slot, *ids: str) -> None:
    """Queue the ids and give the first to the slot, as dispatch does."""
    queue(store, *ids)
    slot.job, slot.state = store.claim_next(slot.worker_id), W_BUSY


def test_a_result_the_store_refuses_is_kept_and_recorded_once_the_store_takes_it(parts, tmp_path):
    supervisor, store, slot, finished, outage = parts
    pid = str(uuid.uuid4())
    running(store, slot, pid)

    async def scenario():
        outage.active = True
        await supervisor.handle(slot, JobSucceeded(pid, [IMAGE], 7, 0.5, ""))
        during = (store.get(pid).status, slot.state, slot.job, len(finished))
        await supervisor.retry_pending_ends()  # still full: still kept
        outage.active = False
        await supervisor.retry_pending_ends()
        await supervisor.retry_pending_ends()  # nothing left: recorded once
        return during

    during = run_in_own_loop(scenario())

    assert during == (PROCESSING, W_READY, None, 0)  # the slot went on; the row waited
    row = store.get(pid)
    assert (row.status, row.output, row.predict_time) == (SUCCESS, ["out-0.webp"], 0.5)
    assert (tmp_path / "outputs" / pid / "out-0.webp").read_bytes() == IMAGE.data
    assert [(p.id, p.status) for p in finished] == [(pid, SUCCESS)]  # webhook hook: once, after the record


def test_a_cancel_made_while_the_result_waits_ends_it_cancelled_and_discards_the_images(parts, tmp_path):
    supervisor, store, slot, finished, outage = parts
    pid = str(uuid.uuid4())
    running(store, slot, pid)

    async def scenario():
        outage.active = True
        await supervisor.handle(slot, JobSucceeded(pid, [IMAGE], 7, 0.5, ""))
        outage.active = False
        assert store.request_cancel(pid) is CancelOutcome.REQUESTED  # the row still says processing
        await supervisor.retry_pending_ends()

    run_in_own_loop(scenario())

    row = store.get(pid)
    assert (row.status, row.output) == (CANCELLED, [])
    assert "Cancelled: the images were discarded." in row.logs
    assert not (tmp_path / "outputs" / pid).exists()
    assert [(p.id, p.status) for p in finished] == [(pid, CANCELLED)]


def test_a_lost_workers_job_the_store_cannot_settle_ends_once_the_store_works(parts, monkeypatch):
    supervisor, store, slot, finished, outage = parts
    running(store, slot, "p1")
    slot.process.kill()
    monkeypatch.setattr(supervisor, "_spawn", lambda _slot: None)

    async def scenario():
        outage.active = True
        await supervisor.handle(slot, None)
        during = store.get("p1").status
        outage.active = False
        await supervisor.retry_pending_ends()
        return during

    assert run_in_own_loop(scenario()) == PROCESSING
    row = store.get("p1")
    assert (row.status, row.error) == (ERROR, "worker lost")
    assert [p.id for p in finished] == ["p1"]


def test_health_is_unhealthy_with_the_stores_error_while_an_end_waits_and_ready_after(parts):
    supervisor, store, slot, _finished, outage = parts
    pid = str(uuid.uuid4())
    running(store, slot, pid)

    async def scenario():
        outage.active = True
        await supervisor.handle(slot, JobSucceeded(pid, [IMAGE], 7, 0.5, ""))
        during = supervisor.health()
        outage.active = False
        await supervisor.retry_pending_ends()
        return during, supervisor.health()

    (status, details), (status_after, details_after) = run_in_own_loop(scenario())

    assert status == "UNHEALTHY"
    assert details["reason"] == f"the prediction store is failing: {DISK_FULL}"
    assert details["store"]["status"] == "failing"
    assert details["store"]["error"] == DISK_FULL
    assert details["store"]["unrecorded_ends"] == 1
    assert "failing_since" in details["store"]
    assert (status_after, details_after["store"]) == ("READY", {"status": "ok"})


def test_a_failing_store_is_logged_once_when_it_fails_and_once_when_it_recovers(parts, monkeypatch, caplog):
    supervisor, store, slot, _finished, outage = parts
    queue(store, "p1", "p2")
    slot.state = W_READY
    monkeypatch.setattr(jobs_module, "FALLBACK_DISPATCH_S", 0.01)  # a dispatch round every 10 ms

    async def scenario():
        outage.active = True
        loop = asyncio.create_task(supervisor.jobs.run_dispatch())
        await asyncio.sleep(0.5)  # about 50 rounds, each claim refused
        outage.active = False
        await asyncio.sleep(0.2)
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)

    with caplog.at_level(logging.INFO, logger="fluxserve"):
        run_in_own_loop(scenario())

    lines = [r.getMessage() for r in caplog.records if r.name.startswith("fluxserve")]
    assert [line.split(" (")[0] for line in lines if line.startswith("store ")] == [
        f"store failing: {DISK_FULL}",
        "store recovered",
    ]
    assert not [line for line in lines if "dispatch failed" in line]
    assert not [r for r in caplog.records if r.exc_info]  # no traceback for a known outage
    assert slot.job is not None and slot.job.id == "p1"  # dispatch went on once the store took writes


def test_an_idle_server_reports_the_store_working_again_once_a_probe_write_goes_through(parts, monkeypatch):
    supervisor, _store, slot, _finished, outage = parts
    slot.state = W_READY
    monkeypatch.setattr(jobs_module, "RETRY_FIRST_S", 0.01)
    monkeypatch.setattr(jobs_module, "RETRY_MAX_S", 0.02)

    async def scenario():
        retry = asyncio.create_task(supervisor.jobs.run_retries())
        outage.active = True
        supervisor.store_failed(sqlite3.OperationalError(DISK_FULL))  # e.g. a create refused; nothing kept
        await asyncio.sleep(0.2)  # probes keep failing
        during = supervisor.health()
        outage.active = False
        await asyncio.sleep(0.2)  # no create, no claim, no kept end: only the probe can tell
        after = supervisor.health()
        retry.cancel()
        await asyncio.gather(retry, return_exceptions=True)
        return during, after

    (status, details), (status_after, details_after) = run_in_own_loop(scenario())

    assert (status, details["store"]["error"]) == ("UNHEALTHY", DISK_FULL)
    assert details_after["store"] == {"status": "ok"}
    assert status_after == "READY"


# -- the app's WAL checkpoints ---------------------------------------------------------------------


def wait_for(condition, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def app_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An app (no workers) on a real store, checkpointing every 20 ms."""
    from server import app as app_module

    monkeypatch.setattr(app_module, "CHECKPOINT_INTERVAL_S", 0.02)
    settings = Settings(data_dir=str(tmp_path / "data"))
    store = SQLitePredictionStore(settings.db_path)
    return settings, store


def test_checkpoints_the_full_disk_refuses_mark_the_store_failing_with_one_line_and_no_traceback(
    app_parts, monkeypatch, caplog
):
    from fastapi.testclient import TestClient

    from server.app import create_app

    settings, store = app_parts
    rounds: list[str] = []

    def full_disk(mode: str = "PASSIVE", busy_timeout_ms: int = 0) -> bool:
        rounds.append(mode)
        raise sqlite3.OperationalError(DISK_FULL)

    monkeypatch.setattr(store, "checkpoint", full_disk)
    app = create_app(settings, store=store, start_workers=False)
    with caplog.at_level(logging.INFO), TestClient(app):
        wait_for(lambda: len(rounds) >= 5)
        health = app.state.fluxserve.supervisor.store_health.info()
        records = list(caplog.records)

    assert (health["status"], health["error"]) == ("failing", DISK_FULL)
    failing = [r for r in records if r.getMessage().startswith("store failing")]
    assert [r.getMessage() for r in failing] == [f"store failing: {DISK_FULL}"]
    assert not [r for r in records if r.exc_info], "no traceback while the disk is full"


def test_a_stop_waits_for_a_running_checkpoint_before_its_own(app_parts, monkeypatch, caplog):
    """SQLite answers "busy" to a checkpoint while another runs: the stop's must come after the
    loop's, or the log warns that the database file is incomplete when it is not."""
    from fastapi.testclient import TestClient

    from server.app import create_app

    settings, store = app_parts
    real = store.checkpoint
    running = threading.Lock()
    loop_checkpoint_started = threading.Event()

    def one_at_a_time(mode: str = "PASSIVE", busy_timeout_ms: int = 0) -> bool:
        if not running.acquire(blocking=False):
            return False  # what SQLite answers while another checkpoint runs
        try:
            if busy_timeout_ms == 0:  # the loop's: a slow disk
                loop_checkpoint_started.set()
                time.sleep(0.5)
            return real(mode, busy_timeout_ms)
        finally:
            running.release()

    monkeypatch.setattr(store, "checkpoint", one_at_a_time)
    app = create_app(settings, store=store, start_workers=False)
    with caplog.at_level(logging.INFO), TestClient(app):
        assert loop_checkpoint_started.wait(10)

    assert not [r for r in caplog.records if "checkpoint" in r.getMessage()], caplog.text
