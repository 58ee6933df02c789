#!/usr/bin/env python
"""Benchmark the prediction server around the model: what the API, the queue and the worker
hand-off cost on top of generation.

    .venv/bin/python scripts/bench_server.py                     # the figures in docs/benchmarks.md
    .venv/bin/python scripts/bench_server.py --n 10 --samples 30 --poll-seconds 5   # quicker

It writes the tiny random FLUX pipeline (or uses ``--model DIR``), and runs on the smallest size
the contract allows, megapixels 0.25 at 1:1 (512x512), on CPU:

1. **Throughput.** ``--n`` predictions (``--steps`` steps) created at once through
   ``fluxserve serve`` (a subprocess, real HTTP via httpx, one worker) against the same ``--n``
   ``FluxGenerator.generate`` calls in this process on the same tiny model. Server time is
   first ``created_at`` to last ``completed_at`` (server clock, from the SQLite file: no client
   polling in it); direct time is the loop of calls, including encoding. ``--rounds`` direct
   and server runs are interleaved (the load of other processes on a shared machine changes
   from minute to minute); the ratio is given best-of (least disturbed runs) and median.
   Target: server/direct >= 0.9.
2. **Create to start.** With the worker idle, ``--samples`` predictions one at a time (each
   waited for before the next): ``started_at - created_at`` from the store (full precision).
   ``created_at`` is stamped before the row is written, so this is insert + commit + wake-up +
   claim. Target: p50 < 10 ms.
3. **GET latency under polling.** While the worker is busy on long jobs (1 MP, 28 steps),
   ``--pollers`` concurrent pollers (asyncio + one httpx.AsyncClient, in a separate process from
   the server) GET their prediction: first open-loop, each poller once every ``--poll-interval``
   seconds (the way clients poll), then closed-loop (each poller back-to-back: saturation).
   Latency is measured by the client around each request. The client's CPU use is reported so a
   client-side bottleneck is visible. Target: p99 < 20 ms (open loop).

The bench server allows 1 000 000 reads per minute per key, so the limiter (still on the path)
refuses nothing. Prints a summary; ``--json FILE`` writes every figure.

**Old against new.** ``--compare-to REF`` (a git commit, branch or tag of this repository) runs
the code of REF and the working tree side by side in one run, each as its own ``serve`` process on
the same machine, tiny model and Python environment: throughput rounds interleaved (old, new, then
new, old...), then the GET latency of each in turn. It prints both and the new/old ratios, which
is what a change to the server must not make worse:

    .venv/bin/python scripts/bench_server.py --compare-to main~3 --rounds 4 --poll-seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-key"
TERMINAL = ("success", "error", "cancelled")


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of values."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the server ---------------------------------------------------------------------------------


class Server:
    def __init__(
        self,
        root: Path,
        weights: Path,
        workers_log: Path,
        reads_per_minute: int,
        worker_nice: int,
        code: Path = ROOT,
        log_level: str = "warning",  # warning: no access log line per request
        extra_workers_config: tuple[str, ...] = (),
    ) -> None:
        """``code``: the source tree whose ``server`` package runs (another commit's, to compare);
        ``extra_workers_config``: more ``workers:`` lines, e.g. ``"  overlap_finishing: false"``."""
        self.root = root
        self.data_dir = root / "data"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workers_log
        root.mkdir(parents=True, exist_ok=True)
        config = root / "bench.yaml"
        config.write_text(
            "\n".join(
                [
                    f"data_dir: {json.dumps(str(self.data_dir))}",
                    "host: 127.0.0.1",
                    f"port: {self.port}",
                    f"log_level: {log_level}",
                    "model:",
                    "  device: cpu",
                    "limits:",
                    "  requests_per_minute: 0",
                    f"  reads_per_minute: {reads_per_minute}",
                    "  max_in_flight: 0",
                    "workers:",
                    f"  nice: {worker_nice}",
                    *extra_workers_config,
                    "",
                ]
            )
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXSERVE_")}
        env.update(FLUXSERVE_API_KEYS=KEY, FLUXSERVE_MODEL__WEIGHTS=str(weights), HF_HUB_OFFLINE="1")
        env["PYTHONPATH"] = str(code)  # this tree's server/ and pipelines/, not the installed ones
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "server.cli", "serve", "--config", str(config)],
                cwd=code,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.client = httpx.Client(base_url=self.url, headers={"X-API-Key": KEY}, timeout=60)

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited; see {self.log_path}")
            try:
                if self.client.get("/health-check").json()["status"] == "READY":
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"server not ready in {timeout} s; see {self.log_path}")

    def create(self, inputs: dict) -> str:
        r = self.client.post("/v1/prediction", json={"model": "flux-dev", "input": inputs})
        r.raise_for_status()
        return r.json()["predictionID"]

    def wait_end(self, pid: str) -> dict:
        while True:
            r = self.client.get(f"/v1/prediction/{pid}", params={"wait": 30})
            r.raise_for_status()
            body = r.json()
            if body["status"] in TERMINAL:
                if body["status"] != "success":
                    raise SystemExit(f"prediction {pid} ended {body['status']}: {body['error']}")
                return body

    def rows(self, ids: list[str]) -> list[sqlite3.Row]:
        with sqlite3.connect(f"file:{self.data_dir / 'fluxserve.db'}?mode=ro", uri=True) as conn:
            conn.row_factory = sqlite3.Row
            marks = ",".join("?" * len(ids))
            found = {
                r["id"]: r for r in conn.execute(f"SELECT * FROM predictions WHERE id IN ({marks})", ids)
            }
        return [found[i] for i in ids]

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# -- 1. throughput ------------------------------------------------------------------------------


class Direct:
    """The baseline: FluxGenerator.generate in this process, on the same tiny model."""

    def __init__(self, weights: Path) -> None:
        from pipelines.generate import FluxGenerator
        from pipelines.loading import load_model
        from pipelines.spec import ModelSpec

        self.generator = FluxGenerator(load_model(ModelSpec(weights=str(weights), device="cpu")))

    def run(self, inputs: dict, n: int, seed: int) -> float:
        """Seconds for n generate calls (input validation done beforehand, as the server does at create)."""
        from pipelines.inputs import parse_inputs

        parsed = [parse_inputs({**inputs, "seed": seed + i}) for i in range(n)]
        started = time.perf_counter()
        for p in parsed:
            self.generator.generate(p)
        return time.perf_counter() - started


def server_run(server: Server, inputs: dict, n: int, seed: int) -> dict:
    """n predictions created at once; first created_at to last completed_at (server clock)."""
    ids = [server.create({**inputs, "seed": seed + i}) for i in range(n)]
    for pid in ids:
        server.wait_end(pid)
    rows = server.rows(ids)
    gaps = [b["started_at"] - a["completed_at"] for a, b in zip(rows, rows[1:], strict=False)]
    return {
        "seconds": max(r["completed_at"] for r in rows) - min(r["created_at"] for r in rows),
        "predict_time_sum": sum(r["predict_time"] for r in rows),
        "idle_between_jobs_ms_p50": 1000 * statistics.median(gaps) if gaps else 0.0,
    }


def throughput(server: Server, direct: Direct, inputs: dict, n: int, rounds: int, warmup: int) -> dict:
    """Direct and server runs interleaved, ``rounds`` of each: on a shared machine the load of
    other processes changes from minute to minute, and interleaving exposes both to it alike."""
    for i in range(warmup):
        direct.run(inputs, 1, seed=1 + i)
        server.wait_end(server.create({**inputs, "seed": 1 + i}))
    direct_s, server_s, runs = [], [], []
    for r in range(rounds):
        direct_s.append(direct.run(inputs, n, seed=1000 * (r + 1)))
        run = server_run(server, inputs, n, seed=1000 * (r + 1))
        server_s.append(run["seconds"])
        runs.append(run)
    return {
        "direct_seconds": direct_s,
        "server_seconds": server_s,
        "server_predict_time_sums": [x["predict_time_sum"] for x in runs],
        "idle_between_jobs_ms_p50": statistics.median(x["idle_between_jobs_ms_p50"] for x in runs),
        "ratio_best": min(direct_s) / min(server_s),
        "ratio_median": statistics.median(d / s for d, s in zip(direct_s, server_s, strict=True)),
        "ratio_per_round": [d / s for d, s in zip(direct_s, server_s, strict=True)],
        # What the server adds on top of the worker's own model time (hand-off, store, files):
        # independent of how fast the CPU happened to be during the run.
        "overhead_ms_per_job": statistics.median(
            1000 * (x["seconds"] - x["predict_time_sum"]) / n for x in runs
        ),
    }


# -- 2. create to start -------------------------------------------------------------------------


def create_to_start(server: Server, inputs: dict, samples: int) -> dict:
    ids, create_rtt = [], []
    for i in range(samples):
        t0 = time.perf_counter()
        pid = server.create({**inputs, "seed": 5000 + i})
        create_rtt.append(time.perf_counter() - t0)
        server.wait_end(pid)
        ids.append(pid)
    gaps = [(r["started_at"] - r["created_at"]) * 1000 for r in server.rows(ids)]
    return {
        "samples": samples,
        "p50_ms": pct(gaps, 50),
        "p99_ms": pct(gaps, 99),
        "max_ms": max(gaps),
        "create_round_trip_p50_ms": 1000 * pct(create_rtt, 50),
        "create_round_trip_p99_ms": 1000 * pct(create_rtt, 99),
    }


# -- 3. GET latency under polling ---------------------------------------------------------------


async def _poll(url: str, ids: list[str], pollers: int, seconds: float, interval: float | None) -> dict:
    # One AsyncClient (one connection) per poller, like 200 separate clients. A single shared
    # AsyncClient with a 200-connection pool is itself the bottleneck: ~50 requests/s at 100 % of
    # a core on the machine of docs/benchmarks.md, against ~600/s this way.
    clients = [
        httpx.AsyncClient(base_url=url, headers={"X-API-Key": KEY}, timeout=30) for _ in range(pollers)
    ]
    latencies: list[float] = []
    errors = 0
    statuses: dict[int, int] = {}
    try:
        # Open every connection first, so connection set-up is not in the figures.
        await asyncio.gather(*(client.get("/health-check") for client in clients))
        stop_at = time.perf_counter() + seconds

        async def poller(index: int) -> None:
            nonlocal errors
            client, pid = clients[index], ids[index % len(ids)]
            if interval:
                await asyncio.sleep(random.random() * interval)  # spread the pollers over the interval
            next_at = time.perf_counter()
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                try:
                    r = await client.get(f"/v1/prediction/{pid}")
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                    latencies.append(time.perf_counter() - t0)
                except httpx.HTTPError:
                    errors += 1
                if interval:
                    next_at += interval
                    await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(poller(i) for i in range(pollers)))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    finally:
        await asyncio.gather(*(client.aclose() for client in clients))
    ms = [x * 1000 for x in latencies]
    return {
        "pollers": pollers,
        "interval_s": interval,
        "requests": len(ms),
        "requests_per_s": len(ms) / wall,
        "p50_ms": pct(ms, 50),
        "p90_ms": pct(ms, 90),
        "p99_ms": pct(ms, 99),
        "max_ms": max(ms) if ms else float("nan"),
        "errors": errors,
        "statuses": statuses,
        "client_cpu_share": cpu / wall,  # 1.0 = one core saturated by the client
    }


def get_latency(server: Server, pollers: int, seconds: float, interval: float, closed_seconds: float) -> dict:
    # Reference: the same open-loop polling with the worker idle (on one finished prediction).
    done = server.create({"prompt": "a lighthouse", "megapixels": "0.25", "num_inference_steps": "1"})
    server.wait_end(done)
    idle = asyncio.run(_poll(server.url, [done], pollers, seconds, interval))

    busy_inputs = {"prompt": "a lighthouse at dawn", "megapixels": "1", "num_inference_steps": "28"}
    busy = [server.create({**busy_inputs, "seed": 9000 + i}) for i in range(40)]
    deadline = time.monotonic() + 60
    while server.client.get(f"/v1/prediction/{busy[0]}").json()["status"] != "processing":
        if time.monotonic() > deadline:
            raise SystemExit("the busy job never started")
        time.sleep(0.05)
    try:
        open_loop = asyncio.run(_poll(server.url, busy, pollers, seconds, interval))
        closed_loop = asyncio.run(_poll(server.url, busy, pollers, closed_seconds, None))
        health = server.client.get("/health-check").json()
        worker_busy = health["status"] == "BUSY"
    finally:
        for pid in busy:
            server.client.post(f"/v1/prediction/{pid}/cancel")
    return {
        "idle_open_loop": idle,
        "open_loop": open_loop,
        "closed_loop": closed_loop,
        "worker_busy_at_end": worker_busy,
    }


# -- old against new ---------------------------------------------------------------------------


def export_commit(ref: str, into: Path) -> Path:
    """The files of ``ref`` (``git archive``), to run that commit's server beside this tree's."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, capture_output=True, check=False)
    if archive.returncode != 0:
        raise SystemExit(f"--compare-to {ref}: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def compare(servers: dict[str, Server], direct: Direct, inputs: dict, args: argparse.Namespace) -> dict:
    """Throughput rounds interleaved between the servers (the order flips each round, so neither
    always runs on a machine the other just warmed), then each server's GET latency in turn."""
    for server in servers.values():
        for i in range(args.warmup):
            server.wait_end(server.create({**inputs, "seed": 1 + i}))
    direct.run(inputs, 1, seed=1)
    names = list(servers)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    direct_s: list[float] = []
    for r in range(args.rounds):
        direct_s.append(direct.run(inputs, args.n, seed=1000 * (r + 1)))
        for name in names if r % 2 == 0 else reversed(names):
            seconds[name].append(server_run(servers[name], inputs, args.n, seed=1000 * (r + 1))["seconds"])
    out: dict = {"direct_seconds": direct_s, "server_seconds": seconds}
    out["ratio_best"] = {name: min(direct_s) / min(seconds[name]) for name in names}
    out["new_over_old_seconds_per_round"] = [
        n / o for o, n in zip(seconds["old"], seconds["new"], strict=True)
    ]
    # GET latency in turns, the order flipped each round (old, new, new, old...); each figure is
    # the best of its rounds: the least disturbed by the rest of a shared machine.
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(args.latency_rounds):
        for name in names if r % 2 == 0 else reversed(names):
            print(f"   GET latency of {name} (round {r + 1}) ...", flush=True)
            runs[name].append(
                get_latency(
                    servers[name], args.pollers, args.poll_seconds, args.poll_interval, args.closed_seconds
                )
            )
    out["get_latency_rounds"] = runs
    out["get_latency"] = {name: _best_latency(runs[name]) for name in names}
    return out


def _best_latency(runs: list[dict]) -> dict:
    best: dict = {}
    for part in ("idle_open_loop", "open_loop", "closed_loop"):
        figures = [run[part] for run in runs]
        best[part] = {
            "p50_ms": min(f["p50_ms"] for f in figures),
            "p99_ms": min(f["p99_ms"] for f in figures),
            "requests_per_s": max(f["requests_per_s"] for f in figures),
            "errors": sum(f["errors"] for f in figures),
        }
    return best


def report_comparison(result: dict, args: argparse.Namespace) -> None:
    print()
    print(f"old = {args.compare_to}, new = the working tree; {args.n} x 512x512 {args.steps} steps per round")
    for name in ("old", "new"):
        secs = ", ".join(f"{x:.2f}" for x in result["server_seconds"][name])
        print(f"  {name}: server seconds per round {secs}; "
              f"throughput ratio server/direct best-of {result['ratio_best'][name]:.3f}")  # fmt: skip
    per_round = result["new_over_old_seconds_per_round"]
    print(f"  new/old server seconds per round: {', '.join(f'{x:.3f}' for x in per_round)} "
          f"(median {statistics.median(per_round):.3f}; below 1: new is faster)")  # fmt: skip
    print(f"  GET latency, best of {args.latency_rounds} turns each (order alternating):")
    for part, label in (("idle_open_loop", "worker idle"), ("open_loop", "worker busy"),
                        ("closed_loop", "worker busy, back-to-back")):  # fmt: skip
        old, new = (result["get_latency"][name][part] for name in ("old", "new"))
        print(f"    {label}: p50 {old['p50_ms']:.1f} -> {new['p50_ms']:.1f} ms, "
              f"p99 {old['p99_ms']:.1f} -> {new['p99_ms']:.1f} ms, "
              f"{old['requests_per_s']:.0f} -> {new['requests_per_s']:.0f} req/s, "
              f"errors {old['errors']} -> {new['errors']}")  # fmt: skip


# -- main ---------------------------------------------------------------------------------------


def machine() -> str:
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f"{os.cpu_count()} CPU cores ({model}), no GPU, {platform.system()} {platform.release()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="tiny model folder (default: write one)")
    parser.add_argument(
        "--n", type=int, default=10, help="predictions queued at once in each throughput round"
    )
    parser.add_argument("--steps", type=int, default=4, help="denoising steps in the throughput run")
    parser.add_argument(
        "--rounds", type=int, default=6, help="throughput: direct and server runs, interleaved"
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--samples", type=int, default=100, help="create-to-start samples")
    parser.add_argument("--pollers", type=int, default=200)
    parser.add_argument(
        "--poll-interval", type=float, default=1.0, help="open loop: seconds between one poller's GETs"
    )
    parser.add_argument("--poll-seconds", type=float, default=15.0)
    parser.add_argument(
        "--closed-seconds", type=float, default=5.0, help="closed loop (back-to-back) duration"
    )
    parser.add_argument(
        "--reads-per-minute", type=int, default=1_000_000, help="the server's read limit (0: no limiter)"
    )
    parser.add_argument(
        "--worker-nice", type=int, default=0, help="the server's workers.nice (configs/cpu.yaml uses 10)"
    )
    parser.add_argument(
        "--parts",
        default="throughput,start,latency",
        help="comma-separated subset of throughput,start,latency",
    )
    parser.add_argument(
        "--compare-to",
        default=None,
        metavar="REF",
        help="run the server of git REF beside this tree's and print old -> new (throughput, GET latency)",
    )
    parser.add_argument(
        "--latency-rounds", type=int, default=2, help="--compare-to: GET latency turns of each server"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="bench-server-"))
    weights = args.model
    if weights is None:
        from pipelines.tiny import write_tiny_model

        weights = write_tiny_model(work / "tiny-flux")
    inputs = {"prompt": "a lighthouse at dawn", "megapixels": "0.25", "aspect_ratio": "1:1",
              "num_inference_steps": str(args.steps), "output_format": "webp"}  # fmt: skip
    results: dict = {"machine": machine(), "load_average_start": os.getloadavg(),
                     "size": "512x512 (0.25 MP, 1:1)", "steps": args.steps, "n": args.n,
                     "worker_nice": args.worker_nice}  # fmt: skip

    print(f"machine: {results['machine']}; load average {os.getloadavg()[0]:.2f}", flush=True)
    if args.compare_to:
        return run_comparison(work, weights, inputs, results, args)
    parts = set(args.parts.split(","))
    direct = Direct(weights) if "throughput" in parts else None
    server = Server(work, weights, work / "server.log", args.reads_per_minute, args.worker_nice)
    try:
        server.wait_ready()
        if direct is not None:
            print(
                f"1. throughput: {args.rounds} rounds of {args.n} x 512x512 {args.steps} steps ...",
                flush=True,
            )
            results["throughput"] = throughput(server, direct, inputs, args.n, args.rounds, args.warmup)
        if "start" in parts:
            print(f"2. create to start: {args.samples} samples, worker idle ...", flush=True)
            fast = {**inputs, "num_inference_steps": "1"}
            results["create_to_start"] = create_to_start(server, fast, args.samples)
        if "latency" in parts:
            print(f"3. GET latency: {args.pollers} pollers, worker idle then busy ...", flush=True)
            results["get_latency"] = get_latency(
                server, args.pollers, args.poll_seconds, args.poll_interval, args.closed_seconds
            )
    finally:
        server.stop()
    results["load_average_end"] = os.getloadavg()
    report(results, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def run_comparison(work: Path, weights: Path, inputs: dict, results: dict, args: argparse.Namespace) -> int:
    old_code = export_commit(args.compare_to, work / "old-code")
    servers = {
        name: Server(
            work / name, weights, work / f"{name}.log", args.reads_per_minute, args.worker_nice, code
        )
        for name, code in (("old", old_code), ("new", ROOT))
    }
    try:
        for server in servers.values():
            server.wait_ready()
        print(
            f"old against new: {args.rounds} interleaved throughput rounds, then GET latency ...", flush=True
        )
        results["comparison"] = compare(servers, Direct(weights), inputs, args)
    finally:
        for server in servers.values():
            server.stop()
    results["compare_to"] = args.compare_to
    results["load_average_end"] = os.getloadavg()
    report_comparison(results["comparison"], args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def report(results: dict, args: argparse.Namespace) -> None:
    print()
    if t := results.get("throughput"):
        seconds = ", ".join(
            f"{d:.2f}/{s:.2f}" for d, s in zip(t["direct_seconds"], t["server_seconds"], strict=True)
        )
        print(
            f"throughput, {args.n} x 512x512 {args.steps} steps, direct/server seconds per round: {seconds}"
        )
        print(f"  ratio server/direct throughput: best-of {t['ratio_best']:.3f}, "
              f"median {t['ratio_median']:.3f}, "
              f"per round {', '.join(f'{x:.2f}' for x in t['ratio_per_round'])}"
              "  (target >= 0.9)")  # fmt: skip
        print(f"  server time beyond the worker's model time: {t['overhead_ms_per_job']:.1f} ms per job "
              "(median of rounds); worker idle between two queued jobs: "
              f"p50 {t['idle_between_jobs_ms_p50']:.1f} ms")  # fmt: skip
    if c2s := results.get("create_to_start"):
        print(f"create to start ({c2s['samples']} samples, worker idle): p50 {c2s['p50_ms']:.2f} ms, "
              f"p99 {c2s['p99_ms']:.2f} ms, max {c2s['max_ms']:.2f} ms  (target p50 < 10 ms)")  # fmt: skip
        print(f"  create round trip seen by the client: p50 {c2s['create_round_trip_p50_ms']:.2f} ms, "
              f"p99 {c2s['create_round_trip_p99_ms']:.2f} ms")  # fmt: skip
    if polling := results.get("get_latency"):
        every = f"1 GET every {args.poll_interval:g} s each"
        for name, x in (
            (f"worker idle, {every}", polling["idle_open_loop"]),
            (f"worker busy, {every}", polling["open_loop"]),
            ("worker busy, back-to-back", polling["closed_loop"]),
        ):
            print(f"GET latency, {x['pollers']} pollers, {name}: {x['requests_per_s']:.0f} req/s, "
                  f"p50 {x['p50_ms']:.1f} ms, p90 {x['p90_ms']:.1f} ms, p99 {x['p99_ms']:.1f} ms, "
                  f"max {x['max_ms']:.1f} ms, errors {x['errors']}, statuses {x['statuses']}, "
                  f"client CPU {x['client_cpu_share']:.0%} of a core")  # fmt: skip
        print("  (target p99 < 20 ms with the worker busy; "
              f"still busy at the end: {polling['worker_busy_at_end']}; "
              f"server reads_per_minute {args.reads_per_minute})")  # fmt: skip
    print(
        f"load average: {results['load_average_start'][0]:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end"
    )


if __name__ == "__main__":
    sys.exit(main())
