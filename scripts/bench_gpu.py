#!/usr/bin/env python
"""Benchmark the fast and lean modes: speed, peak memory, warm-up, cold start and pixel change.

Each mode is a row of MODES: a name, overrides of the model's spec, overrides of the request.
Every mode runs in its own process through the real code (``prepare_model`` and
``FluxGenerator.generate``), so a mode this machine cannot run is refused the way the server
refuses it. Per mode: seconds per image (median of the timed runs), peak VRAM
(``torch.cuda.max_memory_allocated``; n/a on the CPU), warm-up (the first call), cold start (a
second process, same compile cache: start to first image) and PSNR against the bf16 eager image
of the same seed. Then num_outputs=4 batched against one after another, per size.

CPU (default): the tiny random model at 512x512, 8 steps: relative figures only.

    .venv/bin/python scripts/bench_gpu.py

GPU (``--gpu-shapes``): FLUX.1-dev's exact shapes with random weights, built on the GPU
(bench_pipeline.py's builder), 1024x1024, 28 steps.

    python scripts/bench_gpu.py --gpu-shapes --json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# (name, spec overrides, input overrides).
MODES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("bf16 eager", {}, {}),
    ("bf16 + compile", {"compile": True}, {}),
    ("go_fast compile", {"go_fast": {"compile": True}}, {"go_fast": True}),
    ("go_fast fp8 + compile", {"go_fast": {"quantize": "fp8", "compile": True}}, {"go_fast": True}),
    (
        "go_fast fp8 + step cache",
        {"go_fast": {"quantize": "fp8"}, "step_cache": {"method": "first_block"}},
        {"go_fast": True},
    ),
    ("step cache first_block", {"step_cache": {"method": "first_block", "applies_to": "all"}}, {}),
    ("step cache taylorseer", {"step_cache": {"method": "taylorseer", "applies_to": "all"}}, {}),
    ("step cache mag", {"step_cache": {"method": "mag", "applies_to": "all"}}, {}),
    ("model offload", {"offload": "model"}, {}),
    ("sequential offload", {"offload": "sequential"}, {}),
    ("group offload", {"offload": "group"}, {}),
    ("nf4 + model offload", {"quantize_transformer": "nf4", "offload": "model"}, {}),
    ("fp8 layerwise", {"layerwise_casting": "fp8"}, {}),
    ("vae tiling", {"vae_tiling": True}, {}),
]
REFERENCE = "bf16 eager"

# What the work set out to reach on an H100/H200-class GPU at 1024x1024, 28 steps (FLUX.1-dev).
TARGETS = {
    "bf16 eager": "<= 6.6 s (published H100), ~34 GB peak",
    "bf16 + compile": "<= 4.2 s",
    "go_fast compile": "<= 4.2 s (compile alone; fp8 needs compute capability 8.9+)",
    "go_fast fp8 + compile": "<= 2.7 s",
    "go_fast fp8 + step cache": "<= 2.0 s, PSNR >= 25 dB against bf16 eager",
    "step cache first_block": "~1.5-2x fewer block passes, PSNR >= 30 dB",
    "step cache taylorseer": "~1.5-2x faster, PSNR >= 30 dB",
    "step cache mag": "~1.5-2x faster, PSNR >= 30 dB",
    "model offload": "<= 23 GB peak",
    "sequential offload": "fits 12 GB",
    "group offload": "fits 16 GB, faster than sequential",
    "nf4 + model offload": "<= 12 GB peak (published: 12.4 GB with T5 in 4-bit too)",
    "fp8 layerwise": "~half the transformer's memory (published with offload: 15.6 GB)",
    "vae tiling": "lower peak than eager at 1024x1024, same speed within 10%",
}


# =============================================================================================
# One mode, in its own process
# =============================================================================================


def _build_pipe(gpu_shapes: bool, spec):
    """The pipeline and where its weights came from: the tiny model (CPU) or FLUX.1-dev shapes."""
    from diffusers import FluxPipeline

    from pipelines.loading import ResolvedWeights, check_cuda_options, ensure_tiny_model, resolve_dtype

    device = "cuda" if gpu_shapes else "cpu"
    check_cuda_options(spec, device)  # refused here as load_model refuses it
    dtype = resolve_dtype(spec, device)
    if gpu_shapes:
        from scripts.bench_pipeline import build_flux_shapes_pipeline, quantize_transformer_nf4

        # Built where the memory mode wants the weights to start.
        home = "cuda" if spec.offload == "none" and spec.quantize_transformer == "none" else "cpu"
        pipe = build_flux_shapes_pipeline(home, dtype, seed=0)
        if spec.quantize_transformer == "nf4":
            pipe.transformer.to("cuda")
            quantize_transformer_nf4(pipe.transformer, dtype)
        return pipe, device, dtype, ResolvedWeights(Path("flux-shapes"), False, "random")
    folder = ensure_tiny_model(Path(tempfile.gettempdir()) / "fluxserve-bench-tiny")
    pipe = FluxPipeline.from_pretrained(folder, torch_dtype=dtype, local_files_only=True)
    return pipe, device, dtype, ResolvedWeights(folder, True, "tiny")


def run_child(args: argparse.Namespace) -> int:
    """One mode: load, first call (warm-up), timed calls; prints one ``RESULT {json}`` line."""
    import torch

    from pipelines.errors import ModelLoadError
    from pipelines.generate import FluxGenerator
    from pipelines.inputs import parse_inputs
    from pipelines.loading import _quiet_libraries, prepare_model
    from pipelines.spec import ModelSpec

    started = time.perf_counter()
    _quiet_libraries()
    job = json.loads(args.child)
    result: dict[str, Any] = {"mode": job["name"]}
    try:
        spec = ModelSpec(**{"dtype": "bfloat16" if args.gpu_shapes else "float32", **job["spec"]})
        pipe, device, dtype, weights = _build_pipe(args.gpu_shapes, spec)
        model = prepare_model(pipe, spec, device, dtype, weights)
    except (ModelLoadError, ValueError) as exc:
        print("RESULT " + json.dumps({**result, "error": _short_reason(exc)}), flush=True)
        return 0
    generator = FluxGenerator(model)
    raw = {**job["inputs"], "prompt": "a red fox in the snow", "seed": 1234, "output_format": "png"}
    raw.update(args.size_inputs)
    request = parse_inputs(raw)
    cuda = device.startswith("cuda")

    def once(req) -> tuple[float, Any]:
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = generator.generate(req, embed_parameters=False)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t, out

    if job.get("batch"):
        for batched in (False, True):
            model.spec = model.spec.model_copy(update={"batch_outputs": batched})
            req = parse_inputs({**raw, "num_outputs": 4})
            once(req)
            result["batched_s" if batched else "sequential_s"] = round(
                statistics.median(once(req)[0] for _ in range(args.repeats)), 3
            )
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    first, out = once(request)
    result["warmup_s"] = round(first, 2)
    result["start_to_first_image_s"] = round(time.perf_counter() - started, 2)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = [once(request)[0] for _ in range(args.repeats)]
    result["seconds_per_image"] = round(statistics.median(times), 3)
    result["peak_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2) if cuda else None
    Path(args.image_out).write_bytes(out.images[0].data)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def _short_reason(exc: Exception) -> str:
    """One line: the CUDA option refused, or the first config error with its field."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        return f"{'.'.join(str(part) for part in first['loc'])}: {first['msg']}"
    text = str(exc).strip()
    if "needs a CUDA GPU" in text:
        return "needs CUDA: " + text.split(" needs a CUDA GPU")[0]
    return text[:200]


