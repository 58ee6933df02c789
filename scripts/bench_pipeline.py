#!/usr/bin/env python
"""Benchmark the generation core.

CPU mode (default): on the tiny random FLUX pipeline, time ``FluxGenerator.generate`` against a
bare diffusers call on the *same* loaded pipeline and inputs, interleaved, after a warm-up:

- ``ours``: ``FluxGenerator.generate`` (validation done beforehand, seeds, progress/cancel hook,
  safety stage (none configured), encoding);
- ``bare+encode``: ``pipe(prompt, height, width, num_inference_steps, guidance_scale, generator)``
  for each image, one generator per image (as ours does by default), then Pillow encoding with the
  same settings as ``pipelines.encoding`` — the fair comparison;
- ``bare``: the same diffusers calls without encoding.

    .venv/bin/python scripts/bench_pipeline.py --size 512 --steps 4 --repeats 15

GPU mode (``--gpu-shapes``, needs CUDA): a pipeline with FLUX.1-dev's exact shapes and random
weights, built directly on the GPU (modules created without memory, ``to_empty`` on the GPU in
bfloat16, parameters filled there); seconds per 1024x1024 28-step image and peak VRAM
(``torch.cuda.max_memory_allocated``) for bf16, model CPU offload and nf4 (bitsandbytes). Each mode
runs in its own subprocess so peaks do not leak between modes.

    python scripts/bench_pipeline.py --gpu-shapes --repeats 3

``--check-shapes`` (runs anywhere): counts the parameters of the full-size modules built on the
meta device (no memory) against FLUX.1-dev's published sizes, then builds the GPU mode's pipeline
on the CPU with one layer per stack and runs one 64x64 step through it.
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

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PROMPT = "a photo of a red fox sitting in the snow, golden hour, shallow depth of field"

# FLUX.1-dev's shapes (docs: /work/shared/FLUX_SHAPES.md), as diffusers/transformers name them.
FLUX_DEV_TRANSFORMER = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
FLUX_DEV_T5 = dict(
    d_model=4096,
    d_ff=10240,
    d_kv=64,
    num_heads=64,
    num_layers=24,
    vocab_size=32128,
    feed_forward_proj="gated-gelu",
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    is_gated_act=True,
    dense_act_fn="gelu_new",
    tie_word_embeddings=False,
)
FLUX_DEV_CLIP = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    vocab_size=49408,
    max_position_embeddings=77,
    projection_dim=768,
    hidden_act="quick_gelu",
)
FLUX_DEV_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=16,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.3611,
    shift_factor=0.1159,
    use_quant_conv=False,
    use_post_quant_conv=False,
)
# Published parameter counts (FLUX_SHAPES.md) for --check-shapes.
EXPECTED_PARAMS = {"transformer": 11.9e9, "text_encoder_2": 4.7e9, "text_encoder": 123e6, "vae": 84e6}

PUBLISHED_ANCHORS = [
    ("bf16, eager", "6.57 s; 33.9 GB peak", "sayakpaul/diffusers-torchao README"),
    ("bf16, torch.compile", "4.2-4.5 s", "same; PyTorch 'torch.compile and Diffusers' guide"),
    ("fp8 dynamic quant (torchao) + compile", "2.97-3.24 s", "diffusers-torchao README"),
    ("bf16 + model CPU offload, RTX 4090", "35.4 s at ~22 GB", "HF 'Fast LoRA inference for Flux' blog"),
    (
        "NF4 (bitsandbytes), 50 steps",
        "17.3 GB peak",
        "HF 'Exploring quantization backends in diffusers' blog",
    ),
]


# =============================================================================================
# CPU mode
# =============================================================================================


def resolve_size(text: str) -> tuple[str, str, int, int]:
    """``512``, ``1024`` or ``WxH`` -> (aspect_ratio, megapixels, width, height) from the contract table.

    Text-to-image sizes come only from the table, so the benchmark only offers those."""
    from pipelines.inputs import ASPECT_RATIO_SIZES

    if "x" in text.lower():
        w, h = (int(v) for v in text.lower().split("x"))
    else:
        w = h = int(text)
    for ratio, (tw, th) in ASPECT_RATIO_SIZES.items():
        if (w, h) == (tw, th):
            return ratio, "1", w, h
        if (w, h) == (tw // 2, th // 2):
            return ratio, "0.25", w, h
    choices = sorted(
        {f"{tw}x{th}" for tw, th in ASPECT_RATIO_SIZES.values()}
        | {f"{tw // 2}x{th // 2}" for tw, th in ASPECT_RATIO_SIZES.values()}
    )
    raise SystemExit(f"--size {text}: not a contract size; use one of {', '.join(choices)}")


def pil_encode(image, fmt: str, quality: int) -> bytes:
    """Plain Pillow encoding with the same settings as pipelines.encoding (the bare baseline's)."""
    buf = io.BytesIO()
    if fmt == "png":
        image.save(buf, format="PNG", compress_level=6)
    elif fmt == "jpg":
        image.save(buf, format="JPEG", quality=max(1, min(quality, 100)), optimize=True)
    else:
        image.save(buf, format="WEBP", quality=quality, method=4)
    return buf.getvalue()


def run_cpu(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from pipelines.generate import FluxGenerator
    from pipelines.inputs import parse_inputs
    from pipelines.loading import load_model
    from pipelines.spec import ModelSpec
    from pipelines.tiny import write_tiny_model

    ratio, megapixels, width, height = resolve_size(args.size)
    tmp = None
    if args.model:
        model_dir = Path(args.model)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="fluxserve-bench-")
        model_dir = write_tiny_model(Path(tmp.name) / "tiny")
    model = load_model(ModelSpec(weights=str(model_dir), device="cpu"))
    pipe = model.pipe
    generator = FluxGenerator(model)
    seed = 1234
    n = args.num_outputs
    inputs = parse_inputs(
        {
            "prompt": PROMPT,
            "aspect_ratio": ratio,
            "megapixels": megapixels,
            "num_inference_steps": args.steps,
            "num_outputs": n,
            "guidance": 3.5,
            "seed": seed,
            "output_format": args.format,
            "output_quality": args.quality,
        }
    )

    last: dict[str, object] = {}

    def ours() -> None:
        last["ours"] = generator.generate(inputs)

    def bare(encode: bool):
        def run() -> None:
            out = []
            for i in range(n):
                g = torch.Generator("cpu").manual_seed(seed + i)
                image = pipe(
                    PROMPT,
                    height=height,
                    width=width,
                    num_inference_steps=args.steps,
                    guidance_scale=3.5,
                    generator=g,
                ).images[0]
                out.append(pil_encode(image, args.format, args.quality) if encode else image)
            last["bare+encode" if encode else "bare"] = out

        return run

    variants = {"ours": ours, "bare+encode": bare(True), "bare": bare(False)}
    for fn in variants.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    ours_stages: dict[str, list[float]] = {}
    names = list(variants)
    for r in range(args.repeats):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate: no variant always runs first
        for name in order:
            t0 = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - t0)
            if name == "ours":
                for k, v in last["ours"].timings.items():  # type: ignore[attr-defined]
                    ours_stages.setdefault(k, []).append(v)

    import numpy as np
    from PIL import Image

    ours_bytes = [img.data for img in last["ours"].images]  # type: ignore[attr-defined]
    same = ours_bytes == last["bare+encode"]
    # Ours encodes the prompt once and passes the embeddings; diffusers' own prompt path can differ
    # by a level in a few pixels, so report the pixel difference too.
    max_diff = (
        max(
            int(
                np.abs(
                    np.asarray(Image.open(io.BytesIO(a)).convert("RGB"), dtype=int) - np.asarray(b, dtype=int)
                ).max()
            )
            for a, b in zip(ours_bytes, last["bare"], strict=True)  # type: ignore[arg-type]
        )
        if args.format == "png"
        else None
    )
    med = {k: statistics.median(v) for k, v in times.items()}
    summary = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "size": f"{width}x{height}",
        "steps": args.steps,
        "num_outputs": n,
        "format": args.format,
        "repeats": args.repeats,
        "median_s": med,
        "min_s": {k: min(v) for k, v in times.items()},
        "ours_stage_median_s": {k: statistics.median(v) for k, v in ours_stages.items()},
        "ratio_ours_over_bare_encode": med["ours"] / med["bare+encode"],
        "ratio_ours_over_bare": med["ours"] / med["bare"],
        # Robust to other load on the machine: fastest runs, and the median of same-round ratios.
        "ratio_min_ours_over_bare_encode": min(times["ours"]) / min(times["bare+encode"]),
        "ratio_paired_median_ours_over_bare_encode": statistics.median(
            a / b for a, b in zip(times["ours"], times["bare+encode"], strict=True)
        ),
        "identical_output_bytes": same,
        "max_pixel_difference_png": max_diff,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"# CPU, tiny model: {width}x{height}, {args.steps} steps, {n} image(s), {args.format}, "
            f"{args.repeats} interleaved repeats after a warm-up"
        )
        print(f"# {summary['machine']}; torch {torch.__version__}; load average {summary['load_average']}")
        print(f"{'variant':<14}{'median s':>10}{'min s':>10}")
        for k in names:
            print(f"{k:<14}{med[k]:>10.3f}{summary['min_s'][k]:>10.3f}")
        stages = summary["ours_stage_median_s"]
        print("ours, stage medians: " + ", ".join(f"{k} {v:.3f} s" for k, v in stages.items()))
        print(
            f"ratio ours / bare+encode: medians {summary['ratio_ours_over_bare_encode']:.3f}, "
            f"fastest runs {summary['ratio_min_ours_over_bare_encode']:.3f}, "
            f"median of per-round ratios {summary['ratio_paired_median_ours_over_bare_encode']:.3f}  "
            "(target <= 1.05)"
        )
        print(f"ratio ours / bare (no encoding): {summary['ratio_ours_over_bare']:.3f}")
        print(
            f"identical output bytes (ours vs bare+encode): {'yes' if same else 'no'}"
            + (f"; max pixel difference {max_diff} level(s)" if max_diff is not None else "")
        )
    if tmp is not None:
        tmp.cleanup()
    return 0


