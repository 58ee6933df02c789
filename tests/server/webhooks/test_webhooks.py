"""Webhooks: the Eachlabs end-of-prediction POST (durable, retried, logged, address policy) and
Replicate's signed events, against a receiver on loopback.

No worker process runs here: the app starts without workers and each test plays the worker's part
through the store (claim, finish) and what the supervisor tells the change feed (its notify hook,
the feed's ``ended``), exactly as the supervisor does. The real supervisor path is covered end to end in
test_replicate_client.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import logging
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.config import Settings
from server.predictions.model import CANCELLED, ERROR, SUCCESS
from server.store.deliveries import DELIVERED, FAILED, PENDING

KEY = "test-key-webhooks"
AUTH = {"X-API-Key": KEY}
OTHER_AUTH = {"X-API-Key": "test-key-webhooks-someone-else"}
SECRET = "s3cret-value-never-logged"


class Receiver:
    """An HTTP server on 127.0.0.1 that records every POST and answers with scripted codes."""

    def __init__(self, codes: list[int] | None = None, default: int = 200) -> None:
        self.codes = list(codes or [])
        self.default = default
        self.requests: list[dict] = []
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._cond:
                    code = receiver.codes.pop(0) if receiver.codes else receiver.default
                    receiver.requests.append(
                        {
                            "path": self.path,
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "raw": body,
                            "at": time.monotonic(),
                        }
                    )
                    receiver._cond.notify_all()
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/flux?token=abc"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.requests) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"expected {count} webhook requests, got {len(self.requests)}")
                self._cond.wait(left)
            return list(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def make_settings(
    data_dir: Path, *, allow_loopback: bool = True, interval_s: float = 0.2, attempts: int = 3
) -> Settings:
    return Settings(
        data_dir=str(data_dir),
        api_keys=[KEY, OTHER_AUTH["X-API-Key"]],
        input_images={"allowed_hosts": ["127.0.0.1"] if allow_loopback else []},
        webhooks={"attempts": attempts, "interval_s": interval_s, "timeout_s": 5},
    )


@pytest.fixture
def app_client(tmp_path):
    """A started app (no workers) and its TestClient; extra settings through the returned factory."""
    clients: list[TestClient] = []

    def start(**kwargs) -> TestClient:
        client = TestClient(create_app(make_settings(tmp_path / "data", **kwargs), start_workers=False))
        client.__enter__()
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)


def state_of(client: TestClient):
    return client.app.state.fluxserve


def create_eachlabs(client: TestClient, webhook_url: str | None, secret: str | None = SECRET) -> str:
    body = {"model": "flux-dev", "input": {"prompt": "a lighthouse"}, "webhook_url": webhook_url}
    if secret is not None:
        body["webhook_secret"] = secret
    response = client.post("/v1/prediction", json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    return response.json()["predictionID"]


def create_replicate(
    client: TestClient, webhook_url: str, events: list[str] | None = None, auth: dict = AUTH
) -> str:
    body: dict = {"input": {"prompt": "a lighthouse"}, "webhook": webhook_url}
    if events is not None:
        body["webhook_events_filter"] = events
    response = client.post("/v1/models/black-forest-labs/flux-dev/predictions", json=body, headers=auth)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def start_running(client: TestClient, prediction_id: str) -> None:
    """The worker's part: claim the queued prediction (status processing) and report it."""
    state = state_of(client)
    claimed = state.store.claim_next("test-worker")
    assert claimed is not None and claimed.id == prediction_id
    state.supervisor._notify(prediction_id)


def finish(client: TestClient, prediction_id: str, status: str, **kwargs) -> None:
    """The supervisor's part at the end: a terminal row, then the feed's ``ended``."""
    state = state_of(client)
    if state.store.get(prediction_id).status == "starting":
        state.store.claim_next("test-worker")
    assert state.store.finish(prediction_id, status, **kwargs)
    state.feed.ended(prediction_id)


def wait_for_logs(client: TestClient, prediction_id: str, text: str, timeout: float = 10.0) -> str:
    store = state_of(client).store
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = store.get(prediction_id).logs
        if text in logs:
            return logs
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in logs: {store.get(prediction_id).logs!r}")


def deliveries_of(client: TestClient, prediction_id: str):
    return state_of(client).webhooks.deliveries.for_prediction(prediction_id)


# -- Eachlabs webhooks ----------------------------------------------------------------------


