"""``workers.nice``: the worker process runs at a lower CPU priority than the API, and still serves."""

from __future__ import annotations

import os

from tests.server.helpers import STATIC_KEYS


def test_workers_run_at_the_configured_nice_value(make_server):
    with make_server(workers={"nice": 7}) as server:
        worker = server.state.supervisor.slots[0].process
        assert os.getpriority(os.PRIO_PROCESS, worker.pid) == os.getpriority(os.PRIO_PROCESS, 0) + 7
        key = STATIC_KEYS[0]
        final = server.run(key, {"prompt": "a niced worker", "num_inference_steps": 2})
        assert final["status"] == "success"
