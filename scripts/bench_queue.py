#!/usr/bin/env python
"""Benchmark the queue alone: how fast worker hosts pick up, get through and stop jobs through the
store and its change feed, with no model at all.

    .venv/bin/python scripts/bench_queue.py                        # the figures in docs/benchmarks.md
    .venv/bin/python scripts/bench_queue.py --backends postgres --postgres-url postgresql://...
    .venv/bin/python scripts/bench_queue.py --workers 1,8 --pickup-samples 10 --json queue.json

Each worker is a separate process, like a GPU worker host: it opens the backend
(``open_backend``), listens to the backend's change feed, and runs the loop of the real worker
host (``server/workers/jobs.py``): woken by ``created`` or by the same fallback poll
(``FALLBACK_DISPATCH_S``), it claims (``claim_next`` under a lease), **sleeps** the job's time
instead of running a model, and finishes under the lease. While it sleeps it stops when told of a
cancel: ``cancel_requested`` on the feed, or the cancel-flag poll (``CANCEL_POLL_S``). This process
creates the predictions and requests the cancels, as an API replica would.

For each backend (SQLite: a fresh file; PostgreSQL: a throwaway cluster it starts itself, fsync
on, or ``--postgres-url``) and each worker count (``--workers``, default 1, 2, 4, 8):

1. **Throughput with a backlog**: ``--jobs-per-worker`` x workers jobs of ``--job-s`` seconds are
   queued before the workers are let go; jobs/s = jobs / (first ``started_at`` to last
   ``completed_at``), against the ideal ``workers / job_s``. Target: >= 90% of ideal.
2. **Pickup latency**, workers idle: ``--pickup-samples`` jobs created one at a time, each waited
   for, then a random pause (on SQLite spread over one fallback poll, the only wake-up its
   workers get from another process); ``started_at - created_at`` from the store. Targets: p50 < 10 ms
   (SQLite), < 5 ms (PostgreSQL).
3. **Cancel to stop**: long jobs, one per worker, cancelled one by one from this process
   (``request_cancel``) after random pauses spread over one cancel-flag poll; latency = the
   worker process's clock when it learns of the cancel minus this process's clock just before
   the request. ``--cancel-samples`` in all. Target: p99 < 0.5 s.

Percentiles are nearest-rank: with under 100 samples p99 is the largest. Prints the machine and a summary;
``--json FILE`` writes every figure. A default run takes about 3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import multiprocessing
import os
import platform
import queue
import random
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from server.predictions.feed import ChangeKind, wait_event  # noqa: E402
from server.predictions.model import CANCELLED, SUCCESS, Prediction  # noqa: E402
from server.store import open_backend  # noqa: E402
from server.workers.jobs import CANCEL_POLL_S, FALLBACK_DISPATCH_S  # noqa: E402

TARGETS = {
    "pickup_p50_ms": {"sqlite": 10.0, "postgres": 5.0},
    "throughput_ratio": 0.90,
    "cancel_p99_s": 0.5,
}
LEASE_S = 30.0
CANCEL_JOB_S = 30.0  # long enough that only a cancel ends it
TERMINAL = ("success", "error", "cancelled")
OWNER = "bench-queue"


# -- the worker process --------------------------------------------------------------------------


def worker_process(url: str, worker_id: str, ready, go, stop, reports) -> None:
    """One worker host: claim -> sleep -> finish, woken by the feed or the fallback poll."""
    asyncio.run(_worker(url, worker_id, ready, go, stop, reports))


async def _worker(url: str, worker_id: str, ready, go, stop, reports) -> None:
    backend = open_backend(url)
    store, feed = backend.predictions, backend.feed
    await feed.start()
    wake = asyncio.Event()
    running: dict[str, asyncio.Event] = {}  # the job this host sleeps on, and its cancel signal
    seen: dict[str, tuple[float, str]] = {}

    def cancel_seen(prediction_id: str, how: str) -> None:
        event = running.get(prediction_id)
        if event is not None and not event.is_set():
            seen[prediction_id] = (time.time(), how)
            event.set()

    feed.subscribe([ChangeKind.CREATED], lambda change: wake.set())
    feed.subscribe([ChangeKind.CANCEL_REQUESTED], lambda change: cancel_seen(change.prediction_id, "feed"))
    listening = getattr(feed, "listening", None)  # PostgreSQL's LISTEN connection
    if listening is not None:
        await asyncio.to_thread(listening.wait, 10)

    async def cancel_poll() -> None:
        # The real host re-reads its running jobs' cancel flags every CANCEL_POLL_S, on its own
        # clock (a notification can be lost, and SQLite's feed reaches no other process).
        while True:
            await asyncio.sleep(CANCEL_POLL_S)
            for prediction_id in list(running):
                row = await asyncio.to_thread(store.get, prediction_id)
                if row is not None and row.cancel_requested:
                    cancel_seen(prediction_id, "poll")

    async def run_job(pred: Prediction) -> None:
        cancel = running[pred.id] = asyncio.Event()
        try:
            cancelled = await wait_event(cancel, float(pred.params["sleep_s"]))
        finally:
            running.pop(pred.id, None)
        if cancelled:
            at, how = seen.pop(pred.id)
            reports.put(("cancel_seen", pred.id, at, how))
        status = CANCELLED if cancelled else SUCCESS
        await asyncio.to_thread(store.finish, pred.id, status, lease=pred.lease)

    ready.put(worker_id)
    await asyncio.to_thread(go.wait)
    poller = asyncio.create_task(cancel_poll())
    while not stop.is_set():
        while not stop.is_set():
            pred = await asyncio.to_thread(store.claim_next, worker_id, LEASE_S)
            if pred is None:
                break
            await run_job(pred)
        await wait_event(wake, FALLBACK_DISPATCH_S)
        wake.clear()
    poller.cancel()
    await feed.stop()
    backend.close()


# -- this process: the API side ------------------------------------------------------------------


@dataclass
class Workers:
    processes: list[multiprocessing.Process]
    go: Any
    stop: Any
    reports: Any

    def close(self) -> None:
        self.stop.set()
        self.go.set()
        for proc in self.processes:
            proc.join(FALLBACK_DISPATCH_S + 3)
        for proc in self.processes:
            if proc.is_alive():
                proc.kill()
                proc.join(5)


def start_workers(ctx, url: str, count: int) -> Workers:
    ready, reports = ctx.Queue(), ctx.Queue()
    go, stop = ctx.Event(), ctx.Event()
    run = uuid.uuid4().hex[:6]
    processes = [
        ctx.Process(
            target=worker_process,
            args=(url, f"bench-{run}:{i}:w0.1", ready, go, stop, reports),
            name=f"bench-worker-{i}",
            daemon=True,
        )
        for i in range(count)
    ]
    for proc in processes:
        proc.start()
    workers = Workers(processes, go, stop, reports)
    for _ in processes:
        try:
            ready.get(timeout=120)
        except queue.Empty:
            workers.close()
            raise RuntimeError("a worker process did not start within 120 s") from None
    return workers


def new_prediction(sleep_s: float) -> Prediction:
    return Prediction(
        id=uuid.uuid4().hex, owner=OWNER, model="bench/queue", input={}, params={"sleep_s": sleep_s}
    )


def wait_terminal(store, ids: list[str], timeout: float, poll: float = 0.01) -> list[Prediction]:
    deadline = time.monotonic() + timeout
    pending = list(ids)
    done: dict[str, Prediction] = {}
    while pending:
        for pid in list(pending):
            row = store.get(pid)
            if row is not None and str(row.status) in TERMINAL:
                done[pid] = row
                pending.remove(pid)
        if pending:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(pending)} jobs did not end within {timeout:.0f} s")
            time.sleep(poll)
    return [done[pid] for pid in ids]


def wait_processing(store, ids: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        rows = [store.get(pid) for pid in ids]
        if all(r is not None and str(r.status) == "processing" for r in rows):
            return
        if time.monotonic() > deadline:
            raise RuntimeError("long jobs were not all picked up in time")
        time.sleep(0.01)


def measure_throughput(store, workers: Workers, count: int, args) -> dict[str, Any]:
    jobs = [new_prediction(args.job_s) for _ in range(count * args.jobs_per_worker)]
    for pred in jobs:
        store.create(pred)
    workers.go.set()  # the whole backlog is queued before any worker claims
    rows = wait_terminal(store, [p.id for p in jobs], timeout=60 + len(jobs) * args.job_s * 4, poll=0.05)
    window = max(r.completed_at for r in rows) - min(r.started_at for r in rows)
    rate = len(rows) / window
    ideal = count / args.job_s
    return {"jobs": len(rows), "window_s": window, "jobs_per_s": rate, "ideal_per_s": ideal,
            "ratio": rate / ideal}  # fmt: skip


def measure_pickup(store, kind: str, args) -> dict[str, Any]:
    # Where the fallback poll is the only wake-up (SQLite: its feed reaches no other process),
    # creates are spread over one poll period, so they fall at random points of it.
    spread = FALLBACK_DISPATCH_S if kind == "sqlite" else 0.1
    latencies = []
    for _ in range(args.pickup_samples):
        time.sleep(random.uniform(0.05, 0.05 + spread))
        pred = new_prediction(args.pickup_job_s)
        store.create(pred)
        (row,) = wait_terminal(store, [pred.id], timeout=30)
        latencies.append(row.started_at - row.created_at)
    return summary(latencies, scale=1000.0, unit="ms")


def measure_cancel(store, workers: Workers, count: int, args) -> dict[str, Any]:
    latencies: list[float] = []
    how: dict[str, int] = {}
    while len(latencies) < args.cancel_samples:
        jobs = [new_prediction(CANCEL_JOB_S) for _ in range(count)]
        for pred in jobs:
            store.create(pred)
        wait_processing(store, [p.id for p in jobs], timeout=30)
        asked: dict[str, float] = {}
        for pred in jobs:
            time.sleep(random.uniform(0.05, 0.05 + CANCEL_POLL_S))  # a random point of the flag poll
            asked[pred.id] = time.time()
            store.request_cancel(pred.id)
        for _ in jobs:
            _, pid, at, channel = workers.reports.get(timeout=30)
            latencies.append(at - asked[pid])
            how[channel] = how.get(channel, 0) + 1
        wait_terminal(store, [p.id for p in jobs], timeout=30)
    result = summary(latencies, scale=1.0, unit="s")
    result["seen_by"] = how
    return result


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of values."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def summary(values: list[float], *, scale: float, unit: str) -> dict[str, Any]:
    scaled = [v * scale for v in values]
    return {"unit": unit, "n": len(scaled), "p50": pct(scaled, 50), "p99": pct(scaled, 99),
            "mean": statistics.fmean(scaled), "max": max(scaled)}  # fmt: skip


def run_backend(kind: str, url_for_run: Callable[[], str], counts: list[int], args) -> list[dict[str, Any]]:
    ctx = multiprocessing.get_context("spawn")
    results = []
    for count in counts:
        url = url_for_run()
        backend = open_backend(url)  # migrates the fresh database before the workers open it
        store = backend.predictions
        try:
            queued = store.counts_by_status().get("starting", 0)
            if queued:
                raise SystemExit(f"{url}: {queued} predictions are already queued; use an empty database")
            started = time.monotonic()
            workers = start_workers(ctx, url, count)
            try:
                row = {"backend": kind, "workers": count, "start_s": time.monotonic() - started}
                row["throughput"] = measure_throughput(store, workers, count, args)
                row["pickup"] = measure_pickup(store, kind, args)
                row["cancel"] = measure_cancel(store, workers, count, args)
            finally:
                workers.close()
        finally:
            backend.close()
        print_row(row)
        results.append(row)
    return results


def sqlite_urls(folder: Path) -> Callable[[], str]:
    """A fresh database file for each run."""
    numbers = itertools.count(1)
    return lambda: f"sqlite:///{folder}/queue-{next(numbers)}.db"


# -- PostgreSQL ----------------------------------------------------------------------------------


def throwaway_postgres():
    """A cluster from the tests' PostgresServer, but with fsync on, as in production."""
    from tests.services.postgres import PostgresServer

    class DurablePostgres(PostgresServer):
        def _server_options(self) -> str:
            return super()._server_options().replace(" -c fsync=off", "")

    return DurablePostgres()


