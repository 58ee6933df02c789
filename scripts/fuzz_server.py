#!/usr/bin/env python3
"""Fuzz a live server over HTTP with schemathesis, the way a hostile client would.

    python scripts/fuzz_server.py --seed 1 --seed 2            # start a server on the tiny model, two seeds
    python scripts/fuzz_server.py --seed 7 --max-examples 100 --json fuzz.json

It starts ``fluxserve serve`` on a free loopback port (tiny model, one CPU worker, the per-key
limits switched off so requests reach the handlers instead of 429), then, for each seed, runs
``schemathesis run`` over the server's own ``/openapi.json`` with a valid key and, with fewer
examples, without one (the 401 paths). Every request and answer is read back from schemathesis'
HAR report and counted: requests per operation, answers by status, and every 5xx (which must be
none); JSON request bodies sent to the Replicate create routes are counted apart, to show they
are fuzzed with real bodies. Exit status 0 only with no 5xx and no failed check.

Bounded: ``--max-examples`` per operation and phase, everything stops after ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadtest import OwnServer  # noqa: E402 - the load test's server harness

KEY = "fuzz-key-" + os.urandom(6).hex()
CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_headers_conformance,response_schema_conformance"
)
REPLICATE_CREATES = ("/v1/predictions", "/v1/models/black-forest-labs/flux-dev/predictions")


def run_schemathesis(
    url: str, seed: int, examples: int, key: str | None, report_dir: Path, timeout: float
) -> int:
    exe = Path(sys.executable).with_name("schemathesis")
    cmd = [
        str(exe), "run", f"{url}/openapi.json", "--seed", str(seed), "-n", str(examples),
        "--checks", CHECKS, "--report", "har", "--report-dir", str(report_dir), "--no-color",
        "--request-timeout", "90",
    ]  # fmt: skip
    if key:
        cmd += ["-H", f"X-API-Key: {key}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    (report_dir / "output.txt").write_text(done.stdout + done.stderr)
    return done.returncode


def read_har(report_dir: Path) -> list[dict]:
    entries: list[dict] = []
    for har in report_dir.glob("har-*.json"):
        entries += json.loads(har.read_text())["log"]["entries"]
    return entries


def summarize(entries: list[dict]) -> dict:
    by_status: collections.Counter[int] = collections.Counter()
    per_path: collections.Counter[str] = collections.Counter()
    server_errors: list[str] = []
    replicate_bodies = 0
    for e in entries:
        req, status = e["request"], e["response"]["status"]
        path = req["url"].split("://", 1)[-1].split("/", 1)[-1].split("?", 1)[0]
        path = "/" + path
        by_status[status] += 1
        per_path[f"{req['method']} {path}"] += 1
        if status >= 500:
            server_errors.append(f"{req['method']} {req['url']} -> {status}")
        text = (req.get("postData") or {}).get("text") or ""
        if (
            req["method"] == "POST"
            and path.rstrip("/") in REPLICATE_CREATES
            and text.lstrip().startswith("{")
        ):
            replicate_bodies += 1
    return {
        "requests": len(entries),
        "by_status": dict(sorted(by_status.items())),
        "server_errors": server_errors,
        "replicate_create_object_bodies": replicate_bodies,
        "distinct_requests": len(per_path),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, action="append", help="schemathesis seed (repeat; default 1 and 2)")
    p.add_argument(
        "--max-examples", type=int, default=50, help="examples per operation with a key (default 50)"
    )
    p.add_argument("--timeout", type=float, default=1500, help="stop a seed's run after this many seconds")
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--keep", type=Path, help="keep the server's folder and the reports here")
    args = p.parse_args(argv)
    seeds = args.seed or [1, 2]
    results: dict[str, dict] = {}
    failed_checks = False
    with tempfile.TemporaryDirectory(prefix="fluxserve-fuzz-") as tmp:
        work = Path(tmp)
        if args.keep:
            work = args.keep
            work.mkdir(parents=True, exist_ok=True)
        server = OwnServer(work, None, [KEY], workers=1, max_in_flight=0, rpm=0)
        # run-and-wait answers after 5 s with the current state: the queue the fuzzer fills would
        # otherwise hold each such request for the default 300 s.
        config = yaml.safe_load(server.config.read_text()) | {"run_wait_timeout_s": 5}
        server.config.write_text(yaml.safe_dump(config))
        server.start()
        try:
            for seed in seeds:
                for label, key, examples in (("key", KEY, args.max_examples), ("no key", None, 10)):
                    report = work / f"seed{seed}-{label.replace(' ', '')}"
                    t0 = time.monotonic()
                    rc = run_schemathesis(server.url, seed, examples, key, report, args.timeout)
                    figures = summarize(read_har(report)) | {
                        "exit": rc,
                        "seconds": round(time.monotonic() - t0),
                    }
                    results[f"seed {seed}, {label}"] = figures
                    failed_checks |= rc != 0
                    if rc != 0:
                        print((report / "output.txt").read_text()[-6000:], file=sys.stderr)
                        if args.keep:
                            print(f"reports kept in {report}", file=sys.stderr)
                    print(f"seed {seed}, {label}: {json.dumps(figures)}", flush=True)
            alive = server.proc is not None and server.proc.poll() is None
        finally:
            server.stop()
    total_5xx = sum(len(r["server_errors"]) for r in results.values())
    print(f"total requests {sum(r['requests'] for r in results.values())}, 5xx {total_5xx}, "
          f"server alive at the end: {alive}, checks failed: {failed_checks}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if total_5xx == 0 and alive and not failed_checks else 1


if __name__ == "__main__":
    sys.exit(main())
