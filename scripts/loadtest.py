#!/usr/bin/env python3
"""Load test: many keys creating predictions in bursts against one server, on loopback.

    python scripts/loadtest.py                       # start a server on the tiny model, 1000 creates, 20 keys
    python scripts/loadtest.py --creates 100 --keys 5 --burst 20 --max-in-flight 4   # the short form CI runs
    python scripts/loadtest.py --url http://127.0.0.1:8000 --key K1 --key K2 ...   # a running server

Without ``--url`` it writes the tiny random FLUX pipeline (or uses ``--model DIR``), starts
``fluxserve serve`` on a free loopback port with the default per-key limits (60 creates a
minute, 10 in flight; ``--rpm`` and ``--max-in-flight`` change them) and ``--keys`` static keys,
and stops it at the end.

Each key sends ``--burst`` creates at once, every ``--interval`` seconds, until ``--creates``
have been sent in all; then every accepted prediction is long-polled until it is terminal. The
job is the quickest one (img2img from a 64x64 PNG, 2 steps): the API and the queue are what is
measured, not the model.

It reports: creates accepted (200), refused (429; each must carry Retry-After), 5xx (must be 0),
any other status, transport errors, accepted-but-lost (accepted ids that never reached a terminal
state: must be 0), how the accepted ones ended, whether each key's prediction list holds exactly
its accepted creates (a refused create must make nothing), and the API latency of creates
(p50/p99). Exit status 0 only when nothing is wrong. ``--json FILE`` writes the figures.

Bounded: at most ``--creates`` requests plus one poll per accepted id every few seconds, and
everything stops after ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import math
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from server.cli.serve import is_loopback_host

TERMINAL = ("success", "error", "cancelled")


def _quick_input() -> dict:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(buf, "PNG")
    image = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    return {"prompt": "a lighthouse at dawn", "image": image, "num_inference_steps": "2"}


@dataclass
class Figures:
    creates_sent: int = 0
    accepted: int = 0
    refused_429: int = 0
    refused_without_retry_after: int = 0
    server_errors_5xx: int = 0
    other_statuses: dict[str, int] = field(default_factory=dict)
    transport_errors: int = 0
    transport_error_kinds: dict[str, int] = field(default_factory=dict)
    accepted_but_lost: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    listed_mismatch_keys: int = 0
    create_latency_ms: dict[str, float] = field(default_factory=dict)
    accepted_latency_ms: dict[str, float] = field(default_factory=dict)
    create_phase_s: float = 0.0
    drain_s: float = 0.0
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return (
            self.server_errors_5xx == 0
            and self.accepted_but_lost == 0
            and self.refused_without_retry_after == 0
            and not self.other_statuses
            and self.transport_errors == 0
            and self.listed_mismatch_keys == 0
            and not self.timed_out
        )


def _percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {}
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)], 2)

    return {
        "p50": pick(0.50),
        "p90": pick(0.90),
        "p99": pick(0.99),
        "max": round(1000 * ordered[-1], 2),
        "n": len(ordered),
    }


# -- the run ------------------------------------------------------------------------------------------


async def run_load(
    url: str, keys: list[str], creates: int, burst: int, interval: float, timeout: float
) -> Figures:
    figures = Figures()
    deadline = time.monotonic() + timeout
    inputs = _quick_input()
    accepted: dict[str, list[str]] = {k: [] for k in keys}
    latencies: list[float] = []
    accepted_latencies: list[float] = []
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def create(key: str) -> None:
            body = {"model": "flux-dev", "input": inputs}
            started = time.perf_counter()
            try:
                r = await client.post("/v1/prediction", json=body, headers={"X-API-Key": key})
            except httpx.HTTPError as exc:
                figures.transport_errors += 1
                name = type(exc).__name__
                figures.transport_error_kinds[name] = figures.transport_error_kinds.get(name, 0) + 1
                return
            elapsed = time.perf_counter() - started
            latencies.append(elapsed)
            if r.status_code == 200:
                figures.accepted += 1
                accepted_latencies.append(elapsed)
                accepted[key].append(r.json()["predictionID"])
            elif r.status_code == 429:
                figures.refused_429 += 1
                if not r.headers.get("retry-after", "").isdigit():
                    figures.refused_without_retry_after += 1
            elif r.status_code >= 500:
                figures.server_errors_5xx += 1
            else:
                figures.other_statuses[str(r.status_code)] = (
                    figures.other_statuses.get(str(r.status_code), 0) + 1
                )

        # Bursts: every key sends `burst` creates at once, then all wait `interval`.
        t0 = time.monotonic()
        sent = 0
        while sent < creates and time.monotonic() < deadline:
            batch = []
            for key in keys:
                for _ in range(min(burst, creates - sent)):
                    batch.append(create(key))
                    sent += 1
            await asyncio.gather(*batch)
            if sent < creates:
                await asyncio.sleep(interval)
        figures.creates_sent = sent
        figures.create_phase_s = round(time.monotonic() - t0, 2)

        # Drain: long-poll every accepted id until it is terminal.
        t1 = time.monotonic()
        polls = asyncio.Semaphore(100)
        outcomes: dict[str, str] = {}

        async def follow(key: str, pid: str) -> None:
            async with polls:
                while time.monotonic() < deadline:
                    wait = max(0.1, min(10.0, deadline - time.monotonic()))
                    try:
                        r = await client.get(
                            f"/v1/prediction/{pid}", params={"wait": wait}, headers={"X-API-Key": key}
                        )
                    except httpx.HTTPError:
                        await asyncio.sleep(0.5)
                        continue
                    if r.status_code >= 500:
                        figures.server_errors_5xx += 1
                    if r.status_code == 429:
                        await asyncio.sleep(float(r.headers.get("retry-after", "1")))
                        continue
                    if r.status_code == 200 and r.json()["status"] in TERMINAL:
                        outcomes[pid] = r.json()["status"]
                        return

        await asyncio.gather(*(follow(k, pid) for k, pids in accepted.items() for pid in pids))
        figures.drain_s = round(time.monotonic() - t1, 2)
        all_ids = [pid for pids in accepted.values() for pid in pids]
        figures.accepted_but_lost = sum(1 for pid in all_ids if pid not in outcomes)
        figures.timed_out = time.monotonic() >= deadline and figures.accepted_but_lost > 0
        for status in outcomes.values():
            figures.outcomes[status] = figures.outcomes.get(status, 0) + 1

        # A refused create makes nothing: each key's list holds exactly its accepted ids.
        for key, pids in accepted.items():
            listed: set[str] = set()
            offset = 0
            while True:
                r = await client.get(
                    "/v1/executions", params={"limit": 100, "offset": offset}, headers={"X-API-Key": key}
                )
                page = r.json()
                listed.update(e["id"] for e in page["executions"])
                offset += 100
                if offset >= page["total"]:
                    break
            if listed != set(pids):
                figures.listed_mismatch_keys += 1

    figures.create_latency_ms = _percentiles(latencies)
    figures.accepted_latency_ms = _percentiles(accepted_latencies)
    return figures


# -- a server of our own --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OwnServer:
    """`fluxserve serve` on the tiny model, loopback, default limits, in its own process group."""

    def __init__(
        self, workdir: Path, model: Path | None, keys: list[str], workers: int, max_in_flight: int, rpm: int
    ) -> None:
        import yaml

        self.workdir = workdir
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        if model is None:
            from pipelines.tiny import write_tiny_model

            model = write_tiny_model(workdir / "tiny-flux")
        config = {
            "host": "127.0.0.1",
            "port": self.port,
            "data_dir": str(workdir / "data"),
            "api_keys": keys,
            "log_level": "warning",
            "model": {"weights": str(model), "device": "cpu", "max_sequence_length": 64},
            "workers": {"count": workers, "shutdown_grace_s": 10},
            "limits": {"max_in_flight": max_in_flight, "requests_per_minute": rpm},
        }
        self.config = workdir / "loadtest.yaml"
        self.config.write_text(yaml.safe_dump(config))
        self.log = workdir / "server.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> None:
        exe = Path(sys.executable).with_name("fluxserve")
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXSERVE_")}
        env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [str(exe), "serve", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fluxserve exited with {self.proc.returncode}; see {self.log}")
            try:
                if httpx.get(self.url + "/health-check", timeout=2).json()["status"] == "READY":
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"fluxserve not READY after {timeout} s; see {self.log}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)


# -- command line ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", help="a running server on loopback (default: start one on the tiny model)")
    p.add_argument(
        "--key", action="append", default=[], help="an API key of that server (repeat; with --url)"
    )
    p.add_argument("--creates", type=int, default=1000, help="creates to send in all (default 1000)")
    p.add_argument("--keys", type=int, default=20, help="keys to spread them over (default 20)")
    p.add_argument("--burst", type=int, default=5, help="creates each key sends at once (default 5)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between bursts (default 1)")
    p.add_argument("--timeout", type=float, default=600, help="stop everything after this many seconds")
    p.add_argument(
        "--model", type=Path, help="diffusers folder for the server we start (default: write the tiny one)"
    )
    p.add_argument("--workers", type=int, default=1, help="worker processes of the server we start")
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=10,
        help="limits.max_in_flight of the server we start (default 10, the default)",
    )
    p.add_argument(
        "--rpm", type=int, default=60, help="limits.requests_per_minute of the server we start (default 60)"
    )
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)
    if args.creates < 1 or args.keys < 1 or args.burst < 1 or args.creates > 100_000:
        p.error("--creates (1..100000), --keys and --burst must be positive")
    if args.url and not is_loopback_host(urlsplit(args.url).hostname or ""):
        p.error("--url must be a loopback address (this tool is not for load-testing other hosts)")
    if args.url and not args.key:
        p.error("--url needs at least one --key")
    return args


def report(figures: Figures, keys: int) -> str:
    lat = figures.create_latency_ms
    lines = [
        f"creates sent:            {figures.creates_sent} from {keys} keys",
        f"accepted (200):          {figures.accepted}",
        f"refused (429):           {figures.refused_429} "
        f"(without Retry-After: {figures.refused_without_retry_after})",
        f"5xx:                     {figures.server_errors_5xx}",
        f"other statuses:          {figures.other_statuses or 'none'}",
        f"transport errors:        {figures.transport_errors} {figures.transport_error_kinds or ''}",
        f"accepted but lost:       {figures.accepted_but_lost}",
        f"accepted ended as:       {figures.outcomes}",
        f"keys whose list differs: {figures.listed_mismatch_keys}",
        f"create latency (ms):     p50 {lat.get('p50')}  p90 {lat.get('p90')}  "
        f"p99 {lat.get('p99')}  max {lat.get('max')}",
        f"create phase:            {figures.create_phase_s} s; drain {figures.drain_s} s",
        "RESULT: " + ("ok" if figures.ok else "FAILED"),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    server: OwnServer | None = None
    tmp: tempfile.TemporaryDirectory | None = None
    try:
        if args.url:
            url, keys = args.url.rstrip("/"), list(args.key)
        else:
            keys = [f"loadtest-{i}-{secrets.token_hex(8)}" for i in range(args.keys)]
            tmp = tempfile.TemporaryDirectory(prefix="fluxserve-loadtest-")
            server = OwnServer(Path(tmp.name), args.model, keys, args.workers, args.max_in_flight, args.rpm)
            print(f"starting fluxserve on {server.url} ...", file=sys.stderr)
            server.start()
            url = server.url
        figures = asyncio.run(run_load(url, keys, args.creates, args.burst, args.interval, args.timeout))
    finally:
        if server is not None:
            server.stop()
        if tmp is not None:
            tmp.cleanup()
    print(report(figures, len(keys)))
    if args.json:
        args.json.write_text(json.dumps({**asdict(figures), "ok": figures.ok, "keys": len(keys)}, indent=2))
    return 0 if figures.ok else 1


if __name__ == "__main__":
    sys.exit(main())
