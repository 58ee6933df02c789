"""The prediction life cycle through HTTP: create, poll, outputs, run-and-wait, long-poll, cancel.

A real worker process runs the tiny random FLUX pipeline on CPU (``live_server``); cancel-before-
start uses a server whose workers never start (``queued_server``).
"""

from __future__ import annotations

import io
import re
import time
from datetime import datetime

import pytest
from PIL import Image

from tests.server.helpers import FAST

ISO_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture(scope="module")
def server(live_server):
    return live_server


@pytest.fixture(scope="module")
def key(server) -> str:
    return server.new_key()


@pytest.fixture(scope="module")
def finished(server, key) -> dict:
    """One successful prediction at 0.25 MP, 1:1, webp (the defaults but the size)."""
    return server.run(key, {"seed": 4242})


def _image(server, url: str, key: str | None = None):
    r = server.client.get(server.path(url), headers=server.headers(key) if key else {})
    assert r.status_code == 200, r.text
    return r, Image.open(io.BytesIO(r.content))


# -- create and poll ----------------------------------------------------------------------------


def test_create_answers_at_once_with_the_prediction_id(server, key):
    r = server.post_create(key)

    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "success"
    assert body["message"] == "Prediction created successfully"
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", body["predictionID"]
    )
    row = server.store.get(body["predictionID"])
    assert row.owner == server.owner_of(key)
    assert row.status in ("starting", "processing", "success")


def test_poll_reaches_success_with_an_image_url(server, key, finished):
    assert finished["status"] == "success"
    assert finished["error"] is None
    assert isinstance(finished["output"], str)
    assert finished["output"] == f"{server.settings.base_url}/v1/outputs/{finished['id']}/out-0.webp"


def test_get_echoes_the_input_as_sent(server, key, finished):
    assert finished["input"] == {"prompt": "a lighthouse at dawn", **FAST, "seed": 4242}
    assert finished["model"] == "flux-dev"


def test_output_url_serves_a_webp_of_the_requested_size(server, finished):
    response, image = _image(server, finished["output"])

    assert response.headers["content-type"] == "image/webp"
    assert image.format == "WEBP"
    assert image.size == (512, 512)


@pytest.mark.parametrize(
    ("output_format", "content_type", "pil_format"),
    [("jpg", "image/jpeg", "JPEG"), ("png", "image/png", "PNG"), ("webp", "image/webp", "WEBP")],
)
def test_output_format_sets_file_type_and_content_type(server, key, output_format, content_type, pil_format):
    body = server.run(key, {"output_format": output_format, "aspect_ratio": "16:9"})

    assert body["output"].endswith(f"/out-0.{output_format}")
    response, image = _image(server, body["output"])
    assert response.headers["content-type"] == content_type
    assert image.format == pil_format
    assert image.size == (672, 384)  # 16:9 at 0.25 MP: 1344x768 halved


def test_three_outputs_give_three_urls_in_order(server, key):
    body = server.run(key, {"num_outputs": 3, "num_inference_steps": 1, "output_format": "png"})

    assert isinstance(body["output"], list)
    assert [url.rsplit("/", 1)[1] for url in body["output"]] == ["out-0.png", "out-1.png", "out-2.png"]
    images = [_image(server, url)[1] for url in body["output"]]
    assert [img.size for img in images] == [(512, 512)] * 3
    assert len({img.tobytes() for img in images}) == 3  # seed, seed+1, seed+2: three different images


def test_logs_carry_the_seed_and_progress(server, finished):
    logs = finished["logs"]

    assert "Using seed: 4242\n" in logs
    assert "2/2 steps (100%)" in logs
    assert "Generated 1 image(s)" in logs


def test_random_seed_is_printed_in_logs(server, key):
    body = server.run(key, {"seed": None})

    seed = int(re.search(r"Using seed: (\d+)", body["logs"]).group(1))
    assert seed > 0
    assert server.store.get(body["id"]).extra["seed"] == seed


def test_metrics_hold_predict_and_queue_time(finished):
    metrics = finished["metrics"]

    assert 0 < metrics["predict_time"] < 30
    assert 0 <= metrics["queue_time"] < 30


def test_timestamps_are_iso_utc_and_ordered(finished):
    stamps = [finished[k] for k in ("created_at", "started_at", "completed_at")]

    for stamp in stamps:
        assert ISO_Z.fullmatch(stamp), stamp
    created, started, completed = (datetime.fromisoformat(s.replace("Z", "+00:00")) for s in stamps)
    assert created <= started <= completed


def test_urls_point_at_get_and_cancel(server, finished):
    base = server.settings.base_url
    assert finished["urls"] == {
        "get": f"{base}/v1/prediction/{finished['id']}",
        "cancel": f"{base}/v1/prediction/{finished['id']}/cancel",
    }


def test_store_row_holds_the_output_files(server, finished):
    row = server.store.get(finished["id"])

    assert row.status == "success"
    assert row.output == ["out-0.webp"]
    assert (server.settings.outputs_path / finished["id"] / "out-0.webp").is_file()
    assert row.attempts == 1


