"""FluxClient and `fluxserve client generate` against a live `fluxserve serve` (a subprocess on a
free loopback port, tiny model on CPU), and the client's retry policy against a small fake
HTTP server (429 with Retry-After, dropped connections) so the waits are exact and short."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from server.client import (
    FluxAPIError,
    FluxClient,
    FluxConnectionError,
    WaitTimeout,
    output_urls,
    parse_progress,
    parse_seed,
)

KEY = "client-test-key"
OTHER_KEY = "client-other-key"
LIST_KEY = "client-list-key"
SMALL = {"megapixels": 0.25, "num_inference_steps": 2}
# Slow enough on the tiny model to be cancelled while queued or running.
SLOW = {"megapixels": 1, "num_inference_steps": 50, "num_outputs": 4}


# -- a live server ------------------------------------------------------------------------------


@dataclass
class LiveServer:
    url: str
    proc: subprocess.Popen
    data_dir: Path
    log_path: Path

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    root: Path, model_dir: Path, keys: list[str], extra_env: dict[str, str] | None = None
) -> LiveServer:
    """`fluxserve serve` on a free loopback port, waited on until /health-check says READY."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXSERVE_")}
    env.update(
        {
            "FLUXSERVE_API_KEYS": ",".join(keys),
            "FLUXSERVE_DATA_DIR": str(root / "data"),
            "FLUXSERVE_MODEL__WEIGHTS": str(model_dir),
            "FLUXSERVE_HOST": "127.0.0.1",
            "FLUXSERVE_PORT": str(port),
            "FLUXSERVE_WORKERS__SHUTDOWN_GRACE_S": "2",
            "FLUXSERVE_LOG_LEVEL": "warning",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
    )
    env.update(extra_env or {})
    log_path = root / "serve.log"
    exe = Path(sys.executable).with_name("fluxserve")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(exe), "serve"], stdout=log, stderr=subprocess.STDOUT, env=env)
    server = LiveServer(f"http://127.0.0.1:{port}", proc, root / "data", log_path)
    deadline = time.monotonic() + 180
    status = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"fluxserve serve exited with {proc.returncode}:\n{server.log_tail()}")
        try:
            status = httpx.get(server.url + "/health-check", timeout=2).json().get("status")
        except (httpx.HTTPError, ValueError):
            status = None
        if status == "READY":
            return server
        if status == "SETUP_FAILED":
            break
        time.sleep(0.3)
    stop_server(server)
    pytest.fail(f"server not ready (last status {status}):\n{server.log_tail()}")


def stop_server(server: LiveServer) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(timeout=10)


def executions_total(server: LiveServer, key: str) -> int:
    with FluxClient(server.url, key) as client:
        return int(client.list(limit=1)["total"])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    live = start_server(tmp_path_factory.mktemp("client-server"), tiny_model_dir, [KEY, OTHER_KEY, LIST_KEY])
    yield live
    stop_server(live)


@pytest.fixture
def client(server: LiveServer):
    with FluxClient(server.url, KEY) as c:
        yield c


def _image(data: bytes):
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# -- the client against the live server --------------------------------------------------------


def test_run_reports_progress_and_downloads(client: FluxClient) -> None:
    seen: list[dict] = []
    prediction = client.run(
        {"prompt": "a red fox", "seed": 42, **SMALL}, on_progress=seen.append, timeout=120
    )
    assert prediction["status"] == "success", prediction
    assert parse_seed(prediction["logs"]) == 42
    assert parse_progress(prediction["logs"]) == (2, 2)
    assert seen and seen[-1]["status"] == "success"
    assert all(a["logs"] != b["logs"] for a, b in zip(seen, seen[1:], strict=False))  # called on change only
    assert prediction["metrics"]["predict_time"] > 0
    (url,) = output_urls(prediction)
    image = _image(client.download(url))
    assert image.size == (512, 512) and image.format == "WEBP"


