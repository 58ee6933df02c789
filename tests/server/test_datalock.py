"""One server per database and per data folder: a second one stops at the lock, with one line,
instead of settling the first server's running prediction as "worker lost" and running its
queue."""

from __future__ import annotations

import os
import subprocess

import pytest

from server.datalock import DatabaseBusy, DatabaseLock, DataDirBusy, DataDirLock, OutputsBusy, ServerLock
from tests.server.helpers import FLUXSERVE, LiveServer, free_port

SLOW = {"prompt": "slow", "num_inference_steps": "50", "megapixels": "1"}


def serve_once(config: os.PathLike[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`fluxserve serve` expected to stop by itself; its stdout and stderr together."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLUXSERVE_")}
    return subprocess.run(
        [FLUXSERVE, "serve", "--config", str(config), "--port", str(free_port())],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**clean, "HF_HUB_OFFLINE": "1", **(env or {})},
        timeout=120,
    )


def test_a_second_lock_on_the_same_folder_is_refused_naming_the_holder(tmp_path):
    first = DataDirLock(tmp_path)
    first.acquire()
    try:
        with pytest.raises(DataDirBusy, match=r"another fluxserve server \(pid \d+\)"):
            DataDirLock(tmp_path).acquire()
    finally:
        first.release()
    again = DataDirLock(tmp_path)
    again.acquire()  # released: free again
    again.release()


def test_the_database_lock_holds_for_every_path_to_the_same_file(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    first = DatabaseLock(tmp_path / "real" / "fluxserve.db")
    first.acquire()
    try:
        with pytest.raises(DatabaseBusy, match=r"is using the database .*/real/fluxserve.db"):
            DatabaseLock(tmp_path / "link" / "fluxserve.db").acquire()
    finally:
        first.release()


def test_a_second_server_lock_on_the_same_outputs_folder_is_refused_whatever_its_data_folder(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "images")
    first = ServerLock(tmp_path / "a", tmp_path / "a" / "fluxserve.db", tmp_path / "images")
    first.acquire()
    try:
        second = ServerLock(tmp_path / "b", tmp_path / "b" / "fluxserve.db", tmp_path / "link")
        with pytest.raises(OutputsBusy, match=r"is using the outputs folder .*/images; stop it, or give"):
            second.acquire()
        assert not any(lock.held for lock in second.locks)  # nothing of it kept
    finally:
        first.release()


def test_an_outputs_folder_that_is_the_data_folder_takes_no_second_lock(tmp_path):
    lock = ServerLock(tmp_path, tmp_path / "fluxserve.db", tmp_path)
    lock.acquire()
    lock.release()


@pytest.mark.heavy  # over ~15 s: the second pass (scripts/test.sh -m heavy)
def test_second_server_on_the_same_data_folder_exits_and_leaves_the_running_job_alone(
    tmp_path, tiny_model_dir
):
    with LiveServer(tmp_path / "data", tiny_model_dir) as first:
        first.start()
        slow = {"prompt": "slow", "num_inference_steps": "50", "megapixels": "1"}
        created = first.http.post(
            "/v1/prediction", json={"model": "flux-dev", "input": slow}, headers=first.headers("key-alpha")
        )
        pid = created.json()["predictionID"]

        intruder = serve_once(first.config_path)

        assert intruder.returncode == 1
        assert intruder.stdout.startswith("error: another fluxserve server (pid ")
        assert "is using the data folder" in intruder.stdout
        assert intruder.stdout.count("\n") == 1, intruder.stdout  # one line, no traceback
        body = first.http.get(f"/v1/prediction/{pid}?wait=60", headers=first.headers("key-alpha")).json()
        assert body["status"] == "success", body["error"]


@pytest.mark.heavy  # over ~15 s: the second pass (scripts/test.sh -m heavy)
def test_second_server_with_its_own_data_folder_on_the_same_database_exits_and_leaves_the_first_alone(
    tmp_path, tiny_model_dir
):
    with LiveServer(tmp_path / "first", tiny_model_dir) as first:
        first.start()
        running = first.create("key-alpha", SLOW)
        queued = first.create("key-alpha")
        first.wait_until("key-alpha", running, lambda body: body["status"] == "processing")
        second = LiveServer(tmp_path / "second", tiny_model_dir)

        intruder = serve_once(second.config_path, {"FLUXSERVE_STORE_URL": f"sqlite:///{first.db_path}"})

        assert intruder.returncode == 1
        assert intruder.stdout.count("\n") == 1, intruder.stdout
        assert f"is using the database {first.db_path}" in intruder.stdout
        for pid in (running, queued):
            body = first.wait_for_end("key-alpha", pid)
            assert body["status"] == "success", body["error"]
            outputs = body["output"] if isinstance(body["output"], list) else [body["output"]]
            assert first.http.get(first.output_path(outputs[0])).status_code == 200
        assert not (second.data_dir / "outputs").exists()


def test_second_server_with_its_own_data_folder_and_database_on_the_same_outputs_folder_exits(
    tmp_path, tiny_model_dir
):
    shared = tmp_path / "images"
    settings = {"workers": {"count": 0}, "outputs": {"dir": str(shared)}}
    with LiveServer(tmp_path / "first", tiny_model_dir, **settings) as first:
        first.start(wait="STARTING")
        second = LiveServer(tmp_path / "second", tiny_model_dir, **settings)

        intruder = serve_once(second.config_path)

        assert intruder.returncode == 1
        assert intruder.stdout.count("\n") == 1, intruder.stdout
        assert intruder.stdout.startswith("error: another fluxserve server (pid ")
        assert f"is using the outputs folder {shared}" in intruder.stdout
        assert "store_warning" not in first.health()
