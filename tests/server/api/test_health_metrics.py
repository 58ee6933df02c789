"""`/health-check` (always 200, with a state) and `/metrics` (Prometheus text).

STARTING while the worker loads the model, READY once it has, SETUP_FAILED with a reason when
the weights cannot be loaded (and then creates are refused with 503), UNHEALTHY with the
store's error while the database refuses writes. A server built with
``start_workers=False`` has no worker at all: it reports STARTING (nothing can run its queue),
with an empty worker list, and still accepts predictions into the queue.
"""

from __future__ import annotations

import re
import sqlite3

import pytest


@pytest.fixture(scope="module")
def failed_server(make_server, tmp_path_factory):
    missing = tmp_path_factory.mktemp("no-weights") / "nonexistent"
    with make_server(model={"weights": str(missing)}, wait_ready=False) as server:
        server.wait_health("SETUP_FAILED")
        yield server


# -- health -------------------------------------------------------------------------------------


def test_health_is_starting_while_the_model_loads(live_server):
    body = live_server.initial_health  # read right after the app started, before the worker loaded

    assert body["status"] == "STARTING"
    assert body["workers"] == [{"index": 0, "state": "starting"}]


def test_health_is_ready_after_the_model_loaded(live_server):
    live_server.wait_idle()

    r = live_server.client.get("/health-check")

    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "READY"
    assert body["model"] == "flux-dev"
    assert body["queue_depth"] == 0
    (worker,) = body["workers"]
    assert worker["state"] == "ready"
    assert worker["device"] == "cpu"
    assert worker["tiny_model"] is True


def test_health_warns_about_the_tiny_model(live_server):
    assert "random weights" in live_server.client.get("/health-check").json()["warning"]


def test_health_needs_no_key(live_server):
    assert live_server.client.get("/health-check").status_code == 200


def test_health_without_workers_is_starting_with_no_worker(queued_server):
    body = queued_server.client.get("/health-check").json()

    assert body["status"] == "STARTING"
    assert body["workers"] == []


def test_health_queue_depth_counts_queued_predictions(queued_server):
    before = queued_server.client.get("/health-check").json()["queue_depth"]
    key = queued_server.new_key()
    queued_server.create(key)
    queued_server.create(key)

    assert queued_server.client.get("/health-check").json()["queue_depth"] == before + 2


def test_setup_failed_when_the_weights_are_missing(failed_server):
    r = failed_server.client.get("/health-check")

    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "SETUP_FAILED"
    assert "nonexistent" in body["reason"]
    assert body["workers"][0]["state"] == "failed"


def test_setup_failed_refuses_creates_with_503(failed_server):
    key = failed_server.new_key()

    r = failed_server.post_create(key)

    assert r.status_code == 503
    body = r.json()
    assert body["status"] == 503
    assert "failed to load" in body["error"]
    assert "nonexistent" in body["details"]
    assert failed_server.client.get("/v1/executions", headers=failed_server.headers(key)).json()["total"] == 0


def test_setup_failed_refuses_run_with_503(failed_server):
    r = failed_server.client.post(
        "/v1/prediction/run",
        json={"model": "flux-dev", "input": {"prompt": "x"}},
        headers=failed_server.headers(failed_server.new_key()),
    )

    assert r.status_code == 503


def test_setup_failed_still_answers_reads(failed_server):
    r = failed_server.client.get("/v1/models", headers=failed_server.headers(failed_server.new_key()))

    assert r.status_code == 200
    assert "warning" not in r.json()["models"][0]  # no worker loaded anything


def test_health_is_unhealthy_with_the_reason_while_the_store_refuses_writes(make_server, monkeypatch):
    with make_server(start_workers=False) as server:
        key = server.new_key()
        create = server.store.create

        def disk_full(*args, **kwargs):
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(server.store, "create", disk_full)
        refused = server.post_create(key)
        during = server.client.get("/health-check")
        metrics = server.client.get("/metrics").text
        monkeypatch.setattr(server.store, "create", create)
        server.create(key)  # a write goes through: the store works again
        after = server.client.get("/health-check").json()

    assert refused.status_code == 500
    assert refused.json()["error"] == "Failed to create prediction"
    assert during.status_code == 200
    body = during.json()
    assert body["status"] == "UNHEALTHY"
    assert body["reason"] == "the prediction store is failing: database or disk is full"
    assert body["store"]["status"] == "failing"
    assert body["store"]["error"] == "database or disk is full"
    assert _metric(metrics, "fluxserve_store_failing") == 1
    assert (after["status"], after["store"]) == ("STARTING", {"status": "ok"})  # no workers in this app


# -- metrics ------------------------------------------------------------------------------------


def _metric(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name) + (re.escape("{" + labels + "}") if labels else "") + r" ([0-9.e+-]+)\n"
    match = re.search(pattern, text)
    assert match, f"{name}{{{labels}}} not in /metrics"
    return float(match.group(1))


@pytest.fixture(scope="module")
def metrics_text(live_server) -> str:
    key = live_server.new_key()
    live_server.run(key)
    r = live_server.client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return r.text


def test_metrics_have_queue_depth(metrics_text):
    assert _metric(metrics_text, "fluxserve_queue_depth") >= 0


@pytest.mark.parametrize("status", ["starting", "processing", "success", "error", "cancelled"])
def test_metrics_count_predictions_by_status(metrics_text, status):
    assert _metric(metrics_text, "fluxserve_predictions", f'status="{status}"') >= 0


def test_metrics_count_the_successful_prediction(metrics_text):
    assert _metric(metrics_text, "fluxserve_predictions", 'status="success"') >= 1


def test_metrics_have_a_predict_time_histogram(metrics_text):
    assert _metric(metrics_text, "fluxserve_predict_time_seconds_count") >= 1
    assert _metric(metrics_text, "fluxserve_predict_time_seconds_sum") > 0
    assert _metric(metrics_text, "fluxserve_predict_time_seconds_bucket", 'le="+Inf"') >= 1


@pytest.mark.parametrize("state", ["starting", "ready", "busy", "failed", "stopped"])
def test_metrics_count_workers_by_state(metrics_text, state):
    assert _metric(metrics_text, "fluxserve_workers", f'state="{state}"') >= 0


def test_metrics_show_the_worker(metrics_text):
    workers = sum(
        _metric(metrics_text, "fluxserve_workers", f'state="{s}"')
        for s in ("starting", "ready", "busy", "failed", "stopped")
    )
    assert workers == 1
    assert (
        _metric(metrics_text, "fluxserve_workers", 'state="ready"')
        + _metric(metrics_text, "fluxserve_workers", 'state="busy"')
        == 1
    )


def test_metrics_show_a_failed_worker(failed_server):
    text = failed_server.client.get("/metrics").text

    assert _metric(text, "fluxserve_workers", 'state="failed"') == 1
