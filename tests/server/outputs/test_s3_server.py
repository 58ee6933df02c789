"""A server whose outputs live in an S3-compatible bucket (moto on loopback): what a client gets
back links to the bucket and serves the image; with ``require_owner_key`` the answers link to the
API, which checks the key and redirects; retention removes the objects; a bucket the server cannot
use stops the start in one line."""

from __future__ import annotations

import time

import httpx

from tests.server.helpers import KEY_A, KEY_B, LiveServer, running_server
from tests.services import s3 as moto


def s3_outputs(s3_server, bucket: str, **extra) -> dict:
    return {
        "backend": "s3",
        "s3": {
            "bucket": bucket,
            "prefix": "flux",
            "endpoint_url": s3_server.endpoint_url,
            "region": moto.REGION,
            "access_key_id": moto.ACCESS_KEY_ID,
            "secret_access_key": moto.SECRET_ACCESS_KEY,
        },
        **extra,
    }


def test_the_output_url_in_the_answer_serves_the_image_from_the_bucket(
    tmp_path, tiny_model_dir, s3_server, s3_bucket
):
    with running_server(tmp_path, tiny_model_dir, outputs=s3_outputs(s3_server, s3_bucket)) as server:
        body = server.run(KEY_A, {"output_format": "png"})
        url = body["output"]
        assert url.startswith(s3_server.endpoint_url), url
        image = httpx.get(url)
        assert image.status_code == 200
        assert image.headers["content-type"] == "image/png"
        assert image.content.startswith(b"\x89PNG")
        assert s3_server.keys(s3_bucket) == [f"flux/{body['id']}/out-0.png"]
        assert not (tmp_path / "outputs").exists()  # nothing written to a local folder


def test_with_require_owner_key_answers_link_to_the_api_which_redirects_only_the_owner(
    tmp_path, tiny_model_dir, s3_server, s3_bucket
):
    outputs = s3_outputs(s3_server, s3_bucket, require_owner_key=True)
    with running_server(tmp_path, tiny_model_dir, outputs=outputs) as server:
        body = server.run(KEY_A)
        path = server.path(body["output"])
        assert path.startswith("/v1/outputs/")
        owner = server.http.get(path, headers=server.headers(KEY_A), follow_redirects=False)
        assert owner.status_code == 307
        assert httpx.get(owner.headers["location"]).status_code == 200
        assert server.http.get(path, headers=server.headers(KEY_B)).status_code == 404
        assert server.http.get(path).status_code == 404  # no key at all


def test_retention_removes_the_objects_and_the_prediction_says_so(
    tmp_path, tiny_model_dir, s3_server, s3_bucket
):
    outputs = s3_outputs(s3_server, s3_bucket, retention_hours=0.0003)  # about a second
    with running_server(tmp_path, tiny_model_dir, outputs=outputs) as server:
        pid = server.run(KEY_A)["id"]
        assert s3_server.keys(s3_bucket)
        deadline = time.monotonic() + 30
        while s3_server.keys(s3_bucket) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert s3_server.keys(s3_bucket) == []
        body = server.wait_until(KEY_A, pid, lambda b: b.get("data_removed") is True, timeout=10)
        assert body["output"] is None


def test_a_bucket_that_does_not_exist_stops_the_start_in_one_line(tmp_path, tiny_model_dir, s3_server):
    server = LiveServer(tmp_path, tiny_model_dir, outputs=s3_outputs(s3_server, "no-such-bucket"))
    server.launch()
    assert server.proc.wait(60) == 1
    log = server.log_path.read_text()
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, log
    assert "outputs.backend s3" in errors[0] and "no-such-bucket" in errors[0]
    assert "Traceback" not in log
