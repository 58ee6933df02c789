"""`/v1/outputs/{id}/{name}`: only files the server wrote, never anything outside the outputs
folder, never to another key; and retention, which deletes old files but keeps the prediction.
"""

from __future__ import annotations

import io
import time

import pytest
from PIL import Image

from server.outputs.local import output_name


@pytest.fixture(scope="module")
def server(live_server):
    return live_server


@pytest.fixture(scope="module")
def key(server) -> str:
    return server.new_key()


@pytest.fixture(scope="module")
def done(server, key) -> dict:
    return server.run(key, {"output_format": "png"})


@pytest.fixture(scope="module")
def secret_file(server):
    """A file beside the outputs folder that no URL may reach."""
    path = server.settings.data_path / "secret.txt"
    path.write_text("top secret")
    return path


def _assert_not_served(status: int, body: bytes) -> None:
    assert status == 404
    assert b"top secret" not in body
    assert b"root:" not in body


# -- serving ------------------------------------------------------------------------------------


def test_output_is_served_without_a_key(server, done):
    r = server.client.get(server.path(done["output"]))

    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (512, 512)


def test_output_is_served_to_its_owner(server, key, done):
    r = server.client.get(server.path(done["output"]), headers=server.headers(key))

    assert r.status_code == 200


def test_output_with_another_keys_credentials_is_404(server, done):
    other = server.new_key()

    r = server.client.get(server.path(done["output"]), headers=server.headers(other))

    assert r.status_code == 404
    assert r.json()["status"] == 404


def test_output_with_another_keys_bearer_is_404(server, done):
    r = server.client.get(
        server.path(done["output"]), headers={"Authorization": f"Bearer {server.new_key()}"}
    )

    assert r.status_code == 404


def test_output_with_a_wrong_key_is_404(server, done):
    r = server.client.get(server.path(done["output"]), headers={"X-API-Key": "not-a-key"})

    assert r.status_code == 404


def test_output_name_the_prediction_does_not_have_is_404(server, done):
    r = server.client.get(f"/v1/outputs/{done['id']}/out-1.png")

    assert r.status_code == 404


def test_output_of_unknown_prediction_is_404(server):
    r = server.client.get("/v1/outputs/00000000-0000-4000-8000-000000000000/out-0.webp")

    assert r.status_code == 404


def test_output_of_unfinished_prediction_is_404(queued_server):
    """The file name is known in advance; the file is not served before the prediction ends."""
    key = queued_server.new_key()
    pid = queued_server.create(key)
    queued_server.state.outputs.save_all(pid, [(output_name(0, "webp"), b"RIFF....WEBP")])

    assert queued_server.client.get(f"/v1/outputs/{pid}/out-0.webp").status_code == 404


def test_raw_request_serves_the_real_output(server, done):
    """The raw-path helper below reaches the route: a 404 there is the route's answer."""
    status, body = server.raw_get(f"/v1/outputs/{done['id']}/out-0.png".encode())

    assert status == 200
    assert body.startswith(b"\x89PNG")


@pytest.mark.parametrize(
    "raw_path",
    [
        b"/v1/outputs/{id}/..%2F..%2Fsecret.txt",
        b"/v1/outputs/{id}/..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        b"/v1/outputs/{id}/..%252F..%252Fsecret.txt",
        b"/v1/outputs/{id}/%2e%2e%2f%2e%2e%2fsecret.txt",
        b"/v1/outputs/{id}/..%5C..%5Csecret.txt",
        b"/v1/outputs/{id}/../../secret.txt",
        b"/v1/outputs/../secret.txt",
        b"/v1/outputs/../x",
        b"/v1/outputs/..%2Fsecret.txt/x",
        b"/v1/outputs/..%2F..%2F/secret.txt",
        b"/v1/outputs/%2Fetc%2Fpasswd/out-0.png",
        b"/v1/outputs/{id}/%2Fetc%2Fpasswd",
        b"/v1/outputs//etc/passwd",
        b"/v1/outputs/{id}//etc/passwd",
        b"/v1/outputs/{id}/out-0.png%00.txt",
        b"/v1/outputs/{id}/out-0.png/..",
        b"/v1/outputs/{id}/.",
        b"/v1/outputs/{id}/..",
        b"/v1/outputs/./out-0.png",
        b"/v1/outputs/{ID}/out-0.png",
    ],
)
def test_path_traversal_is_404_and_serves_no_file_outside(server, done, secret_file, raw_path):
    path = raw_path.replace(b"{id}", done["id"].encode()).replace(b"{ID}", done["id"].upper().encode())

    status, body = server.raw_get(path)

    _assert_not_served(status, body)


def test_traversal_through_the_http_client_is_404(server, done, secret_file):
    r = server.client.get(f"/v1/outputs/{done['id']}/..%2F..%2Fsecret.txt")

    _assert_not_served(r.status_code, r.content)


# -- retention ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def retention_server(make_server):
    """Outputs kept 0.0003 h (about 1 s); the sweep then runs every second. No worker: the
    finished prediction is recorded the way the supervisor records one."""
    with make_server(start_workers=False, outputs={"retention_hours": 0.0003}) as server:
        yield server


@pytest.fixture(scope="module")
def expired(retention_server) -> tuple[str, str]:
    server = retention_server
    key = server.new_key()
    pid = server.create(key)
    image = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(image, "WEBP")
    claimed = server.store.claim_next("test-worker")
    assert claimed is not None and claimed.id == pid
    names = server.state.outputs.save_all(pid, [(output_name(0, "webp"), image.getvalue())])
    server.store.finish(pid, "success", output=names, predict_time=0.1)
    assert server.get(key, pid)["output"].endswith("/out-0.webp")
    deadline = time.monotonic() + 15
    while server.store.get(pid).data_removed is False:
        assert time.monotonic() < deadline, "retention never swept the outputs"
        time.sleep(0.1)
    return key, pid


def test_retention_deletes_the_files(retention_server, expired):
    key, pid = expired

    assert not (retention_server.settings.outputs_path / pid).exists()


def test_retention_keeps_the_prediction_successful_with_data_removed(retention_server, expired):
    key, pid = expired

    body = retention_server.get(key, pid)

    assert body["status"] == "success"
    assert body["data_removed"] is True
    assert body["output"] is None
    assert body["metrics"]["predict_time"] == 0.1


def test_retention_makes_the_output_url_404(retention_server, expired):
    key, pid = expired

    assert retention_server.client.get(f"/v1/outputs/{pid}/out-0.webp").status_code == 404


def test_retention_leaves_unfinished_predictions_alone(retention_server, expired):
    key = retention_server.new_key()
    pid = retention_server.create(key)
    time.sleep(2.5)  # two sweeps past the retention time

    row = retention_server.store.get(pid)
    assert row.status == "starting"
    assert row.data_removed is False


def test_without_retention_outputs_are_kept(server, done):
    assert server.settings.outputs.retention_hours == 0
    assert server.store.get(done["id"]).data_removed is False
    assert server.client.get(server.path(done["output"])).status_code == 200
