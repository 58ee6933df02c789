"""Several models on one server (CONTRACT.md section 5): the tiny model served as flux-dev (with its
LoRA face) and as flux-schnell, one worker each. Each model runs with its own inputs, defaults and
limits, on its own worker; a configured model that cannot run is refused with 503 naming it, an
unknown one with 400 naming the known ones."""

from __future__ import annotations

import time

from tests.server.helpers import KEY_A

LORA = "black-forest-labs-flux-dev-lora"
SMALL = {"prompt": "a lighthouse at dawn", "megapixels": "0.25"}
AUTH = {"Authorization": f"Bearer {KEY_A}"}


def _create(server, model: str, input: dict):
    return server.client.post(
        "/v1/prediction", json={"model": model, "input": input}, headers=server.headers(KEY_A)
    )


def test_models_lists_exactly_the_configured_faces(two_models_server):
    r = two_models_server.client.get("/v1/models", headers=two_models_server.headers(KEY_A))

    assert [m["slug"] for m in r.json()["models"]] == ["flux-dev", LORA, "flux-schnell"]


def test_flux_schnell_runs_its_default_four_steps_on_its_own_worker(two_models_server):
    r = _create(two_models_server, "flux-schnell", SMALL)
    assert r.status_code == 200, r.text

    body = two_models_server.wait_for_end(KEY_A, r.json()["predictionID"])

    assert body["status"] == "success", body
    assert "512x512, 4 steps" in body["logs"]
    assert "4/4 steps (100%)" in body["logs"]
    worker = two_models_server.store.get(body["id"]).worker_id
    assert ":w1." in worker  # slot 1 is flux-schnell's (slot 0 is flux-dev's)


def test_flux_dev_runs_its_configured_default_on_its_own_worker(two_models_server):
    body = two_models_server.wait_for_end(
        KEY_A, _create(two_models_server, "flux-dev", SMALL).json()["predictionID"]
    )

    assert body["status"] == "success", body
    assert "512x512, 3 steps" in body["logs"]
    assert ":w0." in two_models_server.store.get(body["id"]).worker_id


def test_the_lora_face_runs_on_the_flux_dev_worker_with_its_defaults(two_models_server):
    body = two_models_server.wait_for_end(
        KEY_A, _create(two_models_server, LORA, SMALL).json()["predictionID"]
    )

    assert body["status"] == "success", body
    assert "3 steps" in body["logs"]
    assert ":w0." in two_models_server.store.get(body["id"]).worker_id


def test_flux_schnell_refuses_five_steps_naming_the_field(two_models_server):
    r = _create(two_models_server, "flux-schnell", {**SMALL, "num_inference_steps": 5})

    assert r.status_code == 400
    assert list(r.json()["details"]) == ["num_inference_steps"]


def test_flux_dev_still_takes_five_steps(two_models_server):
    assert _create(two_models_server, "flux-dev", {**SMALL, "num_inference_steps": 5}).status_code == 200


def test_replicate_creates_on_the_flux_schnell_route(two_models_server):
    r = two_models_server.client.post(
        "/v1/models/black-forest-labs/flux-schnell/predictions",
        json={"input": SMALL},
        headers={**AUTH, "Prefer": "wait=60"},
    )

    assert r.status_code == 201, r.text
    body = r.json()
    assert body["model"] == "black-forest-labs/flux-schnell"
    assert body["status"] == "succeeded"
    assert "4 steps" in body["logs"]


def test_an_unknown_model_is_400_naming_every_served_slug(two_models_server):
    r = _create(two_models_server, "sdxl", SMALL)

    assert r.status_code == 400
    assert r.json()["details"]["model"] == (
        f"unknown model 'sdxl'; this server serves 'flux-dev', '{LORA}', 'flux-schnell'"
    )


def test_health_lists_each_model_and_each_workers_model(two_models_server):
    two_models_server.wait_idle()
    body = two_models_server.health()
    for _ in range(100):  # a worker is BUSY for a moment after an earlier test's job has ended
        if all(m["status"] == "READY" for m in body["models"].values()):
            break
        time.sleep(0.05)
        body = two_models_server.health()

    assert body["status"] == "READY"
    assert body["models"] == {
        "flux-dev": {"status": "READY", "workers": 1},
        LORA: {"status": "READY", "workers": 1},
        "flux-schnell": {"status": "READY", "workers": 1},
    }
    assert [(w["index"], w["model"]) for w in body["workers"]] == [(0, "flux-dev"), (1, "flux-schnell")]


# -- a configured model that cannot run ------------------------------------------------------------


def test_a_model_whose_workers_failed_is_503_naming_it(schnell_failed_server):
    r = _create(schnell_failed_server, "flux-schnell", SMALL)

    assert r.status_code == 503
    body = r.json()
    assert body["error"] == "Model flux-schnell failed to load; not accepting predictions for it"
    assert "nonexistent" in body["details"]
    assert schnell_failed_server.health()["models"]["flux-schnell"]["status"] == "SETUP_FAILED"


def test_replicate_answers_503_naming_the_model_that_failed(schnell_failed_server):
    r = schnell_failed_server.client.post(
        "/v1/models/black-forest-labs/flux-schnell/predictions", json={"input": SMALL}, headers=AUTH
    )

    assert r.status_code == 503
    assert r.json()["detail"].startswith("Model flux-schnell failed to load")


def test_the_other_model_still_takes_and_runs_predictions(schnell_failed_server):
    r = _create(schnell_failed_server, "flux-dev", SMALL)

    assert r.status_code == 200
    assert schnell_failed_server.wait_for_end(KEY_A, r.json()["predictionID"])["status"] == "success"
    assert schnell_failed_server.health()["status"] == "READY"
