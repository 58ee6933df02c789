"""The supervisor's decisions at the edges of a worker's life, driven directly: a real SQLite store
and output folder, a stand-in for the worker process and its pipe (these races need a result and
a kill, or an exit and a claim, to land in one precise order, which real processes give only by
chance). The real-process paths are in test_faults.py.
"""

from __future__ import annotations

import time
import uuid

from server.predictions.model import STARTING, SUCCESS, Prediction
from server.workers.messages import JobSucceeded, RunJob, WorkerReady
from server.workers.supervisor import W_BUSY, W_FAILED, W_READY, W_STARTING, W_STOPPED, WorkerSlot
from tests.server.helpers import run_in_own_loop


class FakeProcess:
    def __init__(self) -> None:
        self.killed = False
        self.exitcode: int | None = None

    def kill(self) -> None:
        self.killed = True
        self.exitcode = -9

    def is_alive(self) -> bool:
        return not self.killed

    def join(self, timeout: float | None = None) -> None:
        pass


class FakePipe:
    def __init__(self, broken: bool = False) -> None:
        self.sent: list[object] = []
        self.broken = broken

    def send(self, msg: object) -> None:
        if self.broken:
            raise BrokenPipeError("the worker is gone")
        self.sent.append(msg)


def queue(store, *ids: str) -> None:
    for n, pid in enumerate(ids):
        store.create(
            Prediction(id=pid, owner="k", model="flux-dev", input={"prompt": pid}, created_at=1000.0 + n)
        )


def test_a_result_arriving_after_the_timeout_kill_does_not_bring_the_slot_back(parts):
    supervisor, store, slot = parts
    slow, following = str(uuid.uuid4()), str(uuid.uuid4())  # output folders are named by uuid
    queue(store, slow, following)
    slot.job, slot.state = store.claim_next(slot.worker_id), W_BUSY
    slot.job_started = time.monotonic() - 60

    supervisor.check_timeouts(time.monotonic())
    assert slot.process.killed and slot.state == W_STOPPED

    async def result_then_dispatch() -> None:
        # The worker had finished just before the kill: its result is already in the inbox.
        await supervisor.handle(slot, JobSucceeded(slow, [], 1, 0.1, ""))
        await supervisor.jobs.dispatch()

    run_in_own_loop(result_then_dispatch())
    assert store.get(slow).status == SUCCESS
    assert slot.conn.sent == []  # nothing was sent to the dead process
    assert store.get(following).status == STARTING


def test_a_worker_ready_after_the_load_timeout_does_not_revive_the_slot(parts):
    supervisor, _store, slot = parts
    slot.state, slot.started_at = W_STARTING, time.monotonic() - 60

    supervisor.check_timeouts(time.monotonic())
    run_in_own_loop(supervisor.handle(slot, WorkerReady("cpu", "float32", "/w", True, 59.0)))

    assert slot.state == W_FAILED
    assert "loading the model took longer than 5 s" in slot.setup_error


def test_a_job_whose_worker_is_gone_before_it_is_sent_is_requeued_with_its_attempt(parts):
    supervisor, store, slot = parts
    queue(store, "p1")
    slot.state, slot.conn = W_READY, FakePipe(broken=True)

    run_in_own_loop(supervisor.jobs.dispatch())

    row = store.get("p1")
    assert (row.status, row.attempts) == (STARTING, 0)
    assert "Requeued: its worker stopped before it started." in row.logs
    assert slot.state == W_STOPPED and slot.job is None


def test_a_store_failure_while_settling_an_exit_still_starts_a_new_worker(parts, monkeypatch):
    supervisor, store, slot = parts
    queue(store, "p1")
    slot.job, slot.state = store.claim_next(slot.worker_id), W_BUSY
    slot.process.kill()
    spawned: list[WorkerSlot] = []
    monkeypatch.setattr(supervisor, "_spawn", spawned.append)

    def locked(*args, **kwargs):
        raise RuntimeError("database is locked")

    monkeypatch.setattr(store, "finish", locked)
    run_in_own_loop(supervisor.handle(slot, None))

    assert spawned == [slot]


def test_a_worker_process_that_cannot_be_started_is_reported_not_left_silent(parts, monkeypatch):
    supervisor, _store, slot = parts
    slot.state = W_READY
    slot.process.kill()

    def no_processes(_slot):
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(supervisor, "_spawn", no_processes)
    run_in_own_loop(supervisor.handle(slot, None))

    assert slot.state == W_FAILED
    assert "could not start a worker process" in slot.setup_error
    assert supervisor.health()[0] == "SETUP_FAILED"


def test_sent_jobs_carry_the_claimed_attempt(parts):
    supervisor, store, slot = parts
    queue(store, "p1")
    slot.state = W_READY

    run_in_own_loop(supervisor.jobs.dispatch())

    [job] = slot.conn.sent
    assert isinstance(job, RunJob) and (job.prediction_id, job.attempt) == ("p1", 1)
    assert slot.state == W_BUSY and store.get("p1").status == "processing"