def test_success_posts_the_eachlabs_payload_with_the_secret_header(app_client, receiver):
    client = app_client()
    pid = create_eachlabs(client, receiver.url)
    finish(client, pid, SUCCESS, output=["out-0.webp", "out-1.webp"], predict_time=1.5)

    [request] = receiver.wait_for(1)
    assert json.loads(request["raw"]) == {
        "exec_id": pid,
        "flow_id": None,
        "status": "succeeded",
        "output": {"url": f"http://127.0.0.1:8000/v1/outputs/{pid}/out-0.webp"},
        "error": "",
    }
    assert request["headers"]["x-webhook-secret"] == SECRET
    assert request["headers"]["content-type"] == "application/json"
    assert request["path"] == "/hooks/flux?token=abc"


def test_error_posts_failed_status_with_the_message(app_client, receiver):
    client = app_client()
    pid = create_eachlabs(client, receiver.url, secret=None)
    finish(client, pid, ERROR, error="image URL refused: 10.0.0.1 is a private address")

    [request] = receiver.wait_for(1)
    assert json.loads(request["raw"]) == {
        "exec_id": pid,
        "flow_id": None,
        "status": "failed",
        "output": {"url": None},
        "error": "image URL refused: 10.0.0.1 is a private address",
    }
    assert "x-webhook-secret" not in request["headers"]


def test_first_attempt_outcome_is_appended_to_the_logs(app_client, receiver):
    client = app_client()
    pid = create_eachlabs(client, receiver.url)
    finish(client, pid, SUCCESS, output=["out-0.webp"])

    logs = wait_for_logs(client, pid, "Webhook delivery 1/3")
    assert "Webhook delivery 1/3 to http://127.0.0.1:" in logs
    assert "/...: delivered (HTTP 200)" in logs


def test_logs_never_show_the_secret_nor_the_url_path_and_query(app_client):
    receiver = Receiver(default=500)
    try:
        client = app_client(attempts=2)
        pid = create_eachlabs(client, receiver.url)
        finish(client, pid, SUCCESS, output=["out-0.webp"])
        logs = wait_for_logs(client, pid, "giving up")
    finally:
        receiver.close()
    assert SECRET not in logs
    assert "token=abc" not in logs and "/hooks/flux" not in logs


def test_retries_after_500s_until_a_2xx_with_each_attempt_in_the_logs(app_client):
    receiver = Receiver(codes=[500, 502, 204])
    try:
        client = app_client()
        pid = create_eachlabs(client, receiver.url)
        finish(client, pid, SUCCESS, output=["out-0.webp"])
        requests = receiver.wait_for(3)
        logs = wait_for_logs(client, pid, "3/3")
    finally:
        receiver.close()
    assert len({r["raw"] for r in requests}) == 1  # the same body every time
    lines = [line for line in logs.splitlines() if line.startswith("Webhook delivery")]
    assert len(lines) == 3
    assert lines[0].startswith("Webhook delivery 1/3") and lines[0].endswith(
        "HTTP 500; next attempt in 0.2 s"
    )
    assert lines[1].startswith("Webhook delivery 2/3") and lines[1].endswith(
        "HTTP 502; next attempt in 0.2 s"
    )
    assert lines[2].startswith("Webhook delivery 3/3") and lines[2].endswith("delivered (HTTP 204)")
    [delivery] = deliveries_of(client, pid)
    assert (delivery.state, delivery.attempts) == (DELIVERED, 3)


def test_gives_up_after_the_configured_number_of_attempts(app_client):
    receiver = Receiver(default=500)
    try:
        client = app_client(attempts=2)
        pid = create_eachlabs(client, receiver.url)
        finish(client, pid, SUCCESS, output=["out-0.webp"])
        logs = wait_for_logs(client, pid, "giving up")
        time.sleep(0.6)  # three intervals: a third attempt would have come
    finally:
        receiver.close()
    assert len(receiver.requests) == 2
    assert "Webhook delivery 2/2" in logs and logs.rstrip().endswith("HTTP 500; giving up")
    [delivery] = deliveries_of(client, pid)
    assert (delivery.state, delivery.attempts, delivery.last_error) == (FAILED, 2, "HTTP 500")


def test_no_webhook_when_a_queued_prediction_is_cancelled(app_client, receiver):
    client = app_client()
    pid = create_eachlabs(client, receiver.url)
    response = client.post(f"/v1/prediction/{pid}/cancel", headers=AUTH)
    assert response.status_code == 200
    time.sleep(0.5)
    assert receiver.requests == []
    assert deliveries_of(client, pid) == []


def test_no_webhook_when_a_running_prediction_ends_cancelled(app_client, receiver):
    client = app_client()
    pid = create_eachlabs(client, receiver.url)
    finish(client, pid, CANCELLED)
    time.sleep(0.5)
    assert receiver.requests == []
    assert deliveries_of(client, pid) == []


