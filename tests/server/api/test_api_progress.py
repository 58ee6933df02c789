"""A prediction's `progress` on the Eachlabs bodies, and its live preview
(`GET /v1/prediction/{id}/preview`), on a real worker running the tiny pipeline (``live_server``);
queue positions on a server whose workers never start (``queued_server``)."""

from __future__ import annotations

import io
import re

import pytest
from PIL import Image

# 50 steps at 1 MP run for seconds on CPU: long enough to be seen running.
SLOW = {"megapixels": "1", "num_inference_steps": 50}
PROGRESS_FIELDS = {"queue_position", "step", "total_steps", "percent", "elapsed_s", "eta_s", "preview_url"}


@pytest.fixture(scope="module")
def server(live_server):
    return live_server


@pytest.fixture(scope="module")
def key(server) -> str:
    return server.new_key()


def _stop(server, key: str, pid: str) -> dict:
    server.client.post(f"/v1/prediction/{pid}/cancel", headers=server.headers(key))
    return server.wait_for_end(key, pid)


def test_a_prediction_that_asked_for_previews_shows_a_webp_preview_while_it_runs(server, key):
    server.wait_idle()
    pid = server.create(key, SLOW, previews=True)
    running = server.wait_until(key, pid, lambda b: (b["progress"] or {}).get("preview_url") is not None)

    url = running["progress"]["preview_url"]
    assert re.search(rf"/v1/prediction/{pid}/preview\?step=\d+$", url)
    r = server.client.get(server.path(url), headers=server.headers(key))
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/webp"
    assert r.headers["cache-control"] == "no-store"
    image = Image.open(io.BytesIO(r.content))
    assert image.format == "WEBP" and max(image.size) == 256
    _stop(server, key, pid)


def test_the_preview_is_the_owners_only(server, key):
    server.wait_idle()
    pid = server.create(key, SLOW, previews=True)
    server.wait_until(key, pid, lambda b: (b["progress"] or {}).get("preview_url") is not None)

    other = server.client.get(f"/v1/prediction/{pid}/preview", headers=server.headers(server.new_key()))
    nobody = server.client.get(f"/v1/prediction/{pid}/preview")
    assert other.status_code == 404
    assert nobody.status_code == 401
    _stop(server, key, pid)


def test_a_running_prediction_reports_steps_elapsed_and_eta_and_no_preview_unasked(server, key):
    server.wait_idle()
    pid = server.create(key, SLOW)
    running = server.wait_until(key, pid, lambda b: ((b["progress"] or {}).get("step") or 0) >= 5)

    progress = running["progress"]
    assert set(progress) == PROGRESS_FIELDS
    assert progress["total_steps"] == 50
    assert progress["percent"] == 100 * progress["step"] // 50
    assert progress["elapsed_s"] > 0 and progress["eta_s"] > 0
    assert progress["queue_position"] is None
    assert progress["preview_url"] is None
    assert server.client.get(f"/v1/prediction/{pid}/preview", headers=server.headers(key)).status_code == 404
    _stop(server, key, pid)


def test_an_ended_prediction_has_no_progress_and_its_preview_is_dropped(server, key):
    pid = server.create(key, {"num_inference_steps": 8}, previews=True)
    body = server.wait_for_end(key, pid)

    assert body["status"] == "success"
    assert body["progress"] is None
    r = server.client.get(f"/v1/prediction/{body['id']}/preview", headers=server.headers(key))
    assert r.status_code == 404
    assert server.store.get_preview(body["id"]) is None
    listed = server.client.get("/v1/executions", headers=server.headers(key)).json()["executions"]
    assert all(item["progress"] is None for item in listed if item["status"] == "success")


def test_previews_must_be_a_boolean(server, key):
    r = server.post_create(key, previews="yes")

    assert r.status_code == 400
    assert r.json()["details"] == {"previews": "must be true or false"}


def test_a_queued_prediction_reports_its_place_behind_others_of_its_model(queued_server):
    key = queued_server.new_key()
    first = queued_server.create(key)
    second = queued_server.create(key)

    progress = queued_server.get(key, second)["progress"]
    assert progress["queue_position"] >= 1
    assert queued_server.get(key, second)["progress"]["queue_position"] == (
        queued_server.get(key, first)["progress"]["queue_position"] + 1
    )
    assert progress["step"] is None and progress["elapsed_s"] is None and progress["preview_url"] is None
    listed = queued_server.client.get("/v1/executions", headers=queued_server.headers(key)).json()
    assert [e["progress"]["queue_position"] for e in listed["executions"]] == [
        progress["queue_position"],
        progress["queue_position"] - 1,
    ]


def test_openapi_documents_progress_previews_and_the_preview_route(server):
    schema = server.client.get("/openapi.json").json()

    components = schema["components"]["schemas"]
    assert set(components["Progress"]["properties"]) == PROGRESS_FIELDS
    assert "progress" in components["PredictionResponse"]["properties"]
    assert "previews" in components["CreateRequest"]["properties"]
    route = schema["paths"]["/v1/prediction/{prediction_id}/preview"]["get"]
    assert "image/webp" in route["responses"]["200"]["content"]
