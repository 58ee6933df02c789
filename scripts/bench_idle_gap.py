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
import re
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_server import Server, pct  # noqa: E402 - a script beside this one

GAP_LINE = re.compile(r"GPU idle ([0-9.]+) ms before (\S+)")
KINDS = [
    {"megapixels": "0.25", "aspect_ratio": "1:1", "output_format": "png"},
    {"megapixels": "1", "aspect_ratio": "1:1", "output_format": "webp"},
]


class GapServer(Server):
    """``fluxserve serve`` with overlap on or off, logging at debug level (the gap lines) to a file."""

    def __init__(self, root: Path, weights: Path, overlap: bool) -> None:
        super().__init__(
            root,
            weights,
            root / "serve.log",
            reads_per_minute=0,
            worker_nice=0,
            log_level="debug",
            extra_workers_config=(f"  overlap_finishing: {str(overlap).lower()}",),
        )

    def run(self, inputs: list[dict]) -> list[str]:
        """Create them all at once, wait for every one; their ids."""
        ids = [self.create(body) for body in inputs]
        for pid in ids:
            self.wait_end(pid)
        return ids

    def gaps_ms(self, ids: list[str]) -> list[float]:
        wanted = set(ids)
        found = [GAP_LINE.search(line) for line in self.log_path.read_text().splitlines()]
        return [float(m[1]) for m in found if m is not None and m[2] in wanted]

    def seconds(self, ids: list[str]) -> float:
        """First created to last completed (the server's clock)."""
        rows = self.rows(ids)
        return max(r["completed_at"] for r in rows) - min(r["created_at"] for r in rows)


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