def test_create_get_wait_and_long_poll(client: FluxClient) -> None:
    prediction_id = client.create({"prompt": "a lighthouse", **SMALL})
    first = client.get(prediction_id)
    assert first["id"] == prediction_id
    assert first["status"] in ("starting", "processing", "success")
    assert first["input"]["prompt"] == "a lighthouse"
    final = client.wait(prediction_id, timeout=120)
    assert final["status"] == "success"
    assert client.get(prediction_id)["status"] == "success"

    # GET ?wait=n holds the request until the end, not for the full n seconds.
    second = client.create({"prompt": "a harbour", **SMALL})
    t0 = time.monotonic()
    held = client.get(second, wait=50)
    assert held["status"] == "success"
    assert time.monotonic() - t0 < 45


def test_wait_timeout_then_cancel(client: FluxClient) -> None:
    prediction_id = client.create({"prompt": "slow", **SLOW})
    with pytest.raises(WaitTimeout) as info:
        client.wait(prediction_id, timeout=0.2)
    assert info.value.prediction["id"] == prediction_id
    body = client.cancel(prediction_id)
    assert body == {
        "status": "cancelled",
        "message": "Prediction canceled successfully",
        "predictionID": prediction_id,
    }
    final = client.wait(prediction_id, timeout=60)
    assert final["status"] == "cancelled"
    assert final["output"] is None
    with pytest.raises(FluxAPIError) as again:
        client.cancel(prediction_id)
    assert again.value.status == 409


def test_list(server: LiveServer) -> None:
    with FluxClient(server.url, LIST_KEY) as lister:
        ids = [lister.create({"prompt": f"list {i}", **SMALL}) for i in range(3)]
        for prediction_id in ids:
            lister.wait(prediction_id, timeout=120)
        page = lister.list(limit=2)
        assert page["total"] == 3 and page["limit"] == 2 and page["offset"] == 0
        assert [e["id"] for e in page["executions"]] == [ids[2], ids[1]]  # newest first
        assert [e["id"] for e in lister.list(limit=2, offset=2)["executions"]] == [ids[0]]
        assert lister.list(status="success")["total"] == 3
        assert lister.list(status="cancelled")["total"] == 0
        with pytest.raises(FluxAPIError) as bad:
            lister.list(status="nonsense")
        assert bad.value.status == 400 and "status" in bad.value.details


def test_errors(server: LiveServer, client: FluxClient) -> None:
    with pytest.raises(FluxAPIError) as bad:
        client.create({"prompt": "", "num_outputs": 9})
    err = bad.value
    assert err.status == 400
    assert err.error == "Invalid input for model"
    assert set(err.details) >= {"prompt", "num_outputs"}
    assert "num_outputs" in str(err)

    with pytest.raises(FluxAPIError) as missing:
        client.get("no-such-prediction")
    assert missing.value.status == 404 and missing.value.error == "Prediction not found"

    mine = client.create({"prompt": "private", **SMALL})
    with FluxClient(server.url, OTHER_KEY) as other, pytest.raises(FluxAPIError) as hidden:
        other.get(mine)
    assert hidden.value.status == 404
    with FluxClient(server.url, "wrong-key") as stranger, pytest.raises(FluxAPIError) as denied:
        stranger.list()
    assert denied.value.status == 401
    client.wait(mine, timeout=120)


# -- `fluxserve client generate` ----------------------------------------------------------------


