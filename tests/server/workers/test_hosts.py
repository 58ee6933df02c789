"""An API replica's /health-check from the worker hosts' heartbeats (``hosts_health``)."""

from __future__ import annotations

import pytest

from server.store.health import StoreHealth
from server.store.hosts import HostReport
from server.workers.hosts import LIVE_WITHIN_S, hosts_health

MODEL = "flux-dev"


def host(host_id: str, *states: str, models: tuple[str, ...] = (MODEL,), accepting: bool = True, error=None):
    slots = [{"index": i, "state": s, **({"error": error} if error else {})} for i, s in enumerate(states)]
    return HostReport(host_id, slots=slots, models=list(models), accepting=accepting, seen_s_ago=0.4)


def health(hosts, *, accepting: bool = True, store: StoreHealth | None = None):
    return hosts_health(hosts, MODEL, accepting, store or StoreHealth())


def test_ready_when_a_live_host_has_a_ready_worker_for_the_model():
    status, details = health([host("a", "busy"), host("b", "busy", "ready")])
    assert status == "READY"
    assert [h["host_id"] for h in details["hosts"]] == ["a", "b"]
    assert details["hosts"][1] == {
        "host_id": "b",
        "seen_s_ago": 0.4,
        "accepting": True,
        "models": [MODEL],
        "workers": [{"index": 0, "state": "busy"}, {"index": 1, "state": "ready"}],
    }


def test_busy_when_every_worker_is_busy():
    assert health([host("a", "busy"), host("b", "busy")])[0] == "BUSY"


def test_starting_with_a_reason_when_no_host_reported_lately():
    status, details = health([])
    assert status == "STARTING"
    assert details["reason"] == f"no worker host has reported in the last {LIVE_WITHIN_S:g} s"
    assert details["hosts"] == []


@pytest.mark.parametrize(
    "hosts",
    [[host("a", "ready", models=("other-model",))], [host("a", "ready", accepting=False)]],
    ids=["another model", "draining"],
)
def test_a_host_that_takes_no_jobs_for_the_model_is_not_ready(hosts):
    status, details = health(hosts)
    assert status == "STARTING"
    assert details["reason"] == f"no live worker host takes jobs for the model {MODEL}"


def test_setup_failed_with_the_reasons_when_every_worker_failed_to_load():
    status, details = health(
        [host("a", "failed", error="out of memory"), host("b", "failed", error="no GPU")]
    )
    assert status == "SETUP_FAILED"
    assert details["reason"] == "no GPU; out of memory"


def test_unhealthy_while_the_store_cannot_be_read():
    store = StoreHealth()
    store.failed(OSError("connection refused"))
    status, details = health([host("a", "ready")], store=store)
    assert status == "UNHEALTHY"
    assert details["reason"] == "the prediction store is failing: connection refused"


def test_shutting_down_when_this_replica_drains():
    assert health([host("a", "ready")], accepting=False)[0] == "SHUTTING_DOWN"