# =============================================================================================
# The parent: every mode, the table
# =============================================================================================


def _spawn(args, job: dict, image_out: Path, cache_dir: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job)]
    cmd += ["--repeats", str(args.repeats), "--image-out", str(image_out)]
    cmd += ["--size", args.size, "--steps", str(args.steps)]
    cmd += ["--gpu-shapes"] if args.gpu_shapes else []
    from pipelines.compile_cache import environment

    env = {**os.environ, **environment(cache_dir), "HF_HUB_OFFLINE": "1"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"mode": job["name"], "error": f"timed out after {args.timeout} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1][len("RESULT ") :])
    tail = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()][-1:]
    return {"mode": job["name"], "error": f"exit {proc.returncode}: " + " | ".join(tail)[:200]}


def _psnr(a: bytes, b: bytes) -> float | None:
    import numpy as np
    from PIL import Image

    x, y = (np.asarray(Image.open(io.BytesIO(d)).convert("RGB"), dtype=np.float64) / 255 for d in (a, b))
    if x.shape != y.shape:
        return None
    mse = float(np.mean((x - y) ** 2))
    return float("inf") if mse == 0 else round(10 * np.log10(1 / mse), 1)


def run(args: argparse.Namespace) -> int:
    args.size_inputs = _size_inputs(args)
    names = [n for n, _, _ in MODES]
    wanted = args.modes.split(",") if args.modes else names
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        work = Path(tmp)
        images: dict[str, bytes] = {}
        for i, (name, spec, inputs) in enumerate(MODES):
            if name not in wanted and name != REFERENCE:
                continue
            job = {"name": name, "spec": spec, "inputs": inputs}
            image, cache = work / f"{i}.png", work / f"inductor-{i}"
            row = _spawn(args, job, image, cache)
            if "error" not in row:
                images[name] = image.read_bytes()
                if spec.get("compile") or spec.get("go_fast", {}).get("compile"):
                    again = _spawn(args, job, work / f"{i}-again.png", cache)  # compile cache reused
                    row["cold_start_s"] = again.get("start_to_first_image_s", again.get("error"))
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
        for row in rows:
            if row["mode"] in images and REFERENCE in images:
                row["psnr_db"] = _psnr(images[row["mode"]], images[REFERENCE])
        batch_rows = []
        if not args.skip_batch:
            for size in args.batch_sizes.split(","):
                sized = argparse.Namespace(**{**vars(args), "size": size})
                sized.size_inputs = _size_inputs(sized)
                job = {"name": f"num_outputs=4 at {size}", "spec": {}, "inputs": {}, "batch": True}
                batch_rows.append(_spawn(sized, job, work / "batch.png", work / "inductor-batch"))
    _print_table(args, rows, batch_rows)
    if args.json:
        print(json.dumps({"modes": rows, "batching": batch_rows}, indent=2))
    return 0


