"""The supervisor and its job runner driven directly: a real SQLite store and output folder, a
stand-in for the worker process and its pipe (FakeProcess, FakePipe in test_supervisor_races.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import Settings
from server.outputs.local import LocalOutputStorage
from server.store.sqlite.store import SQLitePredictionStore
from server.workers.supervisor import Supervisor, WorkerSlot


@pytest.fixture
def parts(tmp_path: Path):
    settings = Settings(data_dir=str(tmp_path / "data"), workers={"job_timeout_s": 5, "load_timeout_s": 5})
    store = SQLitePredictionStore(tmp_path / "data" / "fluxserve.db")
    supervisor = Supervisor(
        settings, store, LocalOutputStorage(tmp_path / "outputs"), notify=lambda _pid: None
    )
    from tests.server.workers.test_supervisor_races import FakePipe, FakeProcess

    slot = WorkerSlot(index=0, gpu=None, generation=1)
    slot.process, slot.conn = FakeProcess(), FakePipe()
    supervisor.slots.append(slot)
    yield supervisor, store, slot
    store.close()
