"""What the PostgreSQL store must hold when several processes share it: each backend here has its
own connection pool, as each API replica and worker host would."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from server.predictions.model import InFlightLimitExceeded, Prediction
from server.store import open_backend


def pred(owner: str = "key-a") -> Prediction:
    pid = str(uuid.uuid4())
    return Prediction(id=pid, owner=owner, model="flux-dev", input={"prompt": pid})


@pytest.fixture
def replicas(postgres_server):
    """Four backends on one fresh database."""
    url = postgres_server.new_database()
    backends = [open_backend(url) for _ in range(4)]
    yield backends
    for backend in backends:
        backend.close()


def test_the_in_flight_limit_holds_across_replicas_creating_at_once(replicas):
    start = threading.Barrier(len(replicas) * 5)

    def create(n: int) -> bool:
        store = replicas[n % len(replicas)].predictions
        start.wait()
        try:
            store.create(pred(), max_in_flight=3)
            return True
        except InFlightLimitExceeded:
            return False

    with ThreadPoolExecutor(len(replicas) * 5) as pool:
        accepted = sum(pool.map(create, range(len(replicas) * 5)))
    assert accepted == 3
    assert replicas[0].predictions.in_flight("key-a") == 3


def test_hosts_claiming_at_once_never_take_the_same_job(replicas):
    for _ in range(40):
        replicas[0].predictions.create(pred(owner=f"key-{uuid.uuid4().hex[:4]}"))
    start = threading.Barrier(len(replicas))

    def drain(n: int) -> list[str]:
        store, taken = replicas[n].predictions, []
        start.wait()
        while (job := store.claim_next(f"host-{n}:1:w0.0")) is not None:
            taken.append(job.id)
        return taken

    with ThreadPoolExecutor(len(replicas)) as pool:
        taken = [pid for ids in pool.map(drain, range(len(replicas))) for pid in ids]
    assert len(taken) == 40 and len(set(taken)) == 40