# -- output --------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {"cores": os.cpu_count(), "cpu": model, "system": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "load_1min_at_start": load}  # fmt: skip


def mark(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def print_row(row: dict[str, Any]) -> None:
    kind, t, p, c = row["backend"], row["throughput"], row["pickup"], row["cancel"]
    pickup_target = TARGETS["pickup_p50_ms"][kind]
    print(
        f"{kind:8} {row['workers']} workers | throughput {t['jobs_per_s']:6.1f}/s of ideal "
        f"{t['ideal_per_s']:5.1f} = {t['ratio']:4.0%} (target >= {TARGETS['throughput_ratio']:.0%}: "
        f"{mark(t['ratio'] >= TARGETS['throughput_ratio'])}) | pickup p50 {p['p50']:7.1f} ms "
        f"p99 {p['p99']:7.1f} ms (target p50 < {pickup_target:g} ms: {mark(p['p50'] < pickup_target)}) "
        f"| cancel p50 {c['p50']:.3f} s p99 {c['p99']:.3f} s (target < {TARGETS['cancel_p99_s']} s: "
        f"{mark(c['p99'] < TARGETS['cancel_p99_s'])}; seen by {c['seen_by']})",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument("--workers", default="1,2,4,8", help="worker process counts (comma-separated)")
    parser.add_argument("--postgres-url", default=None, help="an empty database (default: a new cluster)")
    parser.add_argument("--job-s", type=float, default=0.2, help="seconds a throughput job sleeps")
    parser.add_argument("--jobs-per-worker", type=int, default=10, help="backlog per worker (throughput)")
    parser.add_argument("--pickup-samples", type=int, default=16)
    parser.add_argument("--pickup-job-s", type=float, default=0.01, help="seconds a pickup job sleeps")
    parser.add_argument("--cancel-samples", type=int, default=12)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="write every figure to this file")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the worker processes too
    random.seed(args.seed)
    counts = [int(n) for n in args.workers.split(",")]
    kinds = [k.strip() for k in args.backends.split(",") if k.strip()]
    info = machine()
    print("Queue-only benchmark: workers sleep instead of running a model (no GPU, no HTTP).")
    print(f"machine: {info['cores']} cores, {info['cpu']}, {info['system']}, Python {info['python']}, "
          f"load {info['load_1min_at_start']:.2f}")  # fmt: skip
    print(f"fallback dispatch poll {FALLBACK_DISPATCH_S} s, cancel-flag poll {CANCEL_POLL_S} s, "
          f"throughput job {args.job_s} s x {args.jobs_per_worker} per worker")  # fmt: skip
    out: dict[str, Any] = {"machine": info, "args": vars(args) | {"json": str(args.json)},
                           "targets": TARGETS, "runs": []}  # fmt: skip
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fluxserve-bench-queue-") as tmp:
        for kind in kinds:
            if kind == "sqlite":
                out["runs"] += run_backend(kind, sqlite_urls(Path(tmp)), counts, args)
            elif kind == "postgres" and args.postgres_url:
                out["runs"] += run_backend(kind, lambda: args.postgres_url, counts, args)
            elif kind == "postgres":
                with throwaway_postgres() as server:
                    out["runs"] += run_backend(kind, server.new_database, counts, args)
            else:
                parser.error(f"unknown backend {kind!r}")
    out["elapsed_s"] = time.monotonic() - began
    print(f"done in {out['elapsed_s']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