def test_loopback_target_is_refused_by_default_and_the_reason_logged(app_client, receiver):
    client = app_client(allow_loopback=False)
    pid = create_eachlabs(client, receiver.url)
    finish(client, pid, SUCCESS, output=["out-0.webp"])

    logs = wait_for_logs(client, pid, "not retried")
    time.sleep(0.5)  # past the retry interval
    assert receiver.requests == []
    assert "Webhook delivery 1/3" in logs
    assert "refused: 127.0.0.1 is a loopback address" in logs
    [delivery] = deliveries_of(client, pid)
    assert (delivery.state, delivery.attempts) == (FAILED, 1)


def test_the_end_of_a_prediction_is_delivered_once_when_reported_twice(app_client, receiver):
    client = app_client()
    pid = create_eachlabs(client, receiver.url)
    finish(client, pid, SUCCESS, output=["out-0.webp"])
    state_of(client).feed.ended(pid)

    receiver.wait_for(1)
    time.sleep(0.5)
    assert len(receiver.requests) == 1


def test_a_pending_delivery_is_sent_by_the_next_server_after_a_restart(app_client):
    receiver = Receiver(codes=[503])
    try:
        first = app_client(interval_s=1.0)
        pid = create_eachlabs(first, receiver.url)
        finish(first, pid, SUCCESS, output=["out-0.webp"])
        wait_for_logs(first, pid, "HTTP 503; next attempt in 1 s")
        first.__exit__(None, None, None)  # stopped before the second attempt
        assert len(receiver.requests) == 1

        second = app_client()  # same data folder, same database
        [delivery] = deliveries_of(second, pid)
        assert delivery.state == PENDING
        requests = receiver.wait_for(2)
        logs = wait_for_logs(second, pid, "Webhook delivery 2/3")
    finally:
        receiver.close()
    assert requests[0]["raw"] == requests[1]["raw"]
    assert json.loads(requests[1]["raw"])["exec_id"] == pid
    assert "delivered (HTTP 200)" in logs.splitlines()[-1]


def test_an_end_recorded_without_its_delivery_row_is_sent_by_the_next_server(app_client, receiver):
    first = app_client()
    eachlabs = create_eachlabs(first, receiver.url)
    replicate = create_replicate(first, receiver.url)
    store = state_of(first).store
    # The process died between recording the ends and writing their delivery rows.
    for _ in range(2):
        store.claim_next("test-worker")
    assert store.finish(eachlabs, SUCCESS, output=["out-0.webp"])
    assert store.finish(replicate, ERROR, error="boom")
    first.__exit__(None, None, None)
    assert receiver.requests == []

    second = app_client()  # same data folder: its start finds the two ends without a row
    requests = receiver.wait_for(2)
    bodies = {json.loads(r["raw"]).get("exec_id") or json.loads(r["raw"])["id"]: r for r in requests}
    assert set(bodies) == {eachlabs, replicate}
    assert bodies[eachlabs]["headers"]["x-webhook-secret"] == SECRET
    assert json.loads(bodies[replicate]["raw"])["status"] == "failed"
    assert len(deliveries_of(second, eachlabs)) == 1
    second.__exit__(None, None, None)

    app_client()  # and the next start sends nothing again
    time.sleep(0.5)
    assert len(receiver.requests) == 2


# -- Replicate webhooks ---------------------------------------------------------------------


def whsec_key(secret: str) -> bytes:
    assert secret.startswith("whsec_")
    return base64.b64decode(secret.removeprefix("whsec_"))


def signing_key(client: TestClient, auth: dict = AUTH) -> bytes:
    response = client.get("/v1/webhooks/default/secret", headers=auth)
    assert response.status_code == 200, response.text
    return whsec_key(response.json()["key"])


def rotate(client: TestClient, auth: dict = AUTH) -> bytes:
    response = client.post("/v1/webhooks/default/secret/rotate", headers=auth)
    assert response.status_code == 200, response.text
    return whsec_key(response.json()["key"])


def signed_with(request: dict, key: bytes) -> bool:
    """Standard Webhooks, checked here from the raw body as a receiver would."""
    headers = request["headers"]
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + request["raw"]
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return hmac.compare_digest(headers["webhook-signature"], f"v1,{expected}")


def assert_signed(request: dict, key: bytes) -> None:
    assert signed_with(request, key)
    assert abs(int(request["headers"]["webhook-timestamp"]) - time.time()) < 60