# =============================================================================================
# FLUX.1-dev shapes with random weights (GPU mode and --check-shapes)
# =============================================================================================


def _shape_modules(*, num_layers: int, num_single_layers: int, t5_layers: int, clip_layers: int, clip_ids):
    """The four FLUX.1-dev modules, parameters on the meta device (no memory), buffers real (CPU)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    bos, eos, pad = clip_ids
    with init_empty_weights(include_buffers=False):
        transformer = FluxTransformer2DModel(
            **{**FLUX_DEV_TRANSFORMER, "num_layers": num_layers, "num_single_layers": num_single_layers}
        )
        text_encoder_2 = T5EncoderModel(
            T5Config(
                **{**FLUX_DEV_T5, "num_layers": t5_layers},
                pad_token_id=0,
                eos_token_id=1,
                decoder_start_token_id=0,
            )
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                **{**FLUX_DEV_CLIP, "num_hidden_layers": clip_layers},
                bos_token_id=bos,
                eos_token_id=eos,
                pad_token_id=pad,
            )
        )
        vae = AutoencoderKL(**FLUX_DEV_VAE)
    # One embedding shared by `shared` and `encoder.embed_tokens`, as a from_pretrained load ties them.
    text_encoder_2.set_input_embeddings(text_encoder_2.shared)
    return {
        "transformer": transformer,
        "text_encoder_2": text_encoder_2,
        "text_encoder": text_encoder,
        "vae": vae,
    }


def _materialize(module, device: str, dtype, generator) -> None:
    """Meta parameters -> uninitialised memory on ``device`` in ``dtype``, then small random values.

    Buffers (position ids and the like) were built for real; they are kept across ``to_empty``."""
    import torch

    module.to(dtype)  # free on meta; also casts floating buffers
    buffers = {name: buf.detach().clone() for name, buf in module.named_buffers()}
    module.to_empty(device=device)
    for name, buf in buffers.items():
        owner_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        owner._buffers[leaf] = buf.to(device)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1:
                # norm scales 1, everything else (biases, norm shifts) 0: keeps activations tame
                p.fill_(1.0 if ("norm" in name and name.endswith("weight")) else 0.0)
            else:
                fan_in = p[0].numel()
                p.normal_(0.0, fan_in**-0.5, generator=generator)
    module.eval().requires_grad_(False)


def build_flux_shapes_pipeline(
    device: str,
    dtype,
    *,
    num_layers: int = 19,
    num_single_layers: int = 38,
    t5_layers: int = 24,
    clip_layers: int = 12,
    seed: int = 0,
):
    """A FluxPipeline with FLUX.1-dev's shapes and random weights, built directly on ``device``.

    Tokenizers are the tiny ones (token ids fit the real vocabularies; T5 still pads to 512 tokens,
    so every shape matches the real model); the scheduler has FLUX.1-dev's configuration."""
    import torch
    from diffusers import FluxPipeline

    from pipelines.tiny import build_tiny_pipeline

    tiny = build_tiny_pipeline()
    clip_tok, t5_tok = tiny.tokenizer, tiny.tokenizer_2
    assert len(clip_tok) <= FLUX_DEV_CLIP["vocab_size"] and len(t5_tok) <= FLUX_DEV_T5["vocab_size"]
    modules = _shape_modules(
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        t5_layers=t5_layers,
        clip_layers=clip_layers,
        clip_ids=(clip_tok.bos_token_id, clip_tok.eos_token_id, clip_tok.pad_token_id),
    )
    gen = torch.Generator(device).manual_seed(seed)
    for module in modules.values():
        _materialize(module, device, dtype, gen)
    pipe = FluxPipeline(scheduler=tiny.scheduler, tokenizer=clip_tok, tokenizer_2=t5_tok, **modules)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def quantize_transformer_nf4(transformer, compute_dtype) -> int:
    """Replace the transformer blocks' Linear layers by bitsandbytes NF4 layers, on the GPU.

    The blocks hold >99% of the parameters; embedders and the output projection stay bf16 (as a
    diffusers BitsAndBytesConfig load leaves some modules unquantized too). Returns the count."""
    import bitsandbytes as bnb
    import torch

    count = 0
    for stack in (transformer.transformer_blocks, transformer.single_transformer_blocks):
        for block in stack:
            for name, lin in list(block.named_modules()):
                if not isinstance(lin, torch.nn.Linear):
                    continue
                q = bnb.nn.Linear4bit(
                    lin.in_features,
                    lin.out_features,
                    bias=lin.bias is not None,
                    compute_dtype=compute_dtype,
                    quant_type="nf4",
                    device="meta",
                )
                q.weight = bnb.nn.Params4bit(lin.weight.data, requires_grad=False, quant_type="nf4").cuda(
                    lin.weight.device
                )
                if lin.bias is not None:
                    q.bias = torch.nn.Parameter(lin.bias.data, requires_grad=False)
                parent_name, _, leaf = name.rpartition(".")
                parent = block.get_submodule(parent_name) if parent_name else block
                setattr(parent, leaf, q)
                del lin
                count += 1
        torch.cuda.empty_cache()
    return count


