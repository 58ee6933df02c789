"""SSRF end to end: image URLs and webhook URLs aimed at this machine and at private networks,
through a real `fluxserve serve` subprocess and its real worker.

A small HTTP server on 127.0.0.1 plays the internal service an attacker would like to reach (an
image, a redirect, a webhook receiver); it records every request it gets. Two fluxserve servers:

- ``strict``: the default policy. Every loopback, private, link-local or metadata target is
  refused, the prediction ends in ``error`` naming the refusal, and nothing reaches the service.
- ``allowing``: ``input_images.allowed_hosts: ["127.0.0.1:<the service's port>"]``. The loopback
  image is fetched and img2img succeeds with the contract's size rule; a redirect from there to a
  refused address, or to another port of 127.0.0.1, is still refused; the loopback webhook is
  delivered.
"""

from __future__ import annotations

import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image

from tests.server.helpers import FAST_MODEL, KEY_A, LiveServer

pytestmark = pytest.mark.slow

STEPS = {"num_inference_steps": "2"}


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (30, 160, 90)).save(buf, "PNG")
    return buf.getvalue()


class InternalService:
    """What sits on loopback: images, a redirect, a webhook receiver; every request is recorded."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        images = {"/img.png": _png(100, 75), "/wide.png": _png(1500, 100)}
        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _record(self, body: bytes = b"") -> None:
                service.requests.append((self.command, self.path, dict(self.headers), body))

            def do_GET(self) -> None:  # noqa: N802
                self._record()
                url = urlsplit(self.path)
                if url.path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", parse_qs(url.query)["to"][0])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = images.get(url.path)
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802
                self._record(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        # The same service on a second port, which the allow-list does not name.
        self.other = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.other_port = self.other.server_address[1]
        for httpd in (self.httpd, self.other):
            threading.Thread(target=httpd.serve_forever, daemon=True).start()

    def url(self, path: str, host: str = "127.0.0.1", port: int | None = None) -> str:
        return f"http://{host}:{port or self.port}{path}"

    def hits(self, path_prefix: str) -> list[tuple[str, str, dict[str, str], bytes]]:
        return [r for r in self.requests if r[1].startswith(path_prefix)]

    def close(self) -> None:
        for httpd in (self.httpd, self.other):
            httpd.shutdown()
            httpd.server_close()


@pytest.fixture(scope="module")
def service():
    svc = InternalService()
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def servers(tmp_path_factory, tiny_model_dir, service):
    root = tmp_path_factory.mktemp("ssrf")
    strict = LiveServer(root / "strict", tiny_model_dir, model=FAST_MODEL, webhooks={"interval_s": 0.5})
    allowing = LiveServer(
        root / "allowing",
        tiny_model_dir,
        model=FAST_MODEL,
        input_images={"allowed_hosts": [f"127.0.0.1:{service.port}"]},
        webhooks={"interval_s": 0.5},
    )
    with strict, allowing:
        strict.launch()  # both load side by side
        allowing.launch()
        strict.wait_started()
        allowing.wait_started()
        yield strict, allowing


@pytest.fixture(scope="module")
def strict(servers):
    return servers[0]


@pytest.fixture(scope="module")
def allowing(servers):
    return servers[1]


def _run_image(srv: LiveServer, url: str) -> dict:
    return srv.wait_for_end(KEY_A, srv.create(KEY_A, {**STEPS, "image": url}))


# -- the default policy refuses ---------------------------------------------------------------------

REFUSED = {
    "127.0.0.1": (lambda s: s.url("/img.png"), "image URL refused: 127.0.0.1 is a loopback address"),
    "localhost": (lambda s: s.url("/img.png", "localhost"), "image URL refused: localhost resolves to "),
    "[::1]": (lambda s: s.url("/img.png", "[::1]"), "image URL refused: ::1 is a loopback address"),
    "decimal 127.0.0.1": (lambda s: s.url("/img.png", "2130706433"), "a loopback address"),
    "metadata 169.254.169.254": (
        lambda s: "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "image URL refused: 169.254.169.254 is a cloud metadata address",
    ),
    "private 10.0.0.1": (
        lambda s: "http://10.0.0.1/img.png",
        "image URL refused: 10.0.0.1 is a private address",
    ),
    "IPv4-mapped IPv6 loopback": (
        lambda s: s.url("/img.png", "[::ffff:127.0.0.1]"),
        "a loopback address (embedded in ::ffff:7f00:1)",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_default_policy_refuses_internal_image_urls_and_nothing_is_fetched(strict, service, case):
    make, refusal = REFUSED[case]
    before = len(service.requests)

    body = _run_image(strict, make(service))

    assert body["status"] == "error"
    assert body["error"].startswith("Invalid input image: "), body["error"]
    assert refusal in body["error"]
    if case == "localhost":
        assert "a loopback address" in body["error"]
    assert len(service.requests) == before  # refused before connecting


def test_default_policy_refuses_a_loopback_webhook_and_does_not_retry(strict, service):
    pid = strict.create(KEY_A, {"image": service.url("/img.png"), **STEPS}, webhook_url=service.url("/hook"))
    body = strict.wait_until(KEY_A, pid, lambda b: "Webhook delivery" in b["logs"], timeout=60)

    assert body["status"] == "error"  # the image was refused too
    assert (
        f"Webhook delivery 1/3 to http://127.0.0.1:{service.port}/...: webhook URL refused: "
        "127.0.0.1 is a loopback address; not retried" in body["logs"]
    )
    time.sleep(1.5)  # three retry intervals: nothing more is attempted
    assert strict.get(KEY_A, pid)["logs"].count("Webhook delivery") == 1
    assert service.hits("/hook") == []


# -- an operator allow-list lets the loopback service through ---------------------------------------


@pytest.mark.parametrize(
    ("path", "source", "output"), [("/img.png", "100x75", (96, 80)), ("/wide.png", "1500x100", (1440, 96))]
)
def test_allowed_host_image_is_fetched_and_img2img_follows_the_size_rule(
    allowing, service, path, source, output
):
    body = _run_image(allowing, service.url(path))

    assert body["status"] == "success", body
    assert f"img2img from a {source} image: output {output[0]}x{output[1]}" in body["logs"]
    image = Image.open(io.BytesIO(allowing.http.get(allowing.output_path(body["output"])).content))
    assert image.size == output
    assert any(r[0] == "GET" and r[1] == path for r in service.requests)


@pytest.mark.parametrize(
    ("target", "refusal"),
    [
        ("http://10.0.0.1/img.png", "image URL refused: 10.0.0.1 is a private address"),
        (
            "http://169.254.169.254/latest/meta-data/",
            "image URL refused: 169.254.169.254 is a cloud metadata address",
        ),
        ("file:///etc/passwd", "image URL refused: only http and https URLs are allowed"),
    ],
)
def test_redirect_from_an_allowed_host_to_a_refused_one_is_refused(allowing, service, target, refusal):
    body = _run_image(allowing, service.url(f"/redirect?to={target}"))

    assert body["status"] == "error"
    assert refusal in body["error"], body["error"]
    assert any(r[1].startswith("/redirect") for r in service.requests)  # the allowed hop was followed


@pytest.mark.parametrize("host", ["127.0.0.1", "[::ffff:127.0.0.1]", "2130706433"])
def test_redirect_from_the_allowed_port_to_another_port_of_the_same_host_is_refused(allowing, service, host):
    before = len(service.requests)
    target = service.url("/img.png", host, service.other_port)

    body = _run_image(allowing, service.url(f"/redirect?to={target}"))

    assert body["status"] == "error"
    assert body["error"].startswith("Invalid input image: image URL refused: "), body["error"]
    assert "a loopback address" in body["error"], body["error"]
    assert body["error"].endswith(f", not allowed on port {service.other_port}"), body["error"]
    hops = [r[1] for r in service.requests[before:]]
    assert len(hops) == 1 and hops[0].startswith("/redirect?"), hops  # only the allowed hop was fetched


def test_allowed_host_webhook_is_delivered_with_the_secret(allowing, service):
    pid = allowing.create(
        KEY_A,
        {"image": service.url("/img.png"), **STEPS},
        webhook_url=service.url("/hook"),
        webhook_secret="s3cret",
    )
    body = allowing.wait_until(KEY_A, pid, lambda b: "Webhook delivery" in b["logs"], timeout=60)

    assert body["status"] == "success"
    assert (
        f"Webhook delivery 1/3 to http://127.0.0.1:{service.port}/...: delivered (HTTP 200)" in body["logs"]
    )
    (method, _, headers, payload), *_ = [r for r in service.hits("/hook") if pid in r[3].decode()]
    assert method == "POST"
    assert headers["X-Webhook-Secret"] == "s3cret"
    sent = json.loads(payload)
    assert sent["exec_id"] == pid and sent["status"] == "succeeded"
    assert sent["output"]["url"] == body["output"]
