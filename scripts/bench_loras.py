#!/usr/bin/env python
"""Benchmark LoRA adapters: what a first download, a switch between adapters and LoRA layers cost,
against one generation, on one loaded pipeline in this process.

CPU mode (default): the tiny random FLUX pipeline (float32), its tiny LoRAs (``pipelines.tiny_lora``).
Only the ratios mean anything here: the tiny model's generation is far cheaper than the real one's.

    .venv/bin/python scripts/bench_loras.py --size 512 --steps 4 --repeats 5

GPU mode (``--gpu-shapes``, needs CUDA): FLUX.1-dev's exact shapes with random weights
(``bench_pipeline.build_flux_shapes_pipeline``), bf16, 1024x1024 28 steps, rank-16 adapters.

    python scripts/bench_loras.py --gpu-shapes --rank 16 --repeats 3

Figures, each the median of ``--repeats`` runs unless said otherwise:

- ``generate``: one generation without LoRA, and with one adapter active (peft's LoRA layers
  add their low-rank products on every step; ``--compile`` runs them in the compiled graph);
- ``first download``: an adapter URL fetched through the worker's path (the SSRF-safe egress
  client over loopback, checked, committed to a fresh cache), for the tiny adapter itself and for a
  ``--download-mb`` file (the per-MB cost a real 50-300 MB adapter pays), then the cache hit;
- ``activate``: a cached file made active (read, checked, loaded into the transformer), the switch
  to an adapter already loaded (``set_adapters`` only), two adapters at once, and back to none.

``--compile``: the transformer's repeated blocks are compiled with the LoRA hotswap slots in place;
adapters are then swapped with ``torch._dynamo.config.error_on_recompile`` on, so a swap that would
recompile fails the run instead of passing slowly. Compile on the CPU takes ~40 s first.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PROMPT = "a photo of a red fox sitting in the snow, golden hour, shallow depth of field"


def median_of(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def synthetic_safetensors(path: Path, megabytes: int) -> Path:
    """A valid safetensors file of about ``megabytes`` MiB (one float32 tensor), for the download figure."""
    values = megabytes * 2**20 // 4
    header = json.dumps({"w": {"dtype": "F32", "shape": [values], "data_offsets": [0, 4 * values]}}).encode()
    header += b" " * (-len(header) % 8)
    with path.open("wb") as fh:
        fh.write(len(header).to_bytes(8, "little") + header)
        chunk = b"\0" * 2**20
        for _ in range(megabytes):
            fh.write(chunk)
    return path


class FolderServer:
    """The files of a folder over http on 127.0.0.1 (the adapter host of the download figure)."""

    def __init__(self, folder: Path) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                data = (folder / self.path.lstrip("/")).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def download_figures(files: dict[str, Path], work: Path, repeats: int) -> dict[str, Any]:
    """First download (fresh cache each time) and cache hit, through the worker's resolver."""
    from pipelines.loras.resolve import AdapterFilesConfig
    from pipelines.loras.sources import parse_adapter_source
    from server.workers.adapter_downloads import adapter_files

    server = FolderServer(work)
    out: dict[str, Any] = {}
    try:
        for label, path in files.items():
            source = parse_adapter_source(f"{server.base}/{path.name}", allow_http=True)
            firsts, hits = [], []
            for i in range(repeats):
                cache_dir = work / f"cache-{label}-{i}"
                config = AdapterFilesConfig(
                    adapter_dir=str(work / "none"),
                    cache_dir=str(cache_dir),
                    cache_max_bytes=2**40,
                    max_download_bytes=2**40,
                    download_timeout_s=600,
                    allow_http=True,
                    allow_private_addresses=True,
                )
                resolver = adapter_files(config)
                start = time.perf_counter()
                with resolver.open(source):
                    pass
                firsts.append(time.perf_counter() - start)
                start = time.perf_counter()
                with resolver.open(source):
                    pass
                hits.append(time.perf_counter() - start)
            out[label] = {
                "bytes": path.stat().st_size,
                "first_download_s": statistics.median(firsts),
                "cache_hit_s": statistics.median(hits),
            }
    finally:
        server.close()
    return out


