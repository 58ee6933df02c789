#!/usr/bin/env python
"""Cold start of a compiled model: the first start (empty compile cache) against the second
(the cache the first one left in the data folder), each in a fresh process as a worker would be.

Each start loads the model with ``go_fast: {compile: true}`` (or ``--fp8`` for the fp8 copy on a
GPU), loads the compile artifacts of a previous start if any, runs the worker's warm-up (every
output size, img2img, the eager mode) and saves the artifacts, exactly as a worker does.

    .venv/bin/python scripts/bench_cold_start.py                   # tiny model, CPU
    .venv/bin/python scripts/bench_cold_start.py --gpu-shapes      # FLUX.1-dev's shapes, random weights
    .venv/bin/python scripts/bench_cold_start.py --gpu-shapes --fp8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def child(args: argparse.Namespace) -> dict:
    from pipelines import compile_cache

    folder = compile_cache.use_folder(args.cache_dir)  # before torch is imported, as in the worker
    started = time.perf_counter()
    import torch

    from pipelines.spec import ModelSpec
    from pipelines.warmup import warm_up_cached

    go_fast = {"quantize": "fp8" if args.fp8 else "none", "compile": True}
    if args.gpu_shapes:
        sys.path.insert(0, str(ROOT / "scripts"))
        import bench_pipeline
        from diffusers import FluxImg2ImgPipeline

        from pipelines.loading import LoadedModel, ResolvedWeights, _run_modes

        spec = ModelSpec(device="cuda", dtype="bfloat16", go_fast=go_fast)
        pipe = bench_pipeline.build_flux_shapes_pipeline("cuda", torch.bfloat16, seed=0)
        img2img = FluxImg2ImgPipeline.from_pipe(pipe)
        model = LoadedModel(
            spec,
            pipe,
            img2img,
            "cuda",
            torch.bfloat16,
            ResolvedWeights(folder, False, "random FLUX.1-dev shapes"),
        )
        model.modes = _run_modes(spec, pipe, img2img)
        model.compiled = spec.compiles_standard_transformer
    else:
        from pipelines.loading import default_tiny_dir, ensure_tiny_model, load_model

        tiny = ensure_tiny_model(default_tiny_dir())
        spec = ModelSpec(weights=str(tiny), device="cpu", go_fast=go_fast)
        model = load_model(spec)
    loaded = time.perf_counter()
    report = warm_up_cached(model, folder)
    return {
        "load_s": loaded - started,
        "warmup_s": report.seconds,
        "warmup_runs": report.runs,
        "per_mode_s": report.per_mode_s,
        "artifacts_hit": report.compile_cache == "hit",
        "artifacts_bytes": report.artifacts_bytes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gpu-shapes", action="store_true", help="FLUX.1-dev's shapes on the GPU")
    parser.add_argument("--fp8", action="store_true", help="go_fast with the fp8 copy (GPU only)")
    parser.add_argument("--cache-dir", help="compile cache folder (default: a new temporary one)")
    parser.add_argument("--starts", type=int, default=2, help="process starts in a row (default 2)")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="fluxserve-compile-cache-")
    results = []
    for _ in range(args.starts):
        command = [sys.executable, __file__, "--child", "--cache-dir", cache_dir]
        command += ["--gpu-shapes"] if args.gpu_shapes else []
        command += ["--fp8"] if args.fp8 else []
        done = subprocess.run(
            command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=ROOT
        )
        if done.returncode != 0:
            sys.exit(f"a start failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    if args.json:
        print(json.dumps({"cache_dir": cache_dir, "starts": results}, indent=2))
        return
    print(f"compile cache: {cache_dir}")
    print(f"{'start':>5} {'load s':>8} {'warm-up s':>10} {'runs':>5} {'artifacts':>10}")
    for n, r in enumerate(results, 1):
        state = "hit" if r["artifacts_hit"] else "miss"
        print(f"{n:>5} {r['load_s']:>8.1f} {r['warmup_s']:>10.1f} {r['warmup_runs']:>5} {state:>10}")
    if len(results) > 1:
        print(f"second start's warm-up / first's: {results[1]['warmup_s'] / results[0]['warmup_s']:.2f}")


if __name__ == "__main__":
    main()