def _param_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _quiet() -> None:
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()


def run_check_shapes(args: argparse.Namespace) -> int:
    """Full-size meta modules: parameter counts; then a one-layer-per-stack pipeline on the CPU."""
    import torch

    _quiet()

    from pipelines.tiny import build_tiny_pipeline

    tiny = build_tiny_pipeline()
    ids = (tiny.tokenizer.bos_token_id, tiny.tokenizer.eos_token_id, tiny.tokenizer.pad_token_id)
    full = _shape_modules(num_layers=19, num_single_layers=38, t5_layers=24, clip_layers=12, clip_ids=ids)
    ok = True
    print("full-size modules on the meta device (no memory):")
    for name, module in full.items():
        n = _param_count(module)
        want = EXPECTED_PARAMS[name]
        good = abs(n - want) / want < 0.03
        ok &= good
        print(
            f"  {name:<15} {n / 1e9:8.3f} B params ({n * 2 / 1e9:6.2f} GB bf16); "
            f"published ~{want / 1e9:.3f} B "
            f"{'ok' if good else 'MISMATCH'}"
        )
    del full

    t0 = time.perf_counter()
    pipe = build_flux_shapes_pipeline(
        "cpu", torch.float32, num_layers=1, num_single_layers=1, t5_layers=1, clip_layers=1
    )
    built = time.perf_counter() - t0
    t0 = time.perf_counter()
    image = pipe(
        PROMPT,
        height=64,
        width=64,
        num_inference_steps=1,
        guidance_scale=3.5,
        generator=torch.Generator("cpu").manual_seed(0),
    ).images[0]
    ran = time.perf_counter() - t0
    params = {
        k: _param_count(getattr(pipe, k)) for k in ("transformer", "text_encoder_2", "text_encoder", "vae")
    }
    print(
        f"one layer per stack, real widths, on CPU float32: built in {built:.1f} s, "
        f"one 64x64 step in {ran:.1f} s, image {image.size}; params "
        + ", ".join(f"{k} {v / 1e6:.0f} M" for k, v in params.items())
    )
    print("shapes check:", "ok" if ok else "FAILED")
    return 0 if ok else 1


