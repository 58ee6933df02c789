"""An API replica's /health-check from the worker hosts' heartbeats (``hosts_health``)."""

from __future__ import annotations

import pytest

from pipelines.spec import ModelSpec
from server.predictions.models import ModelRegistry
from server.store.health import StoreHealth
from server.store.hosts import HostReport
from server.workers.hosts import LIVE_WITHIN_S, HostsReadiness, hosts_health
from tests.server.helpers import run_in_own_loop

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


# -- several models: each is refused on its own when no live host serves it ---------------------


class _Reports:
    """A store's host reports, as HostsReadiness reads them."""

    shared = True

    def __init__(self, hosts):
        self._hosts = hosts

    def hosts(self, within_s):
        return self._hosts

    def is_outage(self, exc):
        return False


def _readiness(*hosts_):
    models = ModelRegistry.from_specs([ModelSpec(), ModelSpec(family="flux-schnell")])
    readiness = HostsReadiness(_Reports(list(hosts_)), models, lambda: True)
    run_in_own_loop(readiness.refresh())
    return readiness, models


def test_a_model_no_live_host_serves_is_refused_naming_it_while_the_others_are_taken():
    dev_host = host("a", "ready", models=("flux-dev", "black-forest-labs-flux-dev-lora"))
    readiness, models = _readiness(dev_host)

    refusal = readiness.refusal(models.by_slug("flux-schnell"))

    assert refusal is not None
    assert refusal.message == "Model flux-schnell has no live worker; not accepting predictions for it"
    assert refusal.reason == "no live worker host serves it (live hosts: a)"
    assert readiness.refusal(models.by_slug("flux-dev")) is None
    assert readiness.refusal(models.by_slug("black-forest-labs-flux-dev-lora")) is None
    assert readiness.refusal() is None


def test_a_model_whose_workers_all_failed_is_refused_with_their_errors():
    dev_host = host("a", "ready", models=("flux-dev",))
    schnell_host = host("b", "failed", models=("flux-schnell",), error="no GPU 7")
    readiness, models = _readiness(dev_host, schnell_host)

    refusal = readiness.refusal(models.by_slug("flux-schnell"))

    assert refusal.message == "Model flux-schnell failed to load; not accepting predictions for it"
    assert refusal.reason == "no GPU 7"
    assert readiness.health()[0] == "READY"


def test_health_lists_each_models_state_and_workers():
    dev_host = host("a", "ready", "busy", models=("flux-dev", "black-forest-labs-flux-dev-lora"))
    readiness, _models = _readiness(dev_host)

    assert readiness.health()[1]["models"] == {
        "flux-dev": {"status": "READY", "workers": 2},
        "black-forest-labs-flux-dev-lora": {"status": "READY", "workers": 2},
        "flux-schnell": {"status": "UNAVAILABLE", "workers": 0},
    }


def test_with_no_host_reporting_at_all_every_model_still_queues():
    readiness, models = _readiness()
    assert readiness.refusal(models.by_slug("flux-schnell")) is None
