"""Faults really caused in a real `fluxserve serve` subprocess, checked as a client sees them.

Each fault happens for real: the API process group is SIGKILLed, the worker process is
SIGKILLed, a denoising step never returns, CUDA/host out-of-memory is raised inside the worker
(``FLUXSERVE_FAULT_INJECTION=1`` and a ``[[fault:...]]`` marker in the prompt, see
``server/workers/process.py``), the model folder is missing or not a FLUX pipeline, the outputs
folder cannot be written, the database's disk fills while a job runs. After each one the server must
still answer, the prediction must end in ``error`` with a message that says what happened, and the
next prediction must succeed.

test_restart.py covers the plain SIGKILL restart (max_attempts 1) and a SIGTERM whose running job
finishes in time; this module adds max_attempts 2, the exactly-once accounting and a SIGTERM
whose job outlives the grace period.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.server.helpers import FAST_MODEL, KEY_A, QUICK, HealthWatch, LiveServer, pid_alive

pytestmark = pytest.mark.slow

FAULTS = {"FLUXSERVE_FAULT_INJECTION": "1"}
HANG = {**QUICK, "prompt": "a lighthouse [[fault:hang]]"}


@pytest.fixture(scope="module")
def faulty(tmp_path_factory, tiny_model_dir):
    """One server for the faults that leave it running: fault injection on, a 3 s job timeout,
    outputs in ``<tmp>/store/outputs`` (so the storage tests can break and restore the folder)."""
    root = tmp_path_factory.mktemp("faulty")
    srv = LiveServer(
        root / "data",
        tiny_model_dir,
        env=FAULTS,
        model=FAST_MODEL,
        workers={"job_timeout_s": 3},
        outputs={"dir": str(root / "store" / "outputs")},
    )
    srv.outputs_root = root / "store" / "outputs"
    with srv:
        srv.start()
        yield srv


def _wait_new_worker(srv: LiveServer, old: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while True:
        pids = srv.worker_pids()
        if len(pids) == 1 and pids[0] != old:
            srv.wait_health("READY", timeout=max(1.0, deadline - time.monotonic()))
            return pids[0]
        assert time.monotonic() < deadline, (
            f"no new worker after {timeout} s (workers: {pids})\n{srv.log_tail()}"
        )
        time.sleep(0.05)


def _group_gone(pgid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def _running(body: dict) -> bool:
    """A worker has started the job (the hang happens right after this line, at step 1)."""
    return body["status"] == "processing" and "img2img from a 64x64 image" in body["logs"]


# -- the worker dies, hangs or runs out of memory -----------------------------------------------


def test_worker_killed_mid_job_ends_that_job_in_worker_lost_and_a_new_worker_serves(faulty):
    worker = faulty.worker_pid()
    with HealthWatch(faulty) as watch:
        pid = faulty.create(KEY_A, HANG)
        faulty.wait_until(KEY_A, pid, _running, timeout=30)
        os.kill(worker, signal.SIGKILL)
        body = faulty.wait_for_end(KEY_A, pid, timeout=30)
        new_worker = _wait_new_worker(faulty, worker)
        after = faulty.run(KEY_A, QUICK)

    assert body["status"] == "error"
    assert body["error"] == "worker lost"
    assert "exit code -9" in body["logs"]
    assert body["output"] is None
    assert new_worker != worker and not pid_alive(worker)
    assert after["status"] == "success"
    assert watch.failures == [] and watch.answered > 10  # /health-check answered throughout


def test_hung_step_times_out_after_3_s_and_the_worker_is_replaced(faulty):
    worker = faulty.worker_pid()
    pid = faulty.create(KEY_A, HANG)
    body = faulty.wait_for_end(KEY_A, pid, timeout=60)

    assert body["status"] == "error"
    assert body["error"] == "timed out after 3 s"
    assert "Timed out after 3 s: the worker was stopped and replaced." in body["logs"]
    row = (
        faulty.db()
        .execute("SELECT started_at, completed_at FROM predictions WHERE id = ?", (pid,))
        .fetchone()
    )
    assert row["completed_at"] - row["started_at"] >= 3
    new_worker = _wait_new_worker(faulty, worker)
    assert not pid_alive(worker)
    assert faulty.run(KEY_A, QUICK)["status"] == "success"
    assert faulty.worker_pid() == new_worker


@pytest.mark.parametrize(
    ("fault", "where"), [("[[fault:oom]]", "Out of GPU memory"), ("[[fault:host-oom]]", "Out of host memory")]
)
def test_out_of_memory_ends_in_error_with_advice_and_the_same_worker_keeps_serving(faulty, fault, where):
    worker = faulty.worker_pid()
    body = faulty.wait_for_end(KEY_A, faulty.create(KEY_A, {**QUICK, "prompt": f"a lighthouse {fault}"}))

    assert body["status"] == "error"
    assert body["error"].startswith(f"{where} generating 1 image(s) at 64x64."), body["error"]
    assert "Try a smaller size (megapixels 0.25), fewer outputs" in body["error"]
    assert "offload" in body["error"]
    assert faulty.run(KEY_A, QUICK)["status"] == "success"
    assert faulty.worker_pids() == [worker]  # not restarted: OOM is recoverable in-process


def test_a_failure_before_generation_ends_the_job_and_the_same_worker_keeps_serving(faulty):
    worker = faulty.worker_pid()
    body = faulty.wait_for_end(
        KEY_A, faulty.create(KEY_A, {**QUICK, "prompt": "a lighthouse [[fault:prepare]]"})
    )

    assert body["status"] == "error"
    assert body["error"] == "Prediction failed: RuntimeError: injected failure while preparing the job"
    assert faulty.run(KEY_A, QUICK)["status"] == "success"
    assert faulty.worker_pids() == [worker]


def test_a_cuda_error_ends_the_job_and_the_worker_is_replaced_before_the_next_job(faulty):
    worker = faulty.worker_pid()
    failed = faulty.create(KEY_A, {**QUICK, "prompt": "a lighthouse [[fault:cuda-error]]"})
    queued_behind = faulty.create(KEY_A, QUICK)  # must wait for the new worker, not go to the dying one
    body = faulty.wait_for_end(KEY_A, failed)
    after = faulty.wait_for_end(KEY_A, queued_behind, timeout=120)

    assert body["status"] == "error"
    assert body["error"].startswith("GPU error, worker restarting: CUDA error: an illegal memory access")
    assert after["status"] == "success", after
    assert "worker lost" not in after["logs"].lower()
    assert _wait_new_worker(faulty, worker) != worker
    assert not pid_alive(worker)


# -- storage --------------------------------------------------------------------------------------


def _assert_nothing_stored(faulty: LiveServer, pid: str) -> None:
    for name in ("out-0.webp", "out-0.png", "out-0.jpg"):
        assert faulty.http.get(f"/v1/outputs/{pid}/{name}", headers={"X-API-Key": KEY_A}).status_code == 404
    leftovers = [p for p in faulty.outputs_root.parent.rglob("*") if pid in p.name]
    assert leftovers == []


def test_outputs_folder_that_cannot_be_created_ends_the_job_in_error_and_later_jobs_succeed(faulty):
    # Root ignores permission bits, so make the folder impossible instead: its parent becomes a
    # regular file (ENOTDIR for root too).
    store = faulty.outputs_root.parent
    worker = faulty.worker_pid()
    moved = store.with_name("store.moved")
    store.rename(moved)
    store.write_text("a file where the outputs folder's parent should be")
    try:
        pid = faulty.create(KEY_A, QUICK)
        body = faulty.wait_for_end(KEY_A, pid)
        health = faulty.health()
    finally:
        store.unlink()
        moved.rename(store)

    assert body["status"] == "error"
    assert body["error"] == "could not store the images: Not a directory"
    assert body["output"] is None
    assert health["status"] == "READY"
    _assert_nothing_stored(faulty, pid)
    after = faulty.run(KEY_A, QUICK)
    assert faulty.http.get(faulty.output_path(after["output"])).status_code == 200
    assert faulty.worker_pids() == [worker]


def _mount_tmpfs(target: Path, size: str) -> None:
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "fluxserve-test-full", str(target)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")


def _fill(folder: Path) -> Path:
    """Write a file until the disk is full; delete it to free the space."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass  # ENOSPC: full
    return filler


