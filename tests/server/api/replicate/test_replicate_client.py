"""The official ``replicate`` Python client (PyPI) against a live ``fluxserve serve`` on a loopback
port, one real worker process running the tiny random FLUX pipeline on CPU.

The server speaks HTTPS (``--ssl-certfile``/``--ssl-keyfile``) with a throwaway self-signed
certificate made with the ``openssl`` command: the client turns only ``https:`` (and ``data:``)
output URLs into ``FileOutput`` objects, so this is how ``client.run(...)`` hands back readable
files, as it does against Replicate. The client trusts the certificate through its own
``transport`` argument. The README's plain-http example runs against a second, http server.
"""

from __future__ import annotations

import io
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import replicate  # the dev extra installs it: a missing client must fail, not skip
from replicate.exceptions import ReplicateError
from replicate.helpers import FileOutput
from replicate.webhook import Webhooks, WebhookSigningSecret

from tests.server.helpers import FAST_MODEL, LiveServer, self_signed_cert

KEY = "test-key-replicate-client"
SMALL = {"megapixels": "0.25", "num_inference_steps": 2, "output_format": "png"}  # 512x512, fast on CPU

pytestmark = pytest.mark.slow


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


# The README's prompt alone asks for a 1024x1024 image in 28 steps: these servers make small ones
# by default (model.defaults), so its examples run unchanged and fast.
SMALL_DEFAULTS = {"megapixels": "0.25", "num_inference_steps": 2}
SERVER_SETTINGS = {
    "model": {"dtype": "float32", "defaults": SMALL_DEFAULTS, **FAST_MODEL},
    "workers": {"count": 1, "shutdown_grace_s": 5},
    "input_images": {"allowed_hosts": ["127.0.0.1"]},
    "webhooks": {"interval_s": 0.2, "timeout_s": 5},
    "loras": {"allow_http": True},  # the adapter host below is plain http on loopback
}


@pytest.fixture(scope="module")
def live_server(tmp_path_factory, tiny_model_dir):
    """``fluxserve serve --ssl-certfile ... --ssl-keyfile ...`` serving the tiny model with one
    worker; no ``public_url``: the URLs in answers are https because TLS is on."""
    folder = tmp_path_factory.mktemp("replicate-live")
    tls = self_signed_cert(folder)
    with LiveServer(folder / "data", tiny_model_dir, api_keys=[KEY], tls=tls, **SERVER_SETTINGS) as server:
        server.start(timeout=240)
        yield server


@pytest.fixture
def client(live_server):
    client = replicate.Client(
        api_token=KEY, base_url=live_server.url, transport=httpx.HTTPTransport(verify=live_server.verify)
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


@pytest.fixture(scope="module")
def adapter_url(tiny_model_dir, tmp_path_factory):
    """A tiny LoRA for the tiny model, served over http on 127.0.0.1."""
    from pipelines.tiny_lora import write_tiny_lora
    from tests.server.helpers import FileHost, Route

    path = write_tiny_lora(tiny_model_dir, tmp_path_factory.mktemp("lora") / "style.safetensors")
    host = FileHost()
    host.routes["/style.safetensors"] = Route(path.read_bytes())
    yield host.url("/style.safetensors")
    host.close()


def test_run_flux_dev_lora_with_lora_weights_changes_the_image(client, adapter_url):
    inputs = {"prompt": "a lighthouse at dawn", "seed": 7, **SMALL}
    plain = client.run("black-forest-labs/flux-dev", input=inputs)[0].read()
    styled = client.run("black-forest-labs/flux-dev-lora", input={**inputs, "lora_weights": adapter_url})

    styled_image = decode(styled[0].read())
    assert styled_image.size == (512, 512)
    assert styled_image.tobytes() != decode(plain).tobytes()  # the pixels, not the embedded parameters
    version = client.models.get("black-forest-labs/flux-dev-lora").latest_version
    lora_scale = version.openapi_schema["components"]["schemas"]["Input"]["properties"]["lora_scale"]
    assert (lora_scale["minimum"], lora_scale["maximum"], lora_scale["default"]) == (-1, 3, 1)


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


# -- the README's examples, as written ------------------------------------------------------


def readme_examples() -> list[str]:
    """The Python blocks of the README's "Replicate-compatible routes" section: http, then https."""
    readme = (Path(__file__).resolve().parents[4] / "README.md").read_text()
    section = readme.split("### Replicate-compatible routes", 1)[1].split("\n### ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def run_example(code: str, base_url: str, folder: Path) -> bytes:
    """Run a README example against ``base_url`` with the test key, in ``folder``; the bytes it saved."""
    code = re.sub(r'base_url="[^"]+"', f'base_url="{base_url}"', code).replace("my-secret-key", KEY)
    code = code.replace('"fox.webp"', repr(str(folder / "fox.webp")))
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the README's own example
    return (folder / "fox.webp").read_bytes()


def test_readme_https_example_writes_the_image_read_from_the_file_output(live_server, tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", live_server.tls[0])  # the README's way to trust the certificate

    data = run_example(readme_examples()[1], live_server.url, tmp_path)

    assert decode(data).format == "WEBP"


def test_readme_plain_http_example_downloads_the_url_strings_it_gets(tmp_path, tiny_model_dir):
    with LiveServer(tmp_path / "data", tiny_model_dir, api_keys=[KEY], **SERVER_SETTINGS) as server:
        server.start(timeout=240)
        data = run_example(readme_examples()[0], server.url, tmp_path)

    assert decode(data).format == "WEBP"