def test_cli_generate_uses_env_and_writes_the_image(
    server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from server.cli import main

    monkeypatch.setenv("FLUXSERVE_URL", server.url)
    monkeypatch.setenv("FLUXSERVE_API_KEY", KEY)
    out = tmp_path / "fox.webp"
    rc = main(
        [
            "client",
            "generate",
            "a fox",
            "-o",
            str(out),
            "--megapixels",
            "0.25",
            "--steps",
            "2",
            "--aspect-ratio",
            "16:9",
            "--seed",
            "7",
            "--guidance",
            "2.5",
            "--output-quality",
            "90",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    image = _image(out.read_bytes())
    assert image.size == (672, 384) and image.format == "WEBP"
    assert "Using seed: 7" in captured.out
    assert "predict time" in captured.out and f"wrote {out}" in captured.out


def test_cli_generate_prints_the_output_url_and_the_share_link(
    server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from server.cli import main

    out = tmp_path / "linked.webp"
    rc = main(
        [
            "client",
            "generate",
            "a linked fox",
            "--url",
            server.url,
            "--key",
            KEY,
            "-o",
            str(out),
            "--steps",
            "2",
            "--megapixels",
            "0.25",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    prediction_id = captured.err.split("prediction ", 1)[1].split()[0]
    lines = captured.out.splitlines()
    assert f"url: {server.url}/v1/outputs/{prediction_id}/out-0.webp" in lines
    assert f"share: {server.url}/p/{prediction_id}" in lines
    assert httpx.get(f"{server.url}/p/{prediction_id}", timeout=10).status_code == 200


def test_cli_generate_with_a_lora_runs_the_lora_model(
    server: LiveServer, tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    from pipelines.tiny_lora import write_tiny_lora
    from server.cli import main

    write_tiny_lora(tiny_model_dir, server.data_dir / "loras" / "ink.safetensors")
    out = tmp_path / "fox.png"
    common = ["client", "generate", "a fox", "--url", server.url, "--key", KEY, "--megapixels", "0.25"]
    common += ["--steps", "2", "--seed", "3"]

    assert main([*common, "-o", str(tmp_path / "plain.png")]) == 0
    rc = main([*common, "-o", str(out), "--lora", "ink", "--lora-scale", "0.9"])

    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "LoRA adapter folder: ink.safetensors: ready" in captured.out
    # the pixels differ, not only the parameters embedded in the file
    assert _image(out.read_bytes()).tobytes() != _image((tmp_path / "plain.png").read_bytes()).tobytes()
    with FluxClient(server.url, KEY) as client:
        latest = client.list(limit=1)["executions"][0]
    assert latest["model"] == "black-forest-labs-flux-dev-lora"
    assert (latest["input"]["lora_weights"], latest["input"]["lora_scale"]) == ("ink", 0.9)


def test_cli_generate_img2img_several_outputs(
    server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from PIL import Image

    from server.cli import main

    source = tmp_path / "source.png"
    Image.new("RGB", (160, 96), (200, 30, 30)).save(source)
    out = tmp_path / "out" / "edit.jpg"
    rc = main(
        [
            "client",
            "generate",
            "make it blue",
            "--url",
            server.url,
            "--key",
            KEY,
            "-o",
            str(out),
            "--image",
            str(source),
            "--prompt-strength",
            "0.5",
            "--num-outputs",
            "2",
            "--steps",
            "2",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert not out.exists()
    for i in range(2):
        image = _image((tmp_path / "out" / f"edit-{i}.jpg").read_bytes())
        assert image.size == (160, 96) and image.format == "JPEG"


def test_cli_generate_reports_bad_input(
    server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from server.cli import main

    rc = main(
        [
            "client",
            "generate",
            "x",
            "--url",
            server.url,
            "--key",
            KEY,
            "-o",
            str(tmp_path / "x.png"),
            "--steps",
            "99",
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "400 Invalid input for model" in err and "num_inference_steps" in err
    rc = main(
        ["client", "generate", "x", "--url", server.url, "--key", "wrong", "-o", str(tmp_path / "x.png")]
    )
    assert rc == 1
    assert "401" in capsys.readouterr().err


def test_cli_generate_ctrl_c_cancels_the_prediction(server: LiveServer, tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("fluxserve")
    env = {**os.environ, "FLUXSERVE_URL": server.url, "FLUXSERVE_API_KEY": OTHER_KEY}
    proc = subprocess.Popen(
        [
            str(exe),
            "client",
            "generate",
            "slow",
            "-o",
            str(tmp_path / "x.webp"),
            "--megapixels",
            "1",
            "--steps",
            "50",
            "--num-outputs",
            "4",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        # A shell runs background jobs with SIGINT ignored, and children inherit that: restore
        # the default so Ctrl-C reaches the CLI however the test run itself was started.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    with FluxClient(server.url, OTHER_KEY) as other:
        before = {p["id"] for p in other.list(limit=100)["executions"]}
        deadline = time.monotonic() + 60
        # Interrupt only once this run's own prediction is running (and so being waited on).
        while not [
            p for p in other.list(limit=5, status="processing")["executions"] if p["id"] not in before
        ]:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
        time.sleep(0.5)  # the CLI is now inside wait(): its Ctrl-C path cancels on the server
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
        assert proc.returncode == 130, output
        assert "interrupted: cancelled prediction" in output
        newest = other.list(limit=1)["executions"][0]
        assert other.wait(newest["id"], timeout=60)["status"] == "cancelled"
    assert not (tmp_path / "x-0.webp").exists()


# -- the retry policy against a fake server ----------------------------------------------------


class FakeServer(ThreadingHTTPServer):
    """Answers each request with the next scripted reply: (status, headers, body) or "drop"
    (close the connection without answering). Records (method, path, monotonic time)."""

    daemon_threads = True

    def __init__(self, script: list) -> None:
        super().__init__(("127.0.0.1", 0), _FakeHandler)
        self.script = list(script)
        self.requests: list[tuple[str, str, float]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _FakeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        server: FakeServer = self.server  # type: ignore[assignment]
        with server.lock:
            server.requests.append((self.command, self.path, time.monotonic()))
            reply = server.script.pop(0) if len(server.script) > 1 else server.script[0]
        if reply == "drop":
            self.close_connection = True
            return
        status, headers, body = reply
        data = json.dumps(body).encode()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer


@pytest.fixture
def fake():
    servers: list[FakeServer] = []

    def make(script: list) -> FakeServer:
        srv = FakeServer(script)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def test_share_url_is_the_predictions_base_and_id_when_the_server_serves_the_page() -> None:
    asked: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        return httpx.Response(200 if request.url.path == "/p/on" else 404, text="<html></html>")

    prediction = {"id": "on", "urls": {"get": "https://flux.example.com/v1/prediction/on"}}
    with FluxClient("http://127.0.0.1:9", "k", transport=httpx.MockTransport(answer)) as client:
        assert client.share_url(prediction) == "https://flux.example.com/p/on"
        assert client.share_url({"id": "off", "urls": {"get": "http://x/v1/prediction/off"}}) is None
    assert asked == ["/p/on", "/p/off"]


TOO_MANY = (
    429,
    {"Retry-After": "1"},
    {"status": 429, "error": "too many requests", "details": "10 in flight"},
)
CREATED = (
    200,
    {},
    {"status": "success", "message": "Prediction created successfully", "predictionID": "abc"},
)


def test_429_is_retried_after_retry_after(fake) -> None:
    srv = fake([TOO_MANY, TOO_MANY, CREATED])
    with FluxClient(srv.url, "k") as client:
        t0 = time.monotonic()
        assert client.create({"prompt": "x"}) == "abc"
        elapsed = time.monotonic() - t0
    times = [t for _, _, t in srv.requests]
    assert [m for m, _, _ in srv.requests] == ["POST"] * 3
    assert all(b - a >= 0.95 for a, b in zip(times, times[1:], strict=False))  # Retry-After: 1 honoured
    assert elapsed >= 1.9


def test_429_retries_are_bounded(fake) -> None:
    srv = fake(
        [(429, {"Retry-After": "0"}, {"status": 429, "error": "too many requests", "details": "limit"})]
    )
    with FluxClient(srv.url, "k", rate_limit_retries=2) as client, pytest.raises(FluxAPIError) as info:
        client.get("abc")
    assert info.value.status == 429 and info.value.retry_after == 0
    assert len(srv.requests) == 3


def test_network_errors_are_retried_for_gets_only(fake) -> None:
    srv = fake(["drop", (200, {}, {"id": "abc", "status": "success"})])
    sleeps: list[float] = []
    with FluxClient(srv.url, "k") as client:
        client._sleep = sleeps.append
        assert client.get("abc")["status"] == "success"
        assert len(srv.requests) == 2 and len(sleeps) == 1 and 0 < sleeps[0] <= 8

    srv = fake(["drop", CREATED])
    with FluxClient(srv.url, "k") as client:
        client._sleep = sleeps.append
        with pytest.raises(FluxConnectionError) as info:
            client.create({"prompt": "x"})  # it may have reached the server: never sent twice
        assert info.value.status == 0
    assert len(srv.requests) == 1


def test_refused_connections_are_retried_even_for_posts() -> None:
    sleeps: list[float] = []
    with FluxClient(f"http://127.0.0.1:{free_port()}", "k", network_retries=2) as client:
        client._sleep = sleeps.append
        with pytest.raises(FluxConnectionError):
            client.create({"prompt": "x"})  # never sent: safe to try again
    assert len(sleeps) == 2
