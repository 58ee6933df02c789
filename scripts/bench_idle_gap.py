#!/usr/bin/env python
"""Benchmark the worker's idle gap between back-to-back jobs, with ``workers.overlap_finishing``
on and off.

    .venv/bin/python scripts/bench_idle_gap.py                  # the figures in docs/benchmarks.md
    .venv/bin/python scripts/bench_idle_gap.py --n 10 --rounds 1

A live ``fluxserve serve`` (a subprocess, one worker, the tiny random FLUX pipeline on CPU unless
``--model DIR``) gets ``--n`` predictions created at once, alternating two sizes and formats:
megapixels 0.25 as PNG (512x512: PNG encoding is slow enough to see) and megapixels 1 as WebP.
The worker reports, before each job, how long its GPU thread sat without work while that job
was queued (``JobStarted.idle_gap_s``; the server logs it at debug level and observes it in
``fluxserve_worker_idle_gap_seconds``); this script reads the log lines of its own predictions.
Throughput is predictions per second, first ``created_at`` to last ``completed_at`` (server
clock, from the SQLite file). ``--rounds`` runs of each setting, interleaved (on, off, off, on...).
Target (overlap on): median gap < 5 ms, nothing that grows with encoding time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_server import KEY, ROOT, free_port, pct  # noqa: E402 - a script beside this one

GAP_LINE = re.compile(r"GPU idle ([0-9.]+) ms before (\S+)")
KINDS = [
    {"megapixels": "0.25", "aspect_ratio": "1:1", "output_format": "png"},
    {"megapixels": "1", "aspect_ratio": "1:1", "output_format": "webp"},
]


class GapServer:
    """``fluxserve serve`` with overlap on or off, logging at debug level to a file."""

    def __init__(self, root: Path, weights: Path, overlap: bool) -> None:
        self.data_dir = root / "data"
        self.log_path = root / "serve.log"
        root.mkdir(parents=True, exist_ok=True)
        port = free_port()
        config = root / "bench.yaml"
        config.write_text(
            f"data_dir: {json.dumps(str(self.data_dir))}\nhost: 127.0.0.1\nport: {port}\n"
            "log_level: debug\nmodel:\n  device: cpu\n"
            "limits:\n  requests_per_minute: 0\n  reads_per_minute: 0\n  max_in_flight: 0\n"
            f"workers:\n  overlap_finishing: {str(overlap).lower()}\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXSERVE_")}
        env.update(FLUXSERVE_API_KEYS=KEY, FLUXSERVE_MODEL__WEIGHTS=str(weights), HF_HUB_OFFLINE="1")
        env["PYTHONPATH"] = str(ROOT)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "server.cli", "serve", "--config", str(config)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.client = httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": KEY}, timeout=60
        )

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

    def run(self, inputs: list[dict]) -> list[str]:
        """Create them all at once, wait for every one; their ids."""
        ids = []
        for body in inputs:
            r = self.client.post("/v1/prediction", json={"model": "flux-dev", "input": body})
            r.raise_for_status()
            ids.append(r.json()["predictionID"])
        for pid in ids:
            while (body := self.client.get(f"/v1/prediction/{pid}", params={"wait": 30}).json())[
                "status"
            ] not in ("success", "error", "cancelled"):
                pass
            if body["status"] != "success":
                raise SystemExit(f"prediction {pid} ended {body['status']}: {body.get('error')}")
        return ids

    def gaps_ms(self, ids: list[str]) -> list[float]:
        wanted = set(ids)
        found = [GAP_LINE.search(line) for line in self.log_path.read_text().splitlines()]
        return [float(m[1]) for m in found if m is not None and m[2] in wanted]

    def seconds(self, ids: list[str]) -> float:
        with sqlite3.connect(f"file:{self.data_dir / 'fluxserve.db'}?mode=ro", uri=True) as conn:
            marks = ",".join("?" * len(ids))
            row = conn.execute(
                f"SELECT MIN(created_at), MAX(completed_at) FROM predictions WHERE id IN ({marks})", ids
            ).fetchone()
        return row[1] - row[0]

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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20, help="predictions created at once per run")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps per prediction")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each setting, interleaved")
    parser.add_argument("--model", type=Path, default=None, help="tiny model folder (default: write one)")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fluxserve-idle-gap-") as tmp:
        work = Path(tmp)
        weights = args.model
        if weights is None:
            from pipelines.tiny import write_tiny_model

            weights = write_tiny_model(work / "tiny-flux")
        servers = {
            overlap: GapServer(work / f"overlap-{overlap}", weights, overlap) for overlap in (True, False)
        }
        results: dict[bool, dict[str, list[float]]] = {
            True: {"gaps": [], "rate": []},
            False: {"gaps": [], "rate": []},
        }
        try:
            for server in servers.values():
                server.wait_ready()
                server.run([{**KINDS[0], "prompt": "warm-up", "num_inference_steps": args.steps}])
            order = [True, False]
            for r in range(args.rounds):
                for overlap in order if r % 2 == 0 else order[::-1]:
                    server = servers[overlap]
                    inputs = [
                        {
                            **KINDS[i % 2],
                            "prompt": f"a lighthouse {i}",
                            "seed": 100 + i,
                            "num_inference_steps": args.steps,
                        }
                        for i in range(args.n)
                    ]
                    ids = server.run(inputs)
                    results[overlap]["gaps"] += server.gaps_ms(ids[1:])  # the first waited for nothing
                    results[overlap]["rate"].append(args.n / server.seconds(ids))
        finally:
            for server in servers.values():
                server.stop()

    print(
        f"{args.n} predictions at once x {args.rounds} rounds, {args.steps} steps, alternating "
        "0.25 MP png / 1 MP webp, tiny model on CPU"
    )
    for overlap in (True, False):
        gaps, rate = results[overlap]["gaps"], results[overlap]["rate"]
        print(
            f"overlap {'on ' if overlap else 'off'}: idle gap median {statistics.median(gaps):7.2f} ms, "
            f"p95 {pct(gaps, 95):7.2f} ms, max {max(gaps):7.2f} ms, "
            f"{sum(g < 5 for g in gaps)}/{len(gaps)} under 5 ms; "
            f"{statistics.median(rate):.2f} predictions/s"
        )
    ratio = statistics.median(results[True]["rate"]) / statistics.median(results[False]["rate"])
    print(f"throughput on/off: {ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({str(k): v for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    main()