# -- run and wait, long-poll --------------------------------------------------------------------


def test_run_returns_the_final_prediction(server, key):
    payload = {"model": "flux-dev", "input": {"prompt": "a red boat", **FAST}}
    r = server.client.post("/v1/prediction/run", json=payload, headers=server.headers(key))

    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "success"
    assert body["output"].endswith("/out-0.webp")
    assert server.store.get(body["id"]).status == "success"


def test_get_with_wait_query_returns_once_it_ends(server, key):
    pid = server.create(key, {"num_inference_steps": 4})
    started = time.monotonic()

    r = server.client.get(f"/v1/prediction/{pid}?wait=30", headers=server.headers(key))

    assert r.status_code == 200
    assert r.json()["status"] == "success"
    assert time.monotonic() - started < 30  # answered at the end, not at the deadline


def test_get_with_prefer_wait_header_returns_once_it_ends(server, key):
    pid = server.create(key, {"num_inference_steps": 4})
    started = time.monotonic()

    r = server.client.get(f"/v1/prediction/{pid}", headers=server.headers(key, Prefer="wait=30"))

    assert r.status_code == 200
    assert r.json()["status"] == "success"
    assert time.monotonic() - started < 30  # answered at the end, not at the deadline


def test_get_without_wait_answers_at_once(server, key):
    pid = server.create(key, {"megapixels": "1", "num_inference_steps": 10})
    started = time.monotonic()

    body = server.get(key, pid)

    assert time.monotonic() - started < 3
    assert body["status"] in ("starting", "processing")
    server.client.post(f"/v1/prediction/{pid}/cancel", headers=server.headers(key))
    server.wait_for_end(key, pid)


# -- cancel -------------------------------------------------------------------------------------


def test_cancel_queued_prediction_answers_cancelled(queued_server):
    key = queued_server.new_key()
    pid = queued_server.create(key)

    r = queued_server.client.post(f"/v1/prediction/{pid}/cancel", headers=queued_server.headers(key))

    assert r.status_code == 200
    assert r.json() == {
        "status": "cancelled",
        "message": "Prediction canceled successfully",
        "predictionID": pid,
    }
    assert queued_server.get(key, pid)["status"] == "cancelled"


def test_cancelled_queued_prediction_never_runs(queued_server):
    key = queued_server.new_key()
    pid = queued_server.create(key)
    queued_server.client.post(f"/v1/prediction/{pid}/cancel", headers=queued_server.headers(key))

    assert queued_server.store.claim_next("test-worker") is None  # the queue no longer offers it
    row = queued_server.store.get(pid)
    assert row.status == "cancelled"
    assert row.started_at is None
    assert row.attempts == 0


def test_cancel_running_prediction_stops_it_without_outputs(server, key):
    server.wait_idle()
    # 50 steps at 1 MP run for seconds on CPU.
    pid = server.create(key, {"megapixels": "1", "num_inference_steps": 50})
    running = server.wait_until(key, pid, lambda b: re.search(r"\d+/50 steps", b["logs"]) is not None)
    assert running["status"] == "processing"

    r = server.client.post(f"/v1/prediction/{pid}/cancel", headers=server.headers(key))
    assert r.status_code == 200
    assert r.json()["status"] == "cancelled"

    body = server.wait_for_end(key, pid)
    assert body["status"] == "cancelled"
    assert body["output"] is None
    assert "50/50 steps" not in body["logs"]
    assert not (server.settings.outputs_path / pid).exists()
    assert server.store.get(pid).output == []


def test_worker_takes_the_next_job_after_a_cancel(server, key):
    pid = server.create(key, {"megapixels": "1", "num_inference_steps": 50})
    server.wait_until(key, pid, lambda b: b["status"] == "processing")
    server.client.post(f"/v1/prediction/{pid}/cancel", headers=server.headers(key))

    assert server.run(key)["status"] == "success"


def test_cancel_finished_prediction_is_409_and_leaves_it(server, key, finished):
    r = server.client.post(f"/v1/prediction/{finished['id']}/cancel", headers=server.headers(key))

    assert r.status_code == 409
    body = r.json()
    assert body["status"] == 409
    assert "already finished" in body["error"]
    after = server.get(key, finished["id"])
    assert after["status"] == "success"
    assert after["output"] == finished["output"]


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("wait=5", 5.0),
        ("wait=.5", 0.5),
        ("wait=2.5", 2.5),
        ("wait=5;strict", 5.0),  # RFC 7240 preference parameters are ignored
        ("respond-async, wait=3", 3.0),
        ("wait=600", 60.0),
        ("wait", 0.0),  # a bare wait on a GET holds nothing: ?wait=n or wait=n says how long
        ("wait=soon", 0.0),
        ("", 0.0),
    ],
)
def test_get_prefer_wait_header_parsing(header, seconds):
    from server.api.eachlabs.routes import requested_wait

    class FakeRequest:
        headers = {"prefer": header}

    assert requested_wait(FakeRequest(), None) == seconds
