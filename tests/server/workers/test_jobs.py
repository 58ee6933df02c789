"""The job runner's bookkeeping, through its public methods: what dispatch sends, and the leases
of the jobs a host runs (heartbeat, a job taken from the host, the reaper). A real SQLite store,
a stand-in worker process and pipe (conftest.py)."""

from __future__ import annotations

import time
import uuid

from server.predictions.model import ERROR, PROCESSING, WORKER_LOST, Prediction
from server.workers.messages import CancelJob, JobSucceeded, OutputImage, RunJob
from server.workers.supervisor import W_BUSY, W_READY
from tests.server.helpers import run_in_own_loop
from tests.server.workers.test_supervisor_races import queue

IMAGE = OutputImage(b"RIFF\x1a\x00\x00\x00WEBPVP8 fake image", "webp", "image/webp", 64, 64, 7)


def running(store, slot, pid: str, lease_s: float = 30) -> Prediction:
    """Queue the prediction and give it to the slot, as dispatch does."""
    queue(store, pid)
    slot.job, slot.state = store.claim_next(slot.worker_id, lease_s), W_BUSY
    return slot.job


def taken_by_another_host(store, pid: str) -> Prediction:
    """The job's lease expires, another host's reaper requeues it and another worker claims it."""
    store.connection().execute("UPDATE predictions SET lease_expires_at = 0 WHERE id = ?", (pid,))
    assert store.recover_expired(2) == [(pid, "requeued")]
    return store.claim_next("other-host:1:w0.1", 60)


def test_dispatch_sends_the_params_resolved_at_create_as_they_are(parts):
    supervisor, store, slot = parts
    params = {"prompt": "a lighthouse", "num_inference_steps": 3, "seed": 5, "megapixels": "0.25"}
    store.create(Prediction(id="p1", owner="k", model="flux-dev", input={"prompt": "raw"}, params=params))
    slot.state = W_READY

    run_in_own_loop(supervisor.jobs.dispatch())

    [job] = slot.conn.sent
    assert isinstance(job, RunJob) and job.inputs == params


def test_dispatch_resolves_a_row_made_before_params_were_stored(parts):
    supervisor, store, slot = parts
    queue(store, "p1")
    slot.state = W_READY

    run_in_own_loop(supervisor.jobs.dispatch())

    [job] = slot.conn.sent
    assert job.inputs["prompt"] == "p1" and job.inputs["num_inference_steps"] == 28  # defaults applied


def test_a_claim_takes_a_lease_of_workers_lease_s(parts):
    supervisor, store, slot = parts
    queue(store, "p1")
    slot.state = W_READY

    run_in_own_loop(supervisor.jobs.dispatch())

    row = store.get("p1")
    assert row.worker_id == slot.worker_id
    assert time.time() + 25 < row.lease_expires_at <= time.time() + 30


def test_the_heartbeat_renews_the_lease_of_a_running_job(parts):
    supervisor, store, slot = parts
    running(store, slot, "p1", lease_s=1)

    assert run_in_own_loop(supervisor.jobs.renew_leases()) == []

    assert store.get("p1").lease_expires_at > time.time() + 25
    assert slot.conn.sent == []


def test_a_job_taken_from_this_host_is_stopped_on_its_worker(parts):
    supervisor, store, slot = parts
    running(store, slot, "p1")
    taken_by_another_host(store, "p1")

    assert run_in_own_loop(supervisor.jobs.renew_leases()) == ["p1"]

    assert slot.conn.sent == [CancelJob("p1")]


def test_a_result_from_a_worker_whose_job_was_taken_is_not_recorded(parts, tmp_path):
    supervisor, store, slot = parts
    pid = str(uuid.uuid4())
    running(store, slot, pid)
    taken = taken_by_another_host(store, pid)

    run_in_own_loop(supervisor.handle(slot, JobSucceeded(pid, [IMAGE], 7, 0.5, "")))

    assert store.get(pid) == taken  # still the other worker's, untouched
    assert not (tmp_path / "outputs" / pid).exists()
    assert (slot.state, slot.job, supervisor.pending_ends) == (W_READY, None, 0)


def test_the_reaper_settles_an_expired_job_of_another_host_and_not_its_own(parts):
    supervisor, store, slot = parts
    mine = running(store, slot, "mine", lease_s=0)  # expired, but this host still runs it
    queue(store, "theirs")
    store.claim_next("dead-host:1:w0.1", 0)

    run_in_own_loop(supervisor.jobs.recover_expired())

    assert (store.get("theirs").status, store.get("theirs").error) == (ERROR, WORKER_LOST)
    assert store.get("mine").status == PROCESSING and slot.job == mine
