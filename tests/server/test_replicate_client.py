"""The official ``replicate`` Python client (PyPI) against a live server: uvicorn on a loopback port,
one real worker process running the tiny random FLUX pipeline on CPU.

The server speaks HTTPS with a throwaway self-signed certificate (made with the ``openssl``
command): the client turns only ``https:`` (and ``data:``) output URLs into ``FileOutput``
objects, so this is how ``client.run(...)`` hands back readable files, as it does against
Replicate. The client trusts the certificate through its own ``transport`` argument.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import replicate  # the dev extra installs it: a missing client must fail, not skip
from replicate.exceptions import ReplicateError
from replicate.helpers import FileOutput
from replicate.webhook import Webhooks, WebhookSigningSecret

KEY = "test-key-replicate-client"
SMALL = {"megapixels": "0.25", "num_inference_steps": 2, "output_format": "png"}  # 512x512, fast on CPU

pytestmark = pytest.mark.slow


def _self_signed_cert(folder) -> tuple[str, str]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)


class Receiver:
    """Records webhook POSTs on 127.0.0.1."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.requests.append({"headers": dict(self.headers.items()), "body": body.decode()})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/replicate-webhook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def live_server(tmp_path_factory, tiny_model_dir):
    """https://127.0.0.1:<port> serving the tiny model with one worker; yields the base URL and
    the certificate file."""
    import uvicorn

    from server.app import create_app
    from server.config import Settings

    folder = tmp_path_factory.mktemp("replicate-live")
    cert, key = _self_signed_cert(folder)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    base_url = f"https://127.0.0.1:{port}"
    settings = Settings(
        data_dir=str(folder / "data"),
        public_url=base_url,
        api_keys=[KEY],
        model={"weights": str(tiny_model_dir), "device": "cpu", "dtype": "float32"},
        workers={"count": 1, "shutdown_grace_s": 5},
        limits={"requests_per_minute": 0},
        input_images={"allowed_hosts": ["127.0.0.1"]},
        webhooks={"interval_s": 0.2, "timeout_s": 5},
    )
    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(
            app, log_level="warning", ssl_certfile=cert, ssl_keyfile=key, timeout_graceful_shutdown=5
        )
    )
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    verify = ssl.create_default_context(cafile=cert)
    deadline = time.monotonic() + 240
    while True:  # the worker loads the model in its own process
        try:
            health = httpx.get(f"{base_url}/health-check", verify=verify, timeout=5).json()
            if health["status"] == "READY":
                break
            assert health["status"] != "SETUP_FAILED", health
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the live server did not become ready"
        time.sleep(0.25)
    yield base_url, cert
    server.should_exit = True
    thread.join(30)
    sock.close()


@pytest.fixture
def client(live_server):
    base_url, cert = live_server
    client = replicate.Client(
        api_token=KEY,
        base_url=base_url,
        transport=httpx.HTTPTransport(verify=ssl.create_default_context(cafile=cert)),
    )
    yield client
    client._client.close()  # no keep-alive connection left to hold the server's shutdown


def decode(data: bytes):
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_run_returns_file_outputs_whose_bytes_are_the_images(client):
    output = client.run(
        "black-forest-labs/flux-dev", input={"prompt": "a lighthouse at dawn", "seed": 7, **SMALL}
    )
    assert isinstance(output, list) and len(output) == 1
    assert isinstance(output[0], FileOutput)
    image = decode(output[0].read())
    assert (image.format, image.size) == ("PNG", (512, 512))


def test_run_with_a_pinned_version_reads_the_version_and_returns_the_images(client):
    version = client.models.get("black-forest-labs/flux-dev").latest_version
    output = client.run(
        f"black-forest-labs/flux-dev:{version.id}", input={"prompt": "two foxes", "num_outputs": 2, **SMALL}
    )
    assert len(output) == 2
    assert [decode(item.read()).size for item in output] == [(512, 512), (512, 512)]


def test_create_then_wait_ends_succeeded_with_output_urls(client):
    prediction = client.predictions.create(
        model="black-forest-labs/flux-dev", input={"prompt": "a cat", **SMALL}
    )
    assert prediction.status in ("starting", "processing")
    prediction.wait()
    assert prediction.status == "succeeded"
    assert prediction.output[0].startswith("https://127.0.0.1:")
    assert "Using seed:" in prediction.logs


def test_cancel_stops_a_prediction(client):
    prediction = client.predictions.create(
        model="black-forest-labs/flux-dev", input={"prompt": "a long one", "num_inference_steps": 50}
    )
    prediction.cancel()
    prediction.wait()
    assert prediction.status == "canceled"
    assert prediction.output is None


def test_invalid_input_raises_replicate_error_422(client):
    with pytest.raises(ReplicateError) as caught:
        client.run("black-forest-labs/flux-dev", input={"prompt": "x", "num_outputs": 9})
    assert caught.value.status == 422
    assert "num_outputs" in caught.value.detail


def test_list_pages_include_a_new_prediction(client):
    prediction = client.predictions.create(
        model="black-forest-labs/flux-dev", input={"prompt": "listed", **SMALL}
    )
    page = client.predictions.list()
    assert page.results[0].id == prediction.id
    prediction.wait()


def test_signed_webhooks_of_a_real_run_validate_with_the_clients_own_checker(client):
    receiver = Receiver()
    try:
        prediction = client.predictions.create(
            model="black-forest-labs/flux-dev",
            input={"prompt": "a signed webhook", **SMALL, "num_inference_steps": 12},  # time to see it start
            webhook=receiver.url,
            webhook_events_filter=["start", "completed"],
        )
        prediction.wait()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any(
            json.loads(r["body"])["status"] == "succeeded" for r in receiver.requests
        ):
            time.sleep(0.1)
    finally:
        receiver.close()
    secret = client.webhooks.default.secret()
    statuses = [json.loads(r["body"])["status"] for r in receiver.requests]
    assert statuses == ["processing", "succeeded"]
    for request in receiver.requests:
        Webhooks.validate(
            headers=request["headers"],
            body=request["body"],
            secret=WebhookSigningSecret(key=secret.key),
            tolerance=60,
        )
    final = json.loads(receiver.requests[-1]["body"])
    assert final["id"] == prediction.id and final["output"] == prediction.output