def build_model(args: argparse.Namespace, work: Path):
    """The LoadedModel to measure on: the tiny model (CPU) or FLUX.1-dev's shapes (GPU)."""
    from pipelines.loading import LoadedModel, ResolvedWeights, compile_transformer, load_model
    from pipelines.spec import ModelSpec

    if not args.gpu_shapes:
        from pipelines.tiny import write_tiny_model

        folder = write_tiny_model(work / "tiny")
        spec = ModelSpec(
            weights=str(folder), device="cpu", dtype="float32", max_sequence_length=64, compile=args.compile
        )
        return load_model(spec)

    import bench_pipeline  # scripts/: FLUX.1-dev's shapes with random weights on the GPU
    import torch

    pipe = bench_pipeline.build_flux_shapes_pipeline("cuda", torch.bfloat16, seed=0)
    spec = ModelSpec(device="cuda", dtype="bfloat16", compile=args.compile)
    model = LoadedModel(
        spec, pipe, None, "cuda", torch.bfloat16, ResolvedWeights(work, False, "random FLUX.1-dev shapes")
    )
    if args.compile:
        compile_transformer(pipe.transformer)  # traces on the first call: the hotswap slots go in before it
        model.compiled = True
    return model


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from pipelines.generate import FluxGenerator
    from pipelines.inputs import FluxInputs
    from pipelines.loras.adapters import LoraOptions, LoraRequest
    from pipelines.tiny_lora import write_tiny_lora

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-loras-"))
    model = build_model(args, work)
    sync = torch.cuda.synchronize if args.gpu_shapes else (lambda: None)
    generator = FluxGenerator(model, LoraOptions(max_loaded=args.max_loaded, hotswap_max_rank=args.rank))
    size = args.gpu_size if args.gpu_shapes else args.size
    steps = args.gpu_steps if args.gpu_shapes else args.steps
    inputs = FluxInputs.model_construct(
        **{
            **FluxInputs(prompt=PROMPT).model_dump(),
            "num_inference_steps": steps,
            "seed": 1,
            "output_format": "png",
        }
    )
    # Sizes come from the contract's table: 1:1 at 1 megapixel (1024) or 0.25 (512).
    inputs = inputs.model_copy(update={"aspect_ratio": "1:1", "megapixels": "1" if size == 1024 else "0.25"})

    transformer = model.pipe.transformer
    adapters = [
        write_tiny_lora(transformer, work / f"adapter-{i}.safetensors", seed=i, rank=args.rank)
        for i in range(args.repeats + 3)
    ]
    requests = [LoraRequest(f"bench:{p.name}", p, 1.0, p.name) for p in adapters]

    def generate(loras: list) -> None:
        generator.generate(inputs, loras=loras)
        sync()

    recompile_guard = (
        torch._dynamo.config.patch(error_on_recompile=True) if args.compile else contextlib.nullcontext()
    )
    figures: dict[str, Any] = {}
    start = time.perf_counter()
    generate([requests[0]])  # warm-up; with --compile, the one compile (slots included)
    generate([])
    figures["warmup_s"] = time.perf_counter() - start
    with recompile_guard:
        figures["generate_s"], _ = median_of(lambda: generate([]), args.repeats)
        figures["generate_with_lora_s"], _ = median_of(lambda: generate([requests[0]]), args.repeats)

        def activate(batch: list) -> None:
            generator.adapters.activate(batch)
            sync()

        cold = []
        for request in requests[1 : args.repeats + 1]:  # each file once: read, check, load
            start = time.perf_counter()
            activate([request])
            cold.append(time.perf_counter() - start)
        figures["activate_cached_file_s"] = statistics.median(cold)
        last = requests[args.repeats]
        figures["activate_loaded_s"], _ = median_of(lambda: activate([last]), args.repeats)
        pair = [requests[args.repeats - 1], last]
        figures["activate_two_loaded_s"], _ = median_of(lambda: activate(pair), args.repeats)
        off = []
        for _ in range(args.repeats):  # from one adapter active to none, each time
            activate([last])
            start = time.perf_counter()
            activate([])
            off.append(time.perf_counter() - start)
        figures["deactivate_s"] = statistics.median(off)
        generate([requests[1]])  # a generation after the swaps: still the same graph
    figures["recompiles_during_swaps"] = 0 if args.compile else None
    figures["hotswap"] = generator.adapters.hotswap
    figures["adapter_bytes"] = adapters[0].stat().st_size

    downloads = {"adapter": adapters[0]}
    if args.download_mb:
        downloads[f"{args.download_mb}MB"] = synthetic_safetensors(work / "big.safetensors", args.download_mb)
    figures["downloads"] = download_figures(downloads, work, max(1, min(args.repeats, 3)))
    figures["machine"] = _machine(args)
    figures["settings"] = {
        "size": size,
        "steps": steps,
        "rank": args.rank,
        "compile": args.compile,
        "repeats": args.repeats,
    }
    return figures