def test_replicate_completed_webhook_is_the_prediction_object_signed_with_the_keys_secret(
    app_client, receiver
):
    client = app_client()
    pid = create_replicate(client, receiver.url)
    finish(client, pid, SUCCESS, output=["out-0.webp"], predict_time=2.0)

    [request] = receiver.wait_for(1)
    assert_signed(request, signing_key(client))
    body = json.loads(request["raw"])
    assert body["id"] == pid
    assert body["status"] == "succeeded"
    assert body["output"] == [f"http://127.0.0.1:8000/v1/outputs/{pid}/out-0.webp"]
    assert body["model"] == "black-forest-labs/flux-dev"
    assert body == client.get(f"/v1/predictions/{pid}", headers=AUTH).json() | {"logs": body["logs"]}
    assert "x-webhook-secret" not in request["headers"]


def test_replicate_webhook_id_stays_the_same_across_retries(app_client):
    receiver = Receiver(codes=[500])
    try:
        client = app_client()
        pid = create_replicate(client, receiver.url, ["completed"])
        finish(client, pid, SUCCESS, output=["out-0.webp"])
        first, second = receiver.wait_for(2)
    finally:
        receiver.close()
    assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"]
    assert first["raw"] == second["raw"]
    key = signing_key(client)
    assert_signed(first, key)
    assert_signed(second, key)


def test_replicate_default_filter_sends_only_the_end(app_client, receiver):
    client = app_client()
    pid = create_replicate(client, receiver.url)  # default: output + completed
    start_running(client, pid)
    state_of(client).store.append_logs(pid, "step 1/28\n")
    state_of(client).supervisor._notify(pid)
    time.sleep(0.5)
    assert receiver.requests == []
    finish(client, pid, SUCCESS, output=["out-0.webp"])
    receiver.wait_for(1)
    time.sleep(0.3)
    assert [json.loads(r["raw"])["status"] for r in receiver.requests] == ["succeeded"]


def test_replicate_events_filter_start_and_completed_is_respected(app_client, receiver):
    client = app_client()
    pid = create_replicate(client, receiver.url, ["start", "completed"])
    start_running(client, pid)
    [start] = receiver.wait_for(1)
    state_of(client).store.append_logs(pid, "step 1/28\n")
    state_of(client).supervisor._notify(pid)
    time.sleep(0.7)  # a logs event would have gone by now
    finish(client, pid, ERROR, error="boom")
    requests = receiver.wait_for(2)
    time.sleep(0.3)
    assert [json.loads(r["raw"])["status"] for r in receiver.requests] == ["processing", "failed"]
    assert json.loads(requests[1]["raw"])["error"] == "boom"
    key = signing_key(client)
    assert_signed(start, key)
    assert start["headers"]["webhook-id"] != requests[1]["headers"]["webhook-id"]


def test_replicate_logs_events_are_throttled_and_carry_the_latest_logs(app_client, receiver):
    client = app_client()
    pid = create_replicate(client, receiver.url, ["logs"])
    start_running(client, pid)
    store = state_of(client).store
    for step in range(1, 11):
        store.append_logs(pid, f"step {step}/10\n")
        state_of(client).supervisor._notify(pid)
        time.sleep(0.03)
    time.sleep(1.2)
    bodies = [json.loads(r["raw"]) for r in receiver.requests]
    assert 1 <= len(bodies) <= 3  # ten changes in 0.3 s: at most one event per 500 ms
    arrivals = [r["at"] for r in receiver.requests]
    assert all(later - earlier >= 0.45 for earlier, later in itertools.pairwise(arrivals))
    assert bodies[-1]["logs"].endswith("step 10/10\n")
    assert all(b["status"] == "processing" for b in bodies)


def test_replicate_completed_is_not_sent_when_filtered_out(app_client, receiver):
    client = app_client()
    pid = create_replicate(client, receiver.url, ["start"])
    start_running(client, pid)
    receiver.wait_for(1)
    finish(client, pid, SUCCESS, output=["out-0.webp"])
    time.sleep(0.5)
    assert len(receiver.requests) == 1
    assert deliveries_of(client, pid) == []


def test_replicate_cancelled_queued_prediction_sends_completed_canceled(app_client, receiver):
    client = app_client()
    pid = create_replicate(client, receiver.url, ["completed"])
    response = client.post(f"/v1/predictions/{pid}/cancel", headers=AUTH)
    assert response.json()["status"] == "canceled"
    [request] = receiver.wait_for(1)
    assert json.loads(request["raw"])["status"] == "canceled"


