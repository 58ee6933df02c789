"""`fluxserve generate` and `fluxserve tiny-model`: images and the tiny test model, without a server.

The one part of the CLI that loads torch (when a command runs, not when it is registered).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from server.client.cli import add_input_options


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate images locally (no server)")
    p.add_argument("prompt", help="text to draw (up to 10,000 characters)")
    p.add_argument(
        "--model",
        default="auto",
        help="a diffusers folder, a repo id in the local Hugging Face cache, or auto: FLUX.1-dev from "
        "the cache, else the tiny demo model (default: auto)",
    )
    p.add_argument(
        "--transformer-file",
        default=None,
        help="single-file transformer checkpoint (.safetensors; default: the one in --model's folder)",
    )
    p.add_argument(
        "--config",
        default=None,
        help="take the model spec (its first model) from this YAML config file instead of --model",
    )
    add_input_options(p, image_help="img2img source image file", typed=False)
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="output file; several outputs get -0, -1... before the extension",
    )
    p.set_defaults(func=_cmd_generate)


def _cmd_generate(args: argparse.Namespace) -> int:
    import time

    from tqdm import tqdm

    from pipelines.errors import GenerationError, ModelLoadError
    from pipelines.images import InputImageError, decode_image
    from pipelines.inputs import InvalidInputs, parse_inputs
    from server.client.cli import inputs_from_args, output_paths

    raw = inputs_from_args(args)
    try:
        inputs = parse_inputs(raw)
    except InvalidInputs as exc:
        for field, reason in exc.details.items():
            print(f"error: {field}: {reason}", file=sys.stderr)
        return 2

    source = None
    if args.image:
        try:
            source = decode_image(Path(args.image).read_bytes())
        except (OSError, InputImageError) as exc:
            print(f"error: --image: {exc}", file=sys.stderr)
            return 2

    from pipelines.generate import FluxGenerator
    from pipelines.loading import load_model

    spec = _spec_for_generate(args)
    embed = _embed_parameters(args)
    if embed is None:
        return 2
    try:
        t0 = time.perf_counter()
        model = load_model(spec)
        print(
            f"loaded {model.weights.folder} on {model.device} in {time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
        )
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for w in model.warnings:
        print(f"warning: {w}", file=sys.stderr)

    bar = tqdm(total=None, unit="step", desc="denoising", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        result = FluxGenerator(model).generate(
            inputs, source_image=source, on_progress=progress, embed_parameters=embed
        )
    except GenerationError as exc:
        bar.close()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    bar.close()
    for w in result.warnings:
        if w not in model.warnings:
            print(f"warning: {w}", file=sys.stderr)

    paths = output_paths(args.output, inputs.output_format, len(result.images))
    for path, image in zip(paths, result.images, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image.data)
        print(f"wrote {path} (seed {image.seed})")
    print(
        f"Using seed: {result.seed}; size {result.width}x{result.height}; "
        f"{result.timings.get('predict_time', 0):.2f} s"
    )
    return 0


def _spec_for_generate(args: argparse.Namespace):
    from pipelines.spec import ModelSpec

    if args.config:
        from server.config import load_settings

        spec = load_settings(args.config).model_spec()  # the first configured model
        return spec
    return ModelSpec(weights=args.model, transformer_file=args.transformer_file)


def _embed_parameters(args: argparse.Namespace) -> bool | None:
    """``outputs.embed_parameters`` of --config, or of the environment without one (None: the
    configuration is invalid, and said so)."""
    from server.config import ConfigError, load_settings

    try:
        return load_settings(args.config).outputs.embed_parameters
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def _add_tiny_model(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tiny-model", help="write the tiny random FLUX pipeline (tests, demos, CPU benchmarks)"
    )
    p.add_argument("dir", help="folder to write it to (created if absent; files there are overwritten)")
    p.add_argument("--seed", type=int, default=0, help="seed of its random weights, any integer")
    p.set_defaults(func=_cmd_tiny_model)


def _cmd_tiny_model(args: argparse.Namespace) -> int:
    from pipelines.tiny import write_tiny_model

    out = write_tiny_model(args.dir, seed=args.seed)
    print(f"wrote the tiny random FLUX pipeline to {out} (its images are noise)")
    return 0
