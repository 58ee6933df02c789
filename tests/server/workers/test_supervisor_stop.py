"""Stopping the app with a prediction running: the worker is stopped and the prediction is settled
before the app's shutdown returns (not left ``processing`` for the next start to find)."""

from __future__ import annotations

import sqlite3

from tests.server.helpers import STATIC_KEYS


def test_stop_settles_the_running_prediction_before_returning(make_server, monkeypatch):
    monkeypatch.setenv("FLUXSERVE_FAULT_INJECTION", "1")  # read when the worker is configured
    key = STATIC_KEYS[0]
    with make_server(workers={"shutdown_grace_s": 0.5}) as server:
        worker = server.state.supervisor.slots[0].process
        hung = server.create(key, {"prompt": "a lighthouse [[fault:hang]]"})
        server.wait_until(key, hung, lambda body: body["status"] == "processing")
        queued = server.create(key)
        db_path = server.settings.db_path
    # The app has shut down: its worker is gone and the store closed.
    assert not worker.is_alive()
    with sqlite3.connect(db_path) as db:
        rows = dict(db.execute("SELECT id, status FROM predictions WHERE id IN (?, ?)", (hung, queued)))
        error = db.execute("SELECT error FROM predictions WHERE id = ?", (hung,)).fetchone()[0]
    assert rows == {hung: "error", queued: "starting"}
    assert error == "worker lost"
