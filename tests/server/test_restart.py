"""Restarts of the real thing: `fluxserve serve` in a subprocess, over real HTTP.

- SIGKILL of the whole process group (the API and its worker) while one prediction runs and
  four wait: after a restart the waiting ones succeed, the running one ends in error "worker
  lost", none runs twice, and the SQLite file is sound.
- SIGTERM while one runs and two wait: new creates get 503 while the running one finishes, the
  waiting ones stay queued (starting) and run at the next start.

The config comes from a YAML file (data folder, port, limits) and the environment
(FLUXSERVE_API_KEYS, FLUXSERVE_MODEL__WEIGHTS), as an operator would set them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

KEY = "restart-test-key"
SLOW = {"megapixels": "1", "num_inference_steps": "40"}  # seconds on CPU
FAST = {"megapixels": "0.25", "num_inference_steps": "2"}
TERMINAL = ("success", "error", "cancelled")

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fluxserve() -> str:
    exe = Path(sys.executable).with_name("fluxserve")
    assert exe.exists(), f"{exe} not found: install the project (pip install -e .)"
    return str(exe)


class ServeProcess:
    """One `fluxserve serve` in its own process group, logging to a file."""

    def __init__(self, root: Path, weights: Path) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.port = _free_port()
        self.config = root / "fluxserve.yaml"
        self.config.write_text(
            "\n".join(
                [
                    f"data_dir: {json.dumps(str(self.data_dir))}",
                    "host: 127.0.0.1",
                    f"port: {self.port}",
                    "log_level: info",
                    "model:",
                    "  device: cpu",
                    "limits:",
                    "  requests_per_minute: 0",
                    "  reads_per_minute: 0",
                    "  max_in_flight: 0",
                    "workers:",
                    "  shutdown_grace_s: 60",
                    "",
                ]
            )
        )
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXSERVE_")}
        self.env.update(
            FLUXSERVE_API_KEYS=KEY,
            FLUXSERVE_MODEL__WEIGHTS=str(weights),
            HF_HUB_OFFLINE="1",
            PYTHONUNBUFFERED="1",
        )
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.client = httpx.Client(
            base_url=f"http://127.0.0.1:{self.port}", headers={"X-API-Key": KEY}, timeout=30
        )

    @property
    def db_path(self) -> Path:
        return self.data_dir / "fluxserve.db"

    def log_tail(self, chars: int = 4000) -> str:
        text = "".join(p.read_text(errors="replace") for p in sorted(self.root.glob("serve-*.log")))
        return text[-chars:]

    def start(self) -> None:
        self.starts += 1
        log = open(self.root / f"serve-{self.starts}.log", "wb")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [_fluxserve(), "serve", "--config", str(self.config)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the API and its worker
        )
        log.close()

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, f"serve exited:\n{self.log_tail()}"
            try:
                if self.client.get("/health-check").json()["status"] == "READY":
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"serve not READY in {timeout} s:\n{self.log_tail()}")

    def create(self, inputs: dict) -> str:
        r = self.client.post(
            "/v1/prediction", json={"model": "flux-dev", "input": {"prompt": "a lighthouse", **inputs}}
        )
        assert r.status_code == 200, r.text
        return r.json()["predictionID"]

    def get(self, pid: str, wait: float = 0) -> dict:
        r = self.client.get(f"/v1/prediction/{pid}", params={"wait": wait} if wait else None)
        assert r.status_code == 200, r.text
        return r.json()

    def wait_running(self, pid: str, timeout: float = 60) -> dict:
        """Until the worker has done a denoising step of it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = self.get(pid)
            if body["status"] == "processing" and " steps (" in body["logs"]:
                return body
            assert body["status"] not in TERMINAL, body
            time.sleep(0.05)
        raise AssertionError(f"{pid} never ran:\n{self.log_tail()}")

    def wait_terminal(self, pids: list[str], timeout: float = 120) -> dict[str, dict]:
        deadline = time.monotonic() + timeout
        bodies = {}
        for pid in pids:
            while True:
                body = self.get(pid, wait=5)
                if body["status"] in TERMINAL:
                    bodies[pid] = body
                    break
                assert time.monotonic() < deadline, f"{pid} not terminal: {body}\n{self.log_tail()}"
        return bodies

    def kill_group(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, timeout: float = 90) -> int:
        """SIGTERM and wait for the exit; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._reap_group()

    def _reap_group(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything left behind in the group
        except ProcessLookupError:
            pass

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._reap_group()
        self.client.close()

    def rows(self) -> dict[str, sqlite3.Row]:
        with sqlite3.connect(self.db_path) as conn:
            conn.row_factory = sqlite3.Row
            return {row["id"]: row for row in conn.execute("SELECT * FROM predictions")}

    def integrity(self) -> str:
        with sqlite3.connect(self.db_path) as conn:
            return conn.execute("PRAGMA integrity_check").fetchone()[0]


@pytest.fixture
def serve(tmp_path: Path, tiny_model_dir: Path):
    proc = ServeProcess(tmp_path, tiny_model_dir)
    yield proc
    proc.close()


# -- SIGKILL ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def killed_serve(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    proc = ServeProcess(tmp_path_factory.mktemp("serve-killed"), tiny_model_dir)
    yield proc
    proc.close()


@pytest.fixture(scope="module")
def killed_mid_run(killed_serve: ServeProcess):
    """Five predictions, the first running, four queued, when the process group is SIGKILLed;
    then a fresh start that runs the queue out."""
    serve = killed_serve
    serve.start()
    serve.wait_ready()
    running = serve.create(SLOW)
    queued = [serve.create(FAST) for _ in range(4)]
    serve.wait_running(running)
    assert [serve.get(pid)["status"] for pid in queued] == ["starting"] * 4

    serve.kill_group()
    after_kill = {"integrity": serve.integrity(), "rows": serve.rows()}

    serve.start()
    serve.wait_ready()
    bodies = serve.wait_terminal([running, *queued])
    return running, queued, bodies, after_kill


def test_sigkill_leaves_a_sound_database(killed_mid_run):
    *_, after_kill = killed_mid_run

    assert after_kill["integrity"] == "ok"


def test_sigkill_leaves_the_running_one_processing_and_the_rest_queued(killed_mid_run):
    running, queued, _, after_kill = killed_mid_run

    assert after_kill["rows"][running]["status"] == "processing"
    assert [after_kill["rows"][pid]["status"] for pid in queued] == ["starting"] * 4


def test_after_restart_the_running_one_ends_in_worker_lost(killed_mid_run):
    running, _, bodies, _ = killed_mid_run
    body = bodies[running]

    assert body["status"] == "error"
    assert body["error"] == "worker lost"
    assert body["output"] is None
    assert body["completed_at"] is not None


def test_after_restart_the_queued_ones_succeed_in_order(killed_mid_run):
    _, queued, bodies, _ = killed_mid_run

    assert [bodies[pid]["status"] for pid in queued] == ["success"] * 4
    assert all(bodies[pid]["output"].endswith("/out-0.webp") for pid in queued)
    started = [bodies[pid]["started_at"] for pid in queued]
    assert started == sorted(started)  # FIFO


def test_after_restart_nothing_ran_twice(killed_mid_run, killed_serve):
    running, queued, bodies, _ = killed_mid_run
    rows = killed_serve.rows()

    for pid in [running, *queued]:
        assert rows[pid]["attempts"] == 1, pid
        assert bodies[pid]["logs"].count("Using seed:") == 1, bodies[pid]["logs"]
    assert bodies[running]["logs"].count("Worker lost") == 1
    assert not (killed_serve.data_dir / "outputs" / running).exists()


def test_after_restart_every_prediction_is_terminal_and_the_database_sound(killed_mid_run, killed_serve):
    running, queued, _, _ = killed_mid_run
    serve = killed_serve

    assert serve.stop() == 0
    rows = serve.rows()
    assert {pid: rows[pid]["status"] for pid in [running, *queued]} == {
        running: "error",
        **{pid: "success" for pid in queued},
    }
    assert serve.integrity() == "ok"


# -- SIGTERM ------------------------------------------------------------------------------------


@pytest.mark.heavy  # over ~15 s: the second pass (scripts/test.sh -m heavy)
def test_sigterm_finishes_the_running_one_refuses_creates_and_keeps_the_queue(serve: ServeProcess):
    serve.start()
    serve.wait_ready()
    running = serve.create({"megapixels": "1", "num_inference_steps": "20"})
    queued = [serve.create(FAST) for _ in range(2)]
    serve.wait_running(running)

    serve.proc.send_signal(signal.SIGTERM)  # the API process only, as `kill PID` or systemd would

    # The signal is handled asynchronously: a create racing it may still be accepted (and queued).
    refused = None
    deadline = time.monotonic() + 10
    while refused is None or refused.status_code != 503:
        refused = serve.client.post(
            "/v1/prediction", json={"model": "flux-dev", "input": {"prompt": "late", **FAST}}
        )
        assert refused.status_code in (200, 503), refused.text
        if refused.status_code == 200:
            queued.append(refused.json()["predictionID"])
        assert time.monotonic() < deadline, refused.text
        time.sleep(0.02)
    assert refused.json()["status"] == 503
    assert "shutting down" in refused.json()["error"]
    assert "retry-after" in refused.headers
    assert serve.client.get("/health-check").json()["status"] == "SHUTTING_DOWN"
    polled = serve.get(running)  # polls still answer while the running one finishes
    assert polled["status"] in ("processing", "success")

    assert serve.proc.wait(timeout=120) == 0  # it exits once the running one is done
    rows = serve.rows()
    assert rows[running]["status"] == "success"
    assert (serve.data_dir / "outputs" / running / "out-0.webp").is_file()
    assert [rows[pid]["status"] for pid in queued] == ["starting"] * len(queued)
    assert len(rows) == 1 + len(queued)  # the refused create made nothing
    assert serve.integrity() == "ok"

    serve.start()
    serve.wait_ready()
    bodies = serve.wait_terminal(queued)
    assert [bodies[pid]["status"] for pid in queued] == ["success"] * len(queued)
    assert serve.stop() == 0