def _gpu_child(args: argparse.Namespace) -> int:
    """One GPU mode in this process; prints one ``RESULT {json}`` line."""
    import torch

    mode = args.gpu_child
    _quiet()
    dtype = torch.bfloat16
    result: dict[str, object] = {"mode": mode}
    t0 = time.perf_counter()
    pipe = build_flux_shapes_pipeline("cuda", dtype, seed=0)
    torch.cuda.synchronize()
    result["build_s"] = round(time.perf_counter() - t0, 1)
    if mode == "offload":
        pipe.enable_model_cpu_offload()
    elif mode == "nf4":
        result["nf4_linear_layers"] = quantize_transformer_nf4(pipe.transformer, dtype)
    elif mode != "bf16":
        raise SystemExit(f"unknown mode {mode}")
    torch.cuda.empty_cache()
    result["resident_gb"] = round(torch.cuda.memory_allocated() / 1e9, 2)

    def once(steps: int) -> float:
        g = torch.Generator("cpu").manual_seed(0)
        torch.cuda.synchronize()
        start = time.perf_counter()
        pipe(
            PROMPT,
            height=args.gpu_size,
            width=args.gpu_size,
            num_inference_steps=steps,
            guidance_scale=3.5,
            generator=g,
            max_sequence_length=512,
        )
        torch.cuda.synchronize()
        return time.perf_counter() - start

    once(args.gpu_warmup_steps)  # kernels, cuBLAS handles, allocator
    torch.cuda.reset_peak_memory_stats()
    times = [once(args.gpu_steps) for _ in range(args.repeats)]
    result.update(
        seconds_per_image=round(statistics.median(times), 3),
        times=[round(t, 3) for t in times],
        peak_gb=round(torch.cuda.max_memory_allocated() / 1e9, 2),
        peak_reserved_gb=round(torch.cuda.max_memory_reserved() / 1e9, 2),
    )
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def run_gpu_shapes(args: argparse.Namespace) -> int:
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        print(
            f"error: --gpu-shapes needs a CUDA GPU, but torch {torch.__version__} sees none "
            f"(CUDA build: {torch.version.cuda or 'no'}). Run without --gpu-shapes for the CPU benchmark, "
            "or --check-shapes to check the model construction on this machine.",
            file=sys.stderr,
        )
        return 2
    device_name = torch.cuda.get_device_name(0)
    total_gb = torch.cuda.get_device_properties(0).total_memory / 1e9
    print(
        f"# FLUX.1-dev shapes, random weights; {device_name} ({total_gb:.0f} GB); torch {torch.__version__}"
    )
    print(
        f"# {args.gpu_size}x{args.gpu_size}, {args.gpu_steps} steps, guidance 3.5, batch 1; "
        f"median of {args.repeats} after a {args.gpu_warmup_steps}-step warm-up"
    )
    rows = []
    for mode in args.modes.split(","):
        if mode == "nf4" and importlib.util.find_spec("bitsandbytes") is None:
            rows.append(
                {
                    "mode": mode,
                    "error": "not measured: bitsandbytes is not installed (pip install bitsandbytes)",
                }
            )
            continue
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--gpu-child",
            mode,
            "--repeats",
            str(args.repeats),
            "--gpu-size",
            str(args.gpu_size),
            "--gpu-steps",
            str(args.gpu_steps),
            "--gpu-warmup-steps",
            str(args.gpu_warmup_steps),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.gpu_timeout)
        except subprocess.TimeoutExpired:
            rows.append({"mode": mode, "error": f"not measured: timed out after {args.gpu_timeout} s"})
            continue
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode == 0 and lines:
            rows.append(json.loads(lines[-1][len("RESULT ") :]))
        else:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            rows.append({"mode": mode, "error": f"failed (exit {proc.returncode}): " + " | ".join(tail)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    print(f"{'mode':<9}{'s/image':>9}{'peak GB':>9}{'resident GB':>13}{'build s':>9}")
    for row in rows:
        if "error" in row:
            print(f"{row['mode']:<9}  {row['error']}")
        else:
            print(
                f"{row['mode']:<9}{row['seconds_per_image']:>9.2f}{row['peak_gb']:>9.1f}"
                f"{row['resident_gb']:>13.1f}{row['build_s']:>9.1f}"
            )
    if any(r.get("mode") == "nf4" and "error" not in r for r in rows):
        print(
            "# nf4: transformer blocks' Linear layers quantized with bitsandbytes NF4 "
            "from random bf16 weights; "
            "T5 stays bf16 on the GPU"
        )
    print("# published anchors (real weights, H100 unless noted):")
    for setting, figure, source in PUBLISHED_ANCHORS:
        print(f"#   {setting}: {figure} ({source})")
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0 if all("error" not in r for r in rows) else 1


# =============================================================================================


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--size", default="512", help="512, 1024 or WxH from the contract's table (CPU mode)")
    p.add_argument("--steps", type=int, default=4, help="denoising steps (CPU mode)")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per variant")
    p.add_argument("--num-outputs", type=int, default=1, choices=range(1, 5))
    p.add_argument("--format", default="webp", choices=["webp", "jpg", "png"])
    p.add_argument("--quality", type=int, default=80)
    p.add_argument(
        "--model", default=None, help="a FLUX diffusers folder (default: the tiny model, built in a temp dir)"
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--gpu-shapes", action="store_true", help="FLUX.1-dev shapes with random weights on CUDA")
    p.add_argument("--modes", default="bf16,offload,nf4", help="GPU modes (comma-separated)")
    p.add_argument("--gpu-size", type=int, default=1024)
    p.add_argument("--gpu-steps", type=int, default=28)
    p.add_argument("--gpu-warmup-steps", type=int, default=2)
    p.add_argument("--gpu-timeout", type=int, default=1800, help="seconds per GPU mode")
    p.add_argument(
        "--check-shapes", action="store_true", help="check the FLUX.1-dev construction on this machine"
    )
    p.add_argument("--gpu-child", default=None, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    if args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    if args.gpu_child:
        return _gpu_child(args)
    if args.gpu_shapes:
        return run_gpu_shapes(args)
    if args.check_shapes:
        return run_check_shapes(args)
    return run_cpu(args)


if __name__ == "__main__":
    sys.exit(main())