@pytest.fixture
def full_disk(faulty):
    """A 256 KiB tmpfs mounted on the outputs folder and filled up (skipped where mounting is not
    permitted). Yields the filler file: delete it to free the space."""
    target = faulty.outputs_root
    target.mkdir(parents=True, exist_ok=True)
    _mount_tmpfs(target, "256k")
    try:
        yield _fill(target)
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


def test_full_disk_ends_the_job_in_error_with_no_partial_file_and_later_jobs_succeed(faulty, full_disk):
    pid = faulty.create(KEY_A, QUICK)
    body = faulty.wait_for_end(KEY_A, pid)

    assert body["status"] == "error"
    assert body["error"] == "could not store the images: No space left on device"
    assert sorted(p.name for p in full_disk.parent.iterdir()) == ["filler"]  # the staging folder is gone
    _assert_nothing_stored(faulty, pid)
    full_disk.unlink()
    after = faulty.run(KEY_A, QUICK)
    assert faulty.http.get(faulty.output_path(after["output"])).status_code == 200


@pytest.fixture
def db_on_small_disk(tmp_path, tiny_model_dir):
    """A server whose SQLite database (and nothing else) lives on a 2 MiB tmpfs (skipped where
    mounting is not permitted). Yields the server and the tmpfs folder."""
    db_dir = tmp_path / "db"
    db_dir.mkdir()
    _mount_tmpfs(db_dir, "2m")
    try:
        with LiveServer(
            tmp_path / "data",
            tiny_model_dir,
            env=FAULTS,
            model=FAST_MODEL,
            store_url=f"sqlite:///{db_dir / 'fluxserve.db'}",
        ) as srv:
            srv.start()
            yield srv, db_dir
    finally:
        subprocess.run(["umount", "-l", str(db_dir)], check=False)