def _size_inputs(args) -> dict:
    if args.size == "1024":
        return {"aspect_ratio": "1:1", "megapixels": "1", "num_inference_steps": args.steps}
    if args.size == "512":
        return {"aspect_ratio": "1:1", "megapixels": "0.25", "num_inference_steps": args.steps}
    raise SystemExit("--size: 512 or 1024")


def _fmt(value, spec: str = ".2f") -> str:
    if value is None:
        return "n/a"
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def _print_table(args, rows: list[dict], batch_rows: list[dict]) -> None:
    import torch

    where = (
        torch.cuda.get_device_name(0)
        if args.gpu_shapes
        else f"CPU ({platform.machine()}, {os.cpu_count()} cores)"
    )
    print(
        f"# {where}; torch {torch.__version__}; {args.size}x{args.size}, {args.steps} steps; "
        f"median of {args.repeats}; "
        + ("FLUX.1-dev shapes, bf16" if args.gpu_shapes else "tiny model, float32 (bf16 rows run float32)")
    )
    head = f"{'mode':<24}{'s/image':>9}{'peak GB':>9}{'warm-up s':>11}{'cold s':>8}{'PSNR dB':>9}  target"
    print(head)
    for row in rows:
        target = TARGETS.get(row["mode"], "")
        if "error" in row:
            failed = "" if row["error"].startswith("needs CUDA") else "failed: "
            print(f"{row['mode']:<24}  {failed}{row['error']}  [target: {target}]")
            continue
        print(
            f"{row['mode']:<24}{_fmt(row['seconds_per_image'], '.3f'):>9}{_fmt(row['peak_gb']):>9}"
            f"{_fmt(row['warmup_s']):>11}{_fmt(row.get('cold_start_s', '-')):>8}"
            f"{_fmt(row.get('psnr_db'), '.1f'):>9}  {target}"
        )
    for row in batch_rows:
        if "error" in row:
            print(f"{row['mode']}: failed: {row['error']}")
            continue
        faster = "batched" if row["batched_s"] < row["sequential_s"] else "one after another"
        print(
            f"{row['mode']}: batched {row['batched_s']:.3f} s, one after another "
            f"{row['sequential_s']:.3f} s -> {faster} is faster"
        )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--gpu-shapes", action="store_true", help="FLUX.1-dev shapes with random weights on CUDA")
    p.add_argument("--size", default=None, help="512 or 1024 (default: 1024 on the GPU, 512 on the CPU)")
    p.add_argument("--steps", type=int, default=None, help="default: 28 on the GPU, 8 on the CPU")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per mode")
    p.add_argument("--modes", default="", help="comma-separated mode names (default: all)")
    p.add_argument("--batch-sizes", default=None, help="sizes for the num_outputs=4 comparison")
    p.add_argument("--skip-batch", action="store_true", help="leave out the batching comparison")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per mode's process")
    p.add_argument("--json", action="store_true", help="also print the results as JSON")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--image-out", default=None, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.size = args.size or ("1024" if args.gpu_shapes else "512")
    args.steps = args.steps or (28 if args.gpu_shapes else 8)
    args.batch_sizes = args.batch_sizes or ("1024,512" if args.gpu_shapes else "512,1024")
    if args.child:
        args.size_inputs = _size_inputs(args)
        return run_child(args)
    if args.gpu_shapes:
        import torch

        if not torch.cuda.is_available():
            print("error: --gpu-shapes needs a CUDA GPU; torch sees none", file=sys.stderr)
            return 2
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
