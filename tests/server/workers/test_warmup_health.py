"""A worker that has loaded its model and is warming up (compiling, for a compiled mode) keeps the
server STARTING, saying so, until it reports ready."""

from __future__ import annotations

from server.workers.messages import WorkerReady, WorkerWarming
from server.workers.supervisor import READY, STARTING, W_STARTING
from tests.server.helpers import run_in_own_loop


def test_health_says_starting_with_the_warm_up_reason_until_the_worker_is_ready(parts):
    supervisor, _store, slot = parts
    slot.state = W_STARTING
    run_in_own_loop(supervisor.handle(slot, WorkerWarming("compiling the go_fast transformer")))

    status, details = supervisor.health()
    assert status == STARTING
    assert details["reason"] == "worker 0: compiling the go_fast transformer"
    assert details["workers"][0]["warming"] == "compiling the go_fast transformer"

    run_in_own_loop(
        supervisor.handle(slot, WorkerReady("cpu", "float32", "/w", True, 1.0, warmup_seconds=2.5))
    )
    status, details = supervisor.health()
    assert status == READY
    assert "reason" not in details and "warming" not in details["workers"][0]


def test_a_warm_up_message_after_the_load_timeout_does_not_mark_the_slot_warming(parts):
    supervisor, _store, slot = parts
    slot.state = "failed"
    run_in_own_loop(supervisor.handle(slot, WorkerWarming("warming up")))
    assert slot.warming is None
