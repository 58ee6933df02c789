"""One server per data folder: a second one stops at the lock instead of settling the first
server's running prediction as "worker lost"."""

from __future__ import annotations

import pytest

from server.datalock import DataDirBusy, DataDirLock
from tests.server.live import LiveServer


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


def test_second_server_on_the_same_data_folder_exits_and_leaves_the_running_job_alone(tmp_path, tiny_model_dir):
    with LiveServer(tmp_path / "data", tiny_model_dir) as first:
        first.start()
        slow = {"prompt": "slow", "num_inference_steps": "50", "megapixels": "1"}
        created = first.http.post("/v1/prediction", json={"model": "flux-dev", "input": slow}, headers=first.headers("key-alpha"))
        pid = created.json()["predictionID"]
        intruder = LiveServer(tmp_path / "data", tiny_model_dir)
        intruder.launch()
        assert intruder.proc.wait(timeout=60) != 0
        assert "is using the data folder" in intruder.log_text()
        body = first.http.get(f"/v1/prediction/{pid}?wait=60", headers=first.headers("key-alpha")).json()
        assert body["status"] == "success", body["error"]
