#!/usr/bin/env python
"""What live previews cost: ``FluxGenerator.generate`` on the tiny random FLUX pipeline (CPU)
without previews, with one every 4 steps (the default) and with one every step, interleaved in
one run after a warm-up; the median of each and its ratio to no previews.

Previews are made without the worker's throttle (at most ~2 a second), so every requested step
pays for one: the linear latent-to-RGB product, the resize to ``--max-side`` and WebP encoding.

    .venv/bin/python scripts/bench_previews.py --size 1024 --steps 28 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=1024, help="square output side in pixels (default 1024)")
    p.add_argument("--steps", type=int, default=28, help="denoising steps (default 28)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each mode (default 5)")
    p.add_argument("--max-side", type=int, default=256, help="the previews' longer side (default 256)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own)")
    args = p.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from pipelines.generate import FluxGenerator
    from pipelines.inputs import parse_inputs
    from pipelines.loading import load_model
    from pipelines.previews import PreviewDecoder, PreviewRequest
    from pipelines.spec import ModelSpec
    from pipelines.tiny import write_tiny_model

    with tempfile.TemporaryDirectory(prefix="fluxserve-bench-") as tmp:
        model = load_model(ModelSpec(weights=str(write_tiny_model(Path(tmp) / "tiny")), device="cpu"))
    generator = FluxGenerator(model)
    megapixels = "1" if args.size >= 1024 else "0.25"
    inputs = parse_inputs(
        {"prompt": "a lighthouse at dawn", "megapixels": megapixels, "num_inference_steps": args.steps,
         "seed": 1234, "output_format": "webp"}
    )  # fmt: skip
    decoder = PreviewDecoder(max_side=args.max_side)
    sent: list[int] = []

    def run(every: int | None) -> float:
        previews = None
        if every is not None:
            previews = PreviewRequest(lambda done, total, data: sent.append(len(data)), decoder, every)
        started = time.perf_counter()
        generator.generate(inputs, previews=previews)
        return time.perf_counter() - started

    modes = {"none": None, "every 4 steps": 4, "every step": 1}
    for every in modes.values():
        run(every)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(args.repeats):
        for name, every in modes.items():
            times[name].append(run(every))

    base = statistics.median(times["none"])
    print(
        f"# CPU, tiny model, {args.size}x{args.size} ({megapixels} MP), {args.steps} steps, "
        f"{args.repeats} runs each, torch threads {torch.get_num_threads()}, previews <= {args.max_side} px"
    )
    print(f"{'previews':<15} {'median s':>9} {'ratio':>7}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<15} {median:>9.3f} {median / base:>7.3f}")
    if sent:
        print(f"# a preview is {statistics.median(sent) / 1024:.1f} KiB (median)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