def test_a_result_finished_while_the_database_disk_is_full_is_recorded_once_space_is_freed(db_on_small_disk):
    srv, db_dir = db_on_small_disk
    slow = srv.create(KEY_A, {**QUICK, "prompt": "a lighthouse [[fault:slow]]"})  # step 1 takes 3 s
    queued = [srv.create(KEY_A, QUICK) for _ in range(2)]
    srv.wait_until(KEY_A, slow, _running, timeout=60)
    filler = _fill(db_dir)
    health = srv.wait_health("UNHEALTHY", timeout=30)
    refused = srv.post_create(KEY_A, QUICK)
    time.sleep(4)  # the result is back and refused; dispatch and the retries keep failing
    during = srv.get(KEY_A, slow)
    filler.unlink()
    body = srv.wait_for_end(KEY_A, slow, timeout=60)
    after = [srv.wait_for_end(KEY_A, pid)["status"] for pid in queued]
    healthy = srv.wait_health("READY", timeout=30)
    log = srv.log_text()

    assert health["reason"] == "the prediction store is failing: database or disk is full"
    assert health["store"]["error"] == "database or disk is full"
    assert refused.status_code == 500  # the contract's "Failed to create prediction"
    assert during["status"] == "processing"
    assert body["status"] == "success", body
    assert srv.http.get(srv.output_path(body["output"])).status_code == 200  # the images were kept
    assert after == ["success", "success"]
    assert healthy["store"] == {"status": "ok"}
    assert log.count("store failing: database or disk is full") == 1
    assert log.count("store recovered") == 1
    assert "dispatch failed" not in log and "Traceback" not in log


# -- the model cannot be loaded ---------------------------------------------------------------------


def _not_flux(root: Path, tiny: Path) -> Path:
    folder = root / "stable-diffusion"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return folder


