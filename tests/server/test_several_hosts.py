"""Several processes on one PostgreSQL store, for real: two API replicas (`serve --no-workers`)
and three worker hosts (`fluxserve worker`) on loopback, outputs in one shared local folder.

- 100 predictions created round-robin through both APIs each end once, in success, and every
  output is served by either API;
- a cancel through API A stops a job running on a worker host started apart;
- PostgreSQL restarting (`pg_ctl restart -m fast`) with jobs queued and running loses none, and
  every process carries on without a restart of its own; while it is down, creates and reads
  answer 503;
- a worker host killed with SIGKILL mid-job: its job is retried (max_attempts 2) once its lease
  expires, by another host's reaper; the rest complete.

The processes are started once for the module (loading the tiny model takes seconds each).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

from tests.server.helpers import FAST, FAST_MODEL, KEY_A, KEY_B, LiveServer
from tests.server.webhooks.test_webhooks import Receiver

pytestmark = pytest.mark.slow

LEASE_S = 4.0  # short, so a killed host's job is recovered within seconds
SLOW = {"megapixels": "1", "num_inference_steps": "40"}  # several seconds on CPU: still running when asked


@dataclass
class Cluster:
    dsn: str
    apis: list[LiveServer]
    workers: list[LiveServer]

    def rows(self, sql: str, *args: Any) -> list[tuple]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return conn.execute(sql, args).fetchall()

    def wait_hosts_ready(self, count: int, timeout: float = 120) -> dict[str, Any]:
        """Until API A's /health-check lists ``count`` live hosts with a ready worker."""
        deadline = time.monotonic() + timeout
        while True:
            body = self.apis[0].health()
            ready = [h for h in body.get("hosts", []) if any(w["state"] == "ready" for w in h["workers"])]
            if len(ready) >= count and body["status"] == "READY":
                return body
            if time.monotonic() > deadline:
                logs = "\n".join(w.log_tail(2000) for w in self.workers)
                raise AssertionError(f"{count} hosts not ready in {timeout} s: {body}\n{logs}")
            time.sleep(0.2)

    def host_running(self, prediction_id: str, timeout: float = 60) -> LiveServer:
        """The worker host whose worker runs the prediction (from its lease's worker id)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            [(status, worker_id)] = self.rows(
                "SELECT status, worker_id FROM predictions WHERE id = %s", prediction_id
            )
            if status == "processing" and worker_id:
                host_id = worker_id.split(":")[0]
                return next(w for w in self.workers if w.settings.workers.host_id == host_id)
            time.sleep(0.05)
        raise AssertionError(f"prediction {prediction_id} never ran")


@pytest.fixture(scope="module")
def cluster(
    postgres_server, tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> Iterator[Cluster]:
    dsn = postgres_server.new_database()
    root = tmp_path_factory.mktemp("several-hosts")
    common = {
        "store_url": dsn,
        "model": FAST_MODEL,
        "outputs": {"dir": str(root / "outputs")},  # one folder every host writes and serves
        "workers": {"lease_s": LEASE_S, "max_attempts": 2, "shutdown_grace_s": 5},
        "input_images": {"allowed_hosts": ["127.0.0.1"]},  # webhooks to the test's receiver
    }

    def server(name: str, role: str, **workers: Any) -> LiveServer:
        settings = {**common, "workers": {**common["workers"], **workers}}
        return LiveServer(root / name, tiny_model_dir, role=role, **settings)

    apis = [server("api-a", "api"), server("api-b", "api")]
    workers = [server(f"gpu-{i}", "worker", host_id=f"gpu-{i}") for i in range(3)]
    try:
        for process in apis + workers:
            process.launch()
        for api in apis:
            api.wait_started(None)
        built = Cluster(dsn, apis, workers)
        built.wait_hosts_ready(3)
        yield built
    finally:
        for process in apis + workers:
            process.terminate()
        for process in apis + workers:
            process.close()


def _fetch_output_through(api: LiveServer, url: str) -> bytes:
    r = api.http.get(urlsplit(url).path)
    assert r.status_code == 200, (url, r.status_code)
    return r.content


def test_api_replica_health_lists_the_worker_hosts(cluster: Cluster):
    # Each replica reads the heartbeats on its own: B may see the hosts a moment after A did.
    body = cluster.apis[1].wait_started("READY", timeout=15)
    assert sorted(h["host_id"] for h in body["hosts"]) == ["gpu-0", "gpu-1", "gpu-2"]
    # Each host serves the model and, from the same weights, its LoRA face.
    served = [body["model"], "black-forest-labs-flux-dev-lora"]
    assert all(h["models"] == served and h["seen_s_ago"] < 5 for h in body["hosts"])


def test_a_hundred_predictions_through_two_apis_each_end_once_and_are_served_by_both(cluster: Cluster):
    a, b = cluster.apis
    created = [(api, api.create(key)) for api, key in ((a, KEY_A), (b, KEY_B)) for _ in range(50)]
    ends = {pid: api.wait_for_end(KEY_A if api is a else KEY_B, pid, timeout=240) for api, pid in created}
    assert {body["status"] for body in ends.values()} == {"success"}
    ids = list(ends)
    # Ran once each (no attempt lost, none run twice), spread over the hosts.
    rows = cluster.rows("SELECT attempts, worker_id FROM predictions WHERE id = ANY(%s)", ids)
    assert len(rows) == 100 and {attempts for attempts, _ in rows} == {1}
    assert len({worker_id.split(":")[0] for _, worker_id in rows}) >= 2
    for body in list(ends.values())[::10]:
        urls = body["output"] if isinstance(body["output"], list) else [body["output"]]
        for url in urls:
            assert _fetch_output_through(a, url) == _fetch_output_through(b, url)


def test_each_end_s_webhook_is_queued_once_and_sent_once_whichever_replica_hears_it(cluster: Cluster):
    a, b = cluster.apis
    receiver = Receiver()
    try:
        made = [
            (api, key, api.create(key, webhook_url=receiver.url)) for api, key in ((a, KEY_A), (b, KEY_B))
        ]
        made += [
            (api, key, api.create(key, webhook_url=receiver.url)) for api, key in ((a, KEY_A), (b, KEY_B))
        ]
        for api, key, pid in made:
            assert api.wait_for_end(key, pid, timeout=120)["status"] == "success"
        receiver.wait_for(len(made), timeout=30)
        time.sleep(2)  # a second delivery, if any, would arrive meanwhile
        sent = sorted(json.loads(r["raw"])["exec_id"] for r in receiver.requests)
    finally:
        receiver.close()
    ids = sorted(pid for _, _, pid in made)
    assert sent == ids
    rows = cluster.rows(
        "SELECT prediction_id, state FROM webhook_deliveries WHERE prediction_id = ANY(%s)", ids
    )
    assert sorted(rows) == [(pid, "delivered") for pid in ids]


def test_replicate_start_events_come_from_the_worker_host_and_completed_once(cluster: Cluster):
    a = cluster.apis[0]
    receiver = Receiver()
    try:
        r = a.http.post(
            "/v1/predictions",
            json={
                "version": "black-forest-labs/flux-dev",
                "input": {"prompt": "a lighthouse at dawn", **FAST},
                "webhook": receiver.url,
                "webhook_events_filter": ["start", "completed"],
            },
            headers={"Authorization": f"Bearer {KEY_A}"},
        )
        assert r.status_code == 201, r.text
        pid = r.json()["id"]
        assert a.wait_for_end(KEY_A, pid, timeout=120)["status"] == "success"
        receiver.wait_for(2, timeout=30)
        time.sleep(1)  # a duplicate, if any, would arrive meanwhile
        statuses = [json.loads(req["raw"])["status"] for req in receiver.requests]
    finally:
        receiver.close()
    assert statuses == ["processing", "succeeded"]  # start (from the worker host), then completed


def test_a_cancel_through_one_api_stops_a_job_on_another_host(cluster: Cluster):
    a, b = cluster.apis
    pid = b.create(KEY_A, SLOW)
    cluster.host_running(pid)
    asked = time.monotonic()
    r = a.http.post(f"/v1/prediction/{pid}/cancel", headers=a.headers(KEY_A))
    assert r.status_code == 200, r.text
    body = a.wait_for_end(KEY_A, pid, timeout=30)
    assert body["status"] == "cancelled"
    assert time.monotonic() - asked < 3.0  # one denoising step, plus the hops between hosts


def _create_once_back(api: LiveServer, key: str, timeout: float = 60) -> str:
    """Create as a client would: 503 (with Retry-After) until the API's connection pool has
    reconnected (psycopg_pool's backoff grows with the outage), then 200. Nothing else."""
    deadline = time.monotonic() + timeout
    while True:
        r = api.post_create(key)
        if r.status_code == 200:
            return r.json()["predictionID"]
        assert r.status_code == 503 and r.headers["Retry-After"], r.text
        assert time.monotonic() < deadline, f"still 503 {timeout} s after the database came back"
        time.sleep(0.5)


@pytest.mark.heavy  # over ~15 s: the second pass (scripts/test.sh -m heavy)
def test_postgres_restarting_loses_nothing_and_every_process_recovers(cluster: Cluster, postgres_server):
    a, b = cluster.apis
    running = [a.create(KEY_A, {"num_inference_steps": "12"}) for _ in range(3)]
    queued = [b.create(KEY_B) for _ in range(6)]
    cluster.host_running(running[0])
    postgres_server.restart(mode="fast")
    for pid, api, key in [(p, a, KEY_A) for p in running] + [(p, b, KEY_B) for p in queued]:
        assert api.wait_for_end(key, pid, timeout=120)["status"] == "success"
    # Down: creates and reads answer 503 and say why; back up, both APIs take and run creates.
    postgres_server.stop()
    try:
        r = a.post_create(KEY_A)
        assert r.status_code == 503, r.text
        assert "database cannot be reached" in r.text and r.headers["Retry-After"]
        assert a.http.get(f"/v1/prediction/{running[0]}", headers=a.headers(KEY_A)).status_code == 503
    finally:
        postgres_server.start()
    after = [_create_once_back(api, key) for api, key in ((a, KEY_A), (b, KEY_B))]
    for pid, api, key in zip(after, (a, b), (KEY_A, KEY_B), strict=True):
        assert api.wait_for_end(key, pid, timeout=120)["status"] == "success"
    cluster.wait_hosts_ready(3)
    assert all(w.proc.poll() is None for w in cluster.workers + cluster.apis)


def test_a_killed_worker_host_s_job_is_retried_when_its_lease_expires(cluster: Cluster):
    a, b = cluster.apis
    victim_job = a.create(KEY_A, SLOW)
    victim = cluster.host_running(victim_job)
    others = [b.create(KEY_B) for _ in range(5)]
    victim.kill()
    killed = time.monotonic()
    body = a.wait_for_end(KEY_A, victim_job, timeout=120)
    assert body["status"] == "success"  # max_attempts 2: run again on another host
    [(attempts, worker_id)] = cluster.rows(
        "SELECT attempts, worker_id FROM predictions WHERE id = %s", victim_job
    )
    assert attempts == 2 and not worker_id.startswith(victim.settings.workers.host_id + ":")
    [(started,)] = cluster.rows("SELECT started_at FROM predictions WHERE id = %s", victim_job)
    assert started - (time.time() - (time.monotonic() - killed)) < LEASE_S + 3  # picked up within the lease
    assert {b.wait_for_end(KEY_B, pid, timeout=120)["status"] for pid in others} == {"success"}
    # The killed host drops out of the API's health within a few heartbeats.
    deadline = time.monotonic() + 15
    while victim.settings.workers.host_id in [h["host_id"] for h in a.health()["hosts"]]:
        assert time.monotonic() < deadline, a.health()
        time.sleep(0.2)


def test_a_worker_host_stopped_with_sigterm_exits_cleanly_and_leaves_the_health_answer(cluster: Cluster):
    a = cluster.apis[0]
    leaving = next(w for w in cluster.workers if w.proc.poll() is None)
    assert leaving.stop(timeout=30) == 0
    hosts = [h["host_id"] for h in a.health()["hosts"]]
    deadline = time.monotonic() + 3  # forgotten at its stop: seen by the API's next read (1 s)
    while leaving.settings.workers.host_id in hosts:
        assert time.monotonic() < deadline, hosts
        time.sleep(0.1)
        hosts = [h["host_id"] for h in a.health()["hosts"]]


def test_serve_runs_api_and_workers_in_one_process_on_postgres(
    postgres_server, tmp_path: Path, tiny_model_dir: Path
):
    with LiveServer(
        tmp_path / "one-box", tiny_model_dir, store_url=postgres_server.new_database(), model=FAST_MODEL
    ) as server:
        health = server.start()
        assert [w["state"] for w in health["workers"]] == ["ready"]
        assert server.run(KEY_A)["status"] == "success"
