"""Warm-up before a worker reports ready, so no request pays first-call or compile time.

Every mode runs once. A mode whose transformer is compiled runs one denoising step at each of
the contract's 22 output sizes (11 aspect ratios at 1 and 0.25 megapixels), once as img2img at a
size outside that table, and batched when the model batches outputs: after that, no request
shape is new to the compiled graph (compiled with dynamic shapes, so it is one graph anyway; the
sizes check it and tune the kernels). An eager mode runs one small generation end to end (text
encoders, transformer, VAE).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.fast import RunMode
from pipelines.inputs import ASPECT_RATIO_SIZES, output_size

log = logging.getLogger(__name__)

WARMUP_PROMPT = "warm-up"
IMG2IMG_WARMUP_SIZE = (784, 528)  # not in the size table: an img2img shape the graph must take too


@dataclass
class WarmupReport:
    seconds: float = 0.0
    runs: int = 0
    per_mode_s: dict[str, float] = field(default_factory=dict)
    compile_cache: str = ""  # "hit" / "miss": a compiled model's artifacts of a previous start
    artifacts_bytes: int = 0  # the compile artifacts saved after this warm-up


def output_sizes() -> list[tuple[int, int]]:
    """Every text-to-image output size of the contract."""
    return [output_size(ratio, mp) for mp in ("1", "0.25") for ratio in ASPECT_RATIO_SIZES]


def warm_up(model, say: Callable[[str], None] = lambda _: None) -> WarmupReport:
    """Run every mode of ``model`` (a LoadedModel) as described above; ``say`` hears what is next."""
    import torch
    from PIL import Image

    report = WarmupReport()
    started = time.perf_counter()
    pipe = model.pipe
    with torch.inference_mode():
        embeds, pooled, _ = pipe.encode_prompt(
            prompt=WARMUP_PROMPT, prompt_2=None, max_sequence_length=model.spec.max_sequence_length
        )
    seen: set[int] = set()
    for mode in model.run_modes().all:
        if id(mode) in seen:
            continue
        seen.add(id(mode))
        mode_started = time.perf_counter()
        if mode.compiled:
            say(f"compiling and warming up the {mode.name} transformer at every output size")
            for width, height in output_sizes():
                _run(mode, model, embeds, pooled, width, height, output_type="latent")
                report.runs += 1
            source = Image.new("RGB", IMG2IMG_WARMUP_SIZE, (127, 127, 127))
            _run(mode, model, embeds, pooled, *IMG2IMG_WARMUP_SIZE, output_type="latent", image=source)
            report.runs += 1
            if model.spec.batch_outputs:
                _run(mode, model, embeds, pooled, 512, 512, output_type="latent", batch=2)
                report.runs += 1
        else:
            say(f"warming up the {mode.name} mode")
            _run(mode, model, embeds, pooled, 256, 256, output_type="pil")
            report.runs += 1
        report.per_mode_s[mode.name] = time.perf_counter() - mode_started
    report.seconds = time.perf_counter() - started
    return report


def warm_up_cached(
    model, cache_folder: Path | None, say: Callable[[str], None] = lambda _: None
) -> WarmupReport:
    """``warm_up``, with a compiled model's artifacts of a previous start loaded from
    ``cache_folder`` first and this start's saved there after (pipelines/compile_cache.py)."""
    from pipelines import compile_cache

    compiled = any(mode.compiled for mode in model.run_modes().all)
    if not compiled or cache_folder is None:
        return warm_up(model, say)
    key = compile_cache.artifacts_key_for(model)
    hit = compile_cache.load_artifacts(cache_folder, key)
    report = warm_up(model, say)
    report.compile_cache = "hit" if hit else "miss"
    report.artifacts_bytes = compile_cache.save_artifacts(cache_folder, key)
    return report


def _run(
    mode: RunMode, model, embeds, pooled, width: int, height: int, *, output_type: str, image=None, batch=1
):
    import torch

    generator = torch.Generator(model.device).manual_seed(0)
    kwargs = dict(
        prompt_embeds=embeds,
        pooled_prompt_embeds=pooled,
        height=height,
        width=width,
        num_inference_steps=1,
        num_images_per_prompt=batch,
        generator=generator,
        output_type=output_type,
    )
    if model.spec.family == "flux-dev":
        kwargs["guidance_scale"] = 3.5
    runner = mode.pipe
    if image is not None:
        runner = mode.img2img
        kwargs.update(image=image, strength=1.0)
    with mode.running(), torch.inference_mode():
        runner(**kwargs)