def test_each_key_gets_its_own_signing_secret(app_client):
    client = app_client()
    assert signing_key(client) != signing_key(client, OTHER_AUTH)
    assert signing_key(client) == signing_key(client)


def test_each_keys_webhook_verifies_with_its_own_secret_and_not_the_others(app_client, receiver):
    client = app_client()
    mine = create_replicate(client, receiver.url, ["completed"])
    theirs = create_replicate(client, receiver.url, ["completed"], auth=OTHER_AUTH)
    finish(client, mine, SUCCESS, output=["out-0.webp"])
    finish(client, theirs, SUCCESS, output=["out-0.webp"])

    by_id = {json.loads(r["raw"])["id"]: r for r in receiver.wait_for(2)}
    my_key, their_key = signing_key(client), signing_key(client, OTHER_AUTH)
    assert_signed(by_id[mine], my_key)
    assert not signed_with(by_id[mine], their_key)
    assert_signed(by_id[theirs], their_key)
    assert not signed_with(by_id[theirs], my_key)


def test_rotating_the_secret_changes_it_and_only_for_that_key(app_client):
    client = app_client()
    old, other = signing_key(client), signing_key(client, OTHER_AUTH)
    new = rotate(client)
    assert new != old
    assert signing_key(client) == new
    assert signing_key(client, OTHER_AUTH) == other


def test_rotating_the_secret_needs_a_key(app_client):
    client = app_client()
    response = client.post("/v1/webhooks/default/secret/rotate")
    assert response.status_code == 401


def test_a_queued_delivery_retried_after_a_rotation_is_signed_with_the_new_secret(app_client):
    receiver = Receiver(codes=[500])
    try:
        client = app_client(interval_s=1.0)
        old = signing_key(client)
        pid = create_replicate(client, receiver.url, ["completed"])
        finish(client, pid, SUCCESS, output=["out-0.webp"])
        receiver.wait_for(1)
        new = rotate(client)  # between the failed first attempt and the retry, 1 s later
        first, second = receiver.wait_for(2)
    finally:
        receiver.close()
    assert signed_with(first, old)
    assert_signed(second, new)
    assert not signed_with(second, old)


def test_signing_secrets_are_kept_across_restarts_rotated_ones_too(app_client):
    first = app_client()
    key, rotated = signing_key(first), rotate(first, OTHER_AUTH)
    first.__exit__(None, None, None)
    second = app_client()
    assert signing_key(second) == key
    assert signing_key(second, OTHER_AUTH) == rotated


def fail_signing(client: TestClient, monkeypatch, times: int) -> None:
    """The database cannot give the signing secret for the next ``times`` tries (an outage)."""
    deliveries = state_of(client).webhooks.deliveries
    real, left = deliveries.signing_secret, itertools.count(times, -1)

    def signing_secret(owner: str) -> str:
        if next(left) > 0:
            raise sqlite3.OperationalError("disk I/O error")
        return real(owner)

    monkeypatch.setattr(deliveries, "signing_secret", signing_secret)


@pytest.mark.heavy  # over ~15 s: the second pass (scripts/test.sh -m heavy)
def test_a_delivery_the_database_cannot_sign_waits_without_using_its_attempts(
    app_client, receiver, monkeypatch
):
    client = app_client(attempts=2)
    pid = create_replicate(client, receiver.url, ["completed"])
    fail_signing(client, monkeypatch, times=3)  # more tries than the delivery has attempts
    finish(client, pid, SUCCESS, output=["out-0.webp"])

    [request] = receiver.wait_for(1, timeout=20)

    assert_signed(request, signing_key(client))
    logs = wait_for_logs(client, pid, "delivered")
    assert "Webhook delivery 1/2 (completed) to http://127.0.0.1:" in logs and "2/2" not in logs
    [delivery] = deliveries_of(client, pid)
    assert (delivery.state, delivery.attempts) == (DELIVERED, 1)


@pytest.mark.heavy  # over ~15 s: the second pass (scripts/test.sh -m heavy)
def test_a_database_outage_while_signing_is_logged_once(app_client, receiver, monkeypatch, caplog):
    client = app_client(attempts=2)
    pid = create_replicate(client, receiver.url, ["completed"])
    fail_signing(client, monkeypatch, times=3)
    caplog.set_level(logging.INFO, logger="fluxserve.webhooks")
    finish(client, pid, SUCCESS, output=["out-0.webp"])

    receiver.wait_for(1, timeout=20)

    warnings = [r for r in caplog.records if r.name == "fluxserve.webhooks" and r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        "cannot sign webhooks: the database is unavailable (disk I/O error); they wait, their attempts unused"
    ]