def _no_index(root: Path, tiny: Path) -> Path:
    folder = root / "photos"
    folder.mkdir()
    (folder / "cat.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return folder


def _truncated_weights(root: Path, tiny: Path) -> Path:
    folder = root / "half-downloaded"
    shutil.copytree(tiny, folder)
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    return folder


BAD_MODELS = {
    "missing folder": (lambda root, tiny: root / "no-such-folder", "weights folder {w} does not exist"),
    "not a FLUX pipeline": (
        _not_flux,
        "{w} is not a FLUX pipeline: model_index.json names 'StableDiffusionPipeline'",
    ),
    "no model_index.json": (_no_index, "{w} is not a diffusers pipeline folder: model_index.json is missing"),
    "truncated weights": (_truncated_weights, "could not load the FLUX pipeline from {w}: "),
}


@pytest.fixture(scope="module")
def bad_model_servers(tmp_path_factory, tiny_model_dir):
    """One server per broken model, started side by side; each waits for SETUP_FAILED."""
    root = tmp_path_factory.mktemp("bad-models")
    servers = {}
    try:
        for i, (case, (make, _)) in enumerate(BAD_MODELS.items()):
            folder = root / f"case-{i}"
            folder.mkdir()
            weights = make(folder, tiny_model_dir)
            srv = LiveServer(folder / "data", weights, model=FAST_MODEL)
            srv.weights_path = weights
            srv.launch()
            servers[case] = srv
        for srv in servers.values():
            srv.first_health = srv.wait_started("SETUP_FAILED", timeout=120)
        yield servers
    finally:
        for srv in servers.values():
            srv.terminate()
        for srv in servers.values():
            srv.close()


@pytest.mark.parametrize("case", list(BAD_MODELS))
def test_model_that_fails_to_load_keeps_the_server_up_with_setup_failed_and_503(bad_model_servers, case):
    srv = bad_model_servers[case]
    reason = BAD_MODELS[case][1].format(w=srv.weights_path)
    health = srv.first_health

    r = srv.post_create(KEY_A, QUICK)
    run = srv.http.post(
        "/v1/prediction/run", json={"model": "flux-dev", "input": QUICK}, headers={"X-API-Key": KEY_A}
    )
    listing = srv.http.get("/v1/executions", headers={"X-API-Key": KEY_A})

    assert health["reason"].startswith(reason), health
    assert health["workers"][0]["state"] == "failed"
    assert r.status_code == 503
    assert r.json() == {
        "error": "Model failed to load; not accepting predictions",
        "status": 503,
        "details": health["reason"],
    }
    assert run.status_code == 503
    assert listing.status_code == 200 and listing.json()["total"] == 0  # nothing was queued
    assert srv.health()["status"] == "SETUP_FAILED"
    assert srv.proc.poll() is None  # the API process stays up, saying why
    _assert_no_worker_is_restarted(srv)


def _assert_no_worker_is_restarted(srv: LiveServer) -> None:
    """The failed worker exits (torch's teardown may take a moment) and no new one is spawned."""
    deadline = time.monotonic() + 30
    while srv.worker_pids():
        assert time.monotonic() < deadline, f"worker still there: {srv.worker_pids()}"
        time.sleep(0.1)
    time.sleep(1.0)
    assert srv.worker_pids() == []


# -- the API process is killed, or stopped with a job that will not end ---------------------------


def _snapshot(srv: LiveServer, ids: list[str]) -> dict[str, tuple]:
    conn = srv.db()
    try:
        rows = conn.execute(
            "SELECT id, status, error, output, completed_at, attempts FROM predictions "
            f"WHERE id IN ({','.join('?' * len(ids))})",
            ids,
        ).fetchall()
    finally:
        conn.close()
    return {r["id"]: tuple(r) for r in rows}


@pytest.mark.heavy  # over ~15 s: the second pass (scripts/test.sh -m heavy)
def test_api_process_killed_with_max_attempts_2_the_running_job_is_retried_once_and_every_id_ends_once(
    tmp_path, tiny_model_dir
):
    """test_restart.py covers max_attempts 1 (the running one ends in "worker lost")."""
    workers = {"job_timeout_s": 60, "max_attempts": 2}
    srv = LiveServer(tmp_path / "data", tiny_model_dir, env=dict(FAULTS), model=FAST_MODEL, workers=workers)
    with srv:
        srv.start()
        failed = srv.create(KEY_A, {**QUICK, "prompt": "a lighthouse [[fault:oom]]"})
        done = srv.create(KEY_A, QUICK)
        assert srv.wait_for_end(KEY_A, failed)["status"] == "error"
        assert srv.wait_for_end(KEY_A, done)["status"] == "success"
        running = srv.create(KEY_A, HANG)
        srv.wait_until(KEY_A, running, _running, timeout=30)
        queued = [srv.create(KEY_A, QUICK) for _ in range(3)]
        accepted = [failed, done, running, *queued]
        before_kill = _snapshot(srv, [failed, done])

        srv.kill()  # SIGKILL to the API process and its worker

        assert srv.integrity_check() == "ok"
        at_kill = _snapshot(srv, accepted)
        assert [at_kill[p][1] for p in (running, *queued)] == [
            "processing",
            "starting",
            "starting",
            "starting",
        ]
        # The restart leaves fault injection off: the second attempt of the running one does not hang.
        srv.env_overrides.pop("FLUXSERVE_FAULT_INJECTION")
        srv.start()
        retried = srv.wait_for_end(KEY_A, running)
        assert [srv.wait_for_end(KEY_A, q)["status"] for q in queued] == ["success"] * 3
        listing = srv.http.get("/v1/executions", params={"limit": 100}, headers={"X-API-Key": KEY_A}).json()
        before_stop = _snapshot(srv, accepted)
        assert srv.stop() == 0

    assert retried["status"] == "success", retried
    assert retried["logs"].count("Requeued after the worker was lost (attempt 1).") == 1
    assert retried["logs"].count("Generated 1 image(s)") == 1
    # Every accepted id is there once and ended once; what ended before the kill was left alone,
    # and a clean stop changed nothing.
    assert sorted(e["id"] for e in listing["executions"]) == sorted(accepted)
    after_stop = _snapshot(srv, accepted)
    assert after_stop == before_stop
    assert {p: after_stop[p] for p in (failed, done)} == before_kill
    assert {p: row[1] for p, row in after_stop.items()} == {
        p: ("error" if p == failed else "success") for p in accepted
    }
    assert {p: row[5] for p, row in after_stop.items()} == {p: (2 if p == running else 1) for p in accepted}
    outputs = srv.data_dir / "outputs"
    for p in accepted:
        expected = [] if p == failed else ["out-0.webp"]
        assert json.loads(after_stop[p][3]) == expected
        assert sorted(f.name for f in (outputs / p).glob("*")) == expected
    staging = [f.name for f in outputs.iterdir() if f.name.startswith(".") and f.name != ".fluxserve.lock"]
    assert staging == []  # no staging leftovers (the lock file stays: it is the server's)
    assert srv.integrity_check() == "ok"


GRACE_S = 3


@pytest.fixture(scope="module")
def retrying(tmp_path_factory, tiny_model_dir):
    """max_attempts 2, fault injection on, a 3 s shutdown grace period. The SIGTERM test stops it:
    it comes last in this module."""
    workers = {"max_attempts": 2, "shutdown_grace_s": GRACE_S}
    with LiveServer(
        tmp_path_factory.mktemp("retrying") / "data",
        tiny_model_dir,
        env=FAULTS,
        model=FAST_MODEL,
        workers=workers,
    ) as srv:
        srv.start()
        yield srv


def test_a_job_that_kills_every_worker_is_retried_once_then_ends_in_worker_lost(retrying):
    """max_attempts 2 with the API up: the supervisor requeues the lost job once, not forever."""
    poison = retrying.create(KEY_A, {**QUICK, "prompt": "a lighthouse [[fault:crash]]"})
    behind = retrying.create(KEY_A, QUICK)
    body = retrying.wait_for_end(KEY_A, poison, timeout=180)
    after = retrying.wait_for_end(KEY_A, behind, timeout=120)

    assert body["status"] == "error" and body["error"] == "worker lost"
    assert "requeued for attempt 2" in body["logs"]
    assert body["logs"].count("Worker lost") == 2
    assert _snapshot(retrying, [poison])[poison][5] == 2  # attempts
    assert after["status"] == "success"


def test_sigterm_with_a_job_that_outlives_the_grace_period_exits_after_one_grace_period(retrying):
    """test_restart.py covers a running job that finishes within the grace period."""
    srv = retrying
    srv.wait_health("READY")
    stuck = srv.create(KEY_A, HANG)
    srv.wait_until(KEY_A, stuck, _running, timeout=30)
    queued = srv.create(KEY_A, QUICK)

    started = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    code = srv.proc.wait(60)
    took = time.monotonic() - started

    assert code == 0
    assert GRACE_S <= took < 2 * GRACE_S  # one grace period, not one per shutdown step
    assert _group_gone(srv.pid, within=5)  # the hung worker was killed, nothing is left behind
    rows = _snapshot(srv, [stuck, queued])
    # Cut off by the shutdown with attempts left (max_attempts 2): requeued for the next start,
    # not left "processing"; the queued one stays queued.
    assert rows[stuck][1] == "starting" and rows[stuck][5] == 1
    assert (
        "requeued for attempt 2"
        in srv.db().execute("SELECT logs FROM predictions WHERE id = ?", (stuck,)).fetchone()[0]
    )
    assert rows[queued][1] == "starting"
    assert srv.integrity_check() == "ok"
