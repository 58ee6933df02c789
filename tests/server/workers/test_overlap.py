"""A slot holding one job on the GPU and jobs being finished (``GpuFreeSoon``), driven directly:
a real SQLite store and output folder, a stand-in worker process and pipe (conftest.py)."""

from __future__ import annotations

import time
import uuid

from server.metrics import ServerMetrics
from server.predictions.model import CANCELLED, ERROR, PROCESSING, SUCCESS, WORKER_LOST
from server.workers.messages import (
    CancelJob,
    GpuFreeSoon,
    JobCancelled,
    JobStarted,
    JobSucceeded,
    OutputImage,
    RunJob,
)
from server.workers.slot import MAX_FINISHING
from server.workers.supervisor import W_BUSY, W_READY, W_STOPPED
from tests.server.helpers import run_in_own_loop
from tests.server.workers.test_supervisor_races import queue

IMAGE = OutputImage(b"RIFF\x1a\x00\x00\x00WEBPVP8 fake image", "webp", "image/webp", 64, 64, 7)


def sent_jobs(slot) -> list[str]:
    return [msg.prediction_id for msg in slot.conn.sent if isinstance(msg, RunJob)]


def first_finishing_second_on_gpu(supervisor, store, slot, second_taken: bool = True) -> tuple[str, str]:
    """Two queued jobs; the first says GpuFreeSoon, so the second is sent while it finishes (and,
    with ``second_taken``, the worker takes it from its queue)."""
    first, second = str(uuid.uuid4()), str(uuid.uuid4())  # output folders are named by uuid
    queue(store, first, second)
    slot.state = W_READY

    async def run() -> None:
        await supervisor.jobs.dispatch()
        await supervisor.handle(slot, JobStarted(first))
        await supervisor.handle(slot, GpuFreeSoon(first))
        await supervisor.jobs.dispatch()
        if second_taken:
            await supervisor.handle(slot, JobStarted(second, 0.001))

    run_in_own_loop(run())
    return first, second


def test_gpu_free_soon_sends_the_next_job_before_the_previous_result(parts):
    supervisor, store, slot = parts
    first, second = first_finishing_second_on_gpu(supervisor, store, slot)

    assert sent_jobs(slot) == [first, second]
    assert store.get(first).status == PROCESSING  # no result yet: its images are being finished
    assert (slot.job.id, list(slot.finishing), slot.state) == (second, [first], W_BUSY)


def test_the_finishing_jobs_result_is_recorded_and_the_gpu_job_stays(parts):
    supervisor, store, slot = parts
    first, second = first_finishing_second_on_gpu(supervisor, store, slot)

    run_in_own_loop(supervisor.handle(slot, JobSucceeded(first, [IMAGE], 7, 0.5, "")))

    assert store.get(first).status == SUCCESS
    assert (slot.job.id, slot.finishing, slot.state) == (second, {}, W_BUSY)


def test_a_job_cancelled_while_another_finishes_ends_cancelled_and_the_other_succeeds(parts):
    supervisor, store, slot = parts
    first, second = first_finishing_second_on_gpu(supervisor, store, slot)

    async def run() -> None:
        await supervisor.cancel(second)
        await supervisor.handle(slot, JobCancelled(second, ""))
        await supervisor.handle(slot, JobSucceeded(first, [IMAGE], 7, 0.5, ""))

    run_in_own_loop(run())

    assert CancelJob(second) in slot.conn.sent
    assert (store.get(first).status, store.get(second).status) == (SUCCESS, CANCELLED)
    assert (slot.job, slot.finishing, slot.state) == (None, {}, W_READY)


def test_a_worker_death_with_a_job_finishing_settles_both(parts, monkeypatch):
    supervisor, store, slot = parts
    first, second = first_finishing_second_on_gpu(supervisor, store, slot)
    monkeypatch.setattr(supervisor, "_spawn", lambda _slot: None)
    slot.process.kill()

    run_in_own_loop(supervisor.handle(slot, None))

    for pid in (first, second):
        assert (store.get(pid).status, store.get(pid).error) == (ERROR, WORKER_LOST)
    assert (slot.job, slot.finishing) == (None, {})


def test_a_job_sent_ahead_that_the_dead_worker_never_took_is_requeued_with_its_attempt(parts, monkeypatch):
    supervisor, store, slot = parts
    first, second = first_finishing_second_on_gpu(supervisor, store, slot, second_taken=False)
    monkeypatch.setattr(supervisor, "_spawn", lambda _slot: None)
    slot.process.kill()

    run_in_own_loop(supervisor.handle(slot, None))

    assert (store.get(first).status, store.get(first).error) == (ERROR, WORKER_LOST)
    row = store.get(second)
    assert (row.status, row.attempts) == ("starting", 0)
    assert "Requeued: its worker stopped before it started." in row.logs


def test_the_heartbeat_renews_the_lease_of_a_finishing_job(parts):
    supervisor, store, slot = parts
    first, _second = first_finishing_second_on_gpu(supervisor, store, slot)
    store.connection().execute("UPDATE predictions SET lease_expires_at = 0 WHERE id = ?", (first,))

    assert run_in_own_loop(supervisor.jobs.renew_leases()) == []

    assert store.get(first).lease_expires_at > time.time() + 25


def test_a_finishing_job_past_the_timeout_ends_timed_out_and_the_gpu_job_as_lost(parts, monkeypatch):
    supervisor, store, slot = parts
    first, second = first_finishing_second_on_gpu(supervisor, store, slot)
    slot.finishing[first].started = time.monotonic() - 60
    monkeypatch.setattr(supervisor, "_spawn", lambda _slot: None)

    supervisor.check_timeouts(time.monotonic())
    assert slot.process.killed and slot.state == W_STOPPED
    run_in_own_loop(supervisor.handle(slot, None))

    assert store.get(first).error == "timed out after 5 s"
    assert store.get(second).error == WORKER_LOST


def test_no_job_is_sent_while_the_most_jobs_are_finishing(parts):
    supervisor, store, slot = parts
    ids = [str(uuid.uuid4()) for _ in range(MAX_FINISHING + 2)]
    queue(store, *ids)
    slot.state = W_READY

    async def run() -> None:
        for pid in ids[:MAX_FINISHING]:
            await supervisor.jobs.dispatch()
            await supervisor.handle(slot, JobStarted(pid))
            await supervisor.handle(slot, GpuFreeSoon(pid))
        await supervisor.jobs.dispatch()

    run_in_own_loop(run())

    assert sent_jobs(slot) == ids[:MAX_FINISHING]
    assert store.get(ids[MAX_FINISHING]).status == "starting"


def test_drain_waits_for_a_job_being_finished(parts):
    supervisor, store, slot = parts
    first, second = first_finishing_second_on_gpu(supervisor, store, slot)
    run_in_own_loop(supervisor.handle(slot, JobCancelled(second, "")))

    assert slot.job is None and supervisor.jobs.busy


def test_a_workers_idle_gap_is_observed_in_the_histogram(parts):
    supervisor, _store, slot = parts
    metrics = ServerMetrics()
    supervisor._observe_idle_gap = metrics.idle_gap.observe

    run_in_own_loop(supervisor.handle(slot, JobStarted("p1", 0.003)))

    text = metrics.render().decode()
    assert 'fluxserve_worker_idle_gap_seconds_bucket{le="0.005"} 1.0' in text
    assert "fluxserve_worker_idle_gap_seconds_count 1.0" in text