def _machine(args: argparse.Namespace) -> str:
    import torch

    if args.gpu_shapes:
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def report(figures: dict[str, Any]) -> str:
    gen = figures["generate_s"]
    s = figures["settings"]
    lines = [
        f"machine: {figures['machine']}",
        f"{s['size']}x{s['size']}, {s['steps']} steps, rank {s['rank']} adapters "
        f"({figures['adapter_bytes'] / 1024:.0f} KiB), "
        f"compile {'on (hotswap slots)' if s['compile'] else 'off'}",
        "",
        f"{'figure':44} {'seconds':>10} {'x one generation':>17}",
    ]

    def row(label: str, seconds: float) -> None:
        lines.append(f"{label:44} {seconds:10.4f} {seconds / gen:17.3f}")

    row("generate, no LoRA", gen)
    row("generate, one adapter active", figures["generate_with_lora_s"])
    row("activate a cached file (read + load)", figures["activate_cached_file_s"])
    row("activate an adapter already loaded", figures["activate_loaded_s"])
    row("activate two adapters already loaded", figures["activate_two_loaded_s"])
    row("back to no LoRA", figures["deactivate_s"])
    for label, d in figures["downloads"].items():
        row(f"first download: {label} ({d['bytes'] / 2**20:.2f} MiB)", d["first_download_s"])
        row(f"cache hit: {label}", d["cache_hit_s"])
    if s["compile"]:
        lines.append(f"recompiles during swaps: {figures['recompiles_during_swaps']} (error_on_recompile on)")
    lines.append(f"warm-up (first two generations): {figures['warmup_s']:.1f} s")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--size", type=int, default=512, choices=(512, 1024), help="square side (CPU mode)")
    p.add_argument("--steps", type=int, default=4, help="denoising steps (CPU mode)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rank", type=int, default=16, help="adapter rank (and the hotswap slots' rank)")
    p.add_argument("--max-loaded", type=int, default=4, help="adapters kept loaded")
    p.add_argument("--download-mb", type=int, default=64, help="size of the synthetic download (0: none)")
    p.add_argument("--compile", action="store_true", help="compile the transformer; swap with hotswap")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--gpu-shapes", action="store_true", help="FLUX.1-dev shapes with random weights on CUDA")
    p.add_argument("--gpu-size", type=int, default=1024, choices=(512, 1024))
    p.add_argument("--gpu-steps", type=int, default=28)
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.gpu_shapes:
        import torch

        if not torch.cuda.is_available():
            print("--gpu-shapes needs a CUDA GPU; torch sees none", file=sys.stderr)
            return 2
        sys.path.insert(0, str(Path(__file__).resolve().parent))
    figures = run(args)
    print(json.dumps(figures, indent=2) if args.json else report(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
