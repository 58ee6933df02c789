"""A worker slot: one place for a worker process (one per GPU), its model, its state and the job
it runs.

The supervisor owns the slots (it starts, watches and replaces their processes); the job runner
(``jobs.py``) hands them jobs and records what they report.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

from pipelines.spec import ModelSpec
from server.predictions.model import Prediction
from server.workers.messages import WorkerReady

# Worker states, also the values of the fluxserve_workers metric's "state" label.
W_STARTING, W_READY, W_BUSY, W_FAILED, W_STOPPED = "starting", "ready", "busy", "failed", "stopped"
WORKER_STATES = (W_STARTING, W_READY, W_BUSY, W_FAILED, W_STOPPED)


def default_host_id() -> str:
    """This worker host's id in worker ids and leases: the machine's host name, the same after a
    restart (a host starting again settles its own previous run's jobs at once)."""
    return socket.gethostname()


@dataclass
class WorkerSlot:
    index: int
    gpu: str | None  # a CUDA_VISIBLE_DEVICES entry, or None to leave it alone
    state: str = W_STARTING
    process: Any = None  # multiprocessing.Process
    conn: Any = None
    generation: int = 0
    job: Prediction | None = None  # as claimed: its lease is job.lease
    job_started: float = 0.0
    started_at: float = 0.0
    timed_out: bool = False
    stopping: bool = False
    load_crashes: int = 0
    setup_error: str | None = None
    warming: str | None = None  # loaded, warming up: what it is doing (health's STARTING reason)
    ready: WorkerReady | None = None
    inbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    reader: threading.Thread | None = None  # forwards the pipe to ``inbox``; ends at the worker's exit
    host_id: str = field(default_factory=default_host_id)
    spec: ModelSpec | None = None  # the model its worker loads (None: any queued job, in tests)

    @property
    def models(self) -> list[str] | None:
        """The slugs of the jobs it takes (its model's faces); None: every job."""
        return self.spec.slugs if self.spec is not None else None

    @property
    def worker_id(self) -> str:
        """``<host id>:<pid>:w<slot>.<generation>``: unique per process incarnation, and tells
        which host holds a lease (``PredictionStore.recover_expired(host_id=...)``)."""
        return f"{self.host_id}:{os.getpid()}:w{self.index}.{self.generation}"
