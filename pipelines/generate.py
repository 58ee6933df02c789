"""Generation: flux-dev inputs in, encoded images and metadata out.

One call runs one prediction on a loaded model: seeds, sizes, text-to-image or img2img,
progress and cancel every denoising step, the safety stage, and encoding. Not thread-safe
(diffusers pipelines are not): one call at a time per loaded model.

It runs in two stages so a worker can keep the GPU busy: ``start`` (prompt encoding and
denoising, to latents: the transformer's work) and ``finish`` (VAE decode to PIL, safety check,
metadata, encoding). One ``start`` at a time; a ``finish`` may run on another thread beside the
next ``start`` (it touches only the VAE, the safety checker and the CPU), except with CPU
offload (``overlap_safe``): accelerate's hooks move modules between devices and are not
thread-safe. ``generate`` is the two stages one after the other.
"""

from __future__ import annotations

import gc
import secrets
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from pipelines.encoding import CONTENT_TYPES, encode_image
from pipelines.errors import AdapterLoadError, GenerationError, NSFWContentError, OutOfMemory
from pipelines.fast import RunMode
from pipelines.inputs import FluxInputs, img2img_size
from pipelines.loading import LoadedModel
from pipelines.loras.adapters import LoadedAdapters, LoraOptions, LoraRequest
from pipelines.metadata import image_parameters
from pipelines.previews import PreviewRequest
from pipelines.safety import ALL_FLAGGED_MESSAGE

ProgressCallback = Callable[[int, int], None]  # (steps done, total steps) across all images
CancelCheck = Callable[[], bool]

RANDOM_SEED_BITS = 32  # random seeds fit in 32 bits so users can type them back in anywhere


@dataclass
class GeneratedImage:
    data: bytes
    format: str  # webp, jpg, png (also the file extension)
    width: int
    height: int
    seed: int

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]


@dataclass
class GenerationResult:
    images: list[GeneratedImage]
    seed: int
    width: int
    height: int
    num_requested: int
    cancelled: bool = False
    nsfw_dropped: int = 0
    warnings: list[str] = field(default_factory=list)
    # predict_time: start of the run to the last image encoded; the rest break it down.
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Denoised:
    """What ``start`` hands to ``finish``: one prediction's latents and everything needed to turn
    them into files. ``result.cancelled``: the run stopped; ``finish`` returns the result as is."""

    inputs: FluxInputs
    result: GenerationResult
    img2img: bool
    embed_parameters: bool
    model_name: str
    started: float  # perf_counter at the start of the run
    # Latent batches as the pipeline returned them (packed), each with the seeds of its images;
    # decoded batch by batch, as the pipeline itself would, so the bytes match.
    batches: list[tuple[Any, list[int]]] = field(default_factory=list)
    ready: Any = None  # a CUDA event recorded when the latents were complete (None off CUDA)


class Cancelled(Exception):
    """Raised inside the run when the cancel flag is seen; never escapes ``generate``."""


def pick_seed(requested: int | None) -> int:
    """null or 0 means random (the contract); random seeds are never 0 so they round-trip."""
    if requested:
        return requested
    return secrets.randbelow(2**RANDOM_SEED_BITS - 1) + 1


class FluxGenerator:
    """Runs predictions on one LoadedModel.

    ``lora``: how this model holds LoRA adapters; None (the default) when it serves none, and a
    request naming adapters then fails. With options, a compiled model gets hotswap slots before
    its first compiled call (see pipelines/loras/adapters.py).
    """

    def __init__(self, model: LoadedModel, lora: LoraOptions | None = None) -> None:
        self.model = model
        self.adapters = LoadedAdapters(model, lora) if lora is not None else None
        self._stream = None  # the finishing stage's CUDA stream, made at first use

    # -- public -------------------------------------------------------------------------
    def generate(
        self,
        inputs: FluxInputs,
        source_image: Image.Image | None = None,
        on_progress: ProgressCallback | None = None,
        should_cancel: CancelCheck | None = None,
        *,
        loras: Sequence[LoraRequest] = (),
        previews: PreviewRequest | None = None,
        embed_parameters: bool = True,
        model_name: str | None = None,
    ) -> GenerationResult:
        """``previews``: make a preview image of the latent every few steps (None: none).
        ``embed_parameters``: each file carries its prompt, seed, steps, guidance, size and
        model (pipelines/metadata.py); off, no metadata at all. ``model_name``: the model named
        there (default: the loaded model's name; a server passes the prediction's slug)."""
        denoised = self.start(
            inputs,
            source_image,
            on_progress,
            should_cancel,
            loras=loras,
            previews=previews,
            embed_parameters=embed_parameters,
            model_name=model_name,
        )
        return self.finish(denoised)

    @property
    def overlap_safe(self) -> bool:
        """``finish`` may run on another thread beside the next ``start``: not with CPU offload,
        whose hooks move modules between devices (not thread-safe)."""
        return self.model.spec.offload == "none"

    def start(
        self,
        inputs: FluxInputs,
        source_image: Image.Image | None = None,
        on_progress: ProgressCallback | None = None,
        should_cancel: CancelCheck | None = None,
        *,
        loras: Sequence[LoraRequest] = (),
        previews: PreviewRequest | None = None,
        embed_parameters: bool = True,
        model_name: str | None = None,
    ) -> Denoised:
        """The GPU stage: LoRA activation, prompt encoding and denoising, to latents (arguments as
        ``generate``). OutOfMemory and other errors raise; a cancel returns a cancelled result."""
        import torch

        started = time.perf_counter()
        seed = pick_seed(inputs.seed)
        warnings: list[str] = list(self.model.warnings)
        mode, mode_warnings = self.model.run_modes().select(inputs.go_fast, with_adapters=bool(loras))
        warnings += mode_warnings
        lora_load_time = self._activate_loras(loras, warnings)
        self._use_step_cache(mode, inputs, img2img=source_image is not None)

        if source_image is not None:
            width, height = img2img_size(*source_image.size)
            if (width, height) != source_image.size:
                source_image = source_image.resize((width, height), Image.Resampling.LANCZOS)
        else:
            width, height = inputs.size

        result = GenerationResult([], seed, width, height, inputs.num_outputs, warnings=warnings)
        if lora_load_time is not None:
            result.timings["lora_load_time"] = lora_load_time
        denoised = Denoised(
            inputs,
            result,
            img2img=source_image is not None,
            embed_parameters=embed_parameters,
            model_name=model_name or self.model.spec.name,
            started=started,
        )
        try:
            with mode.running():
                denoised.batches = self._denoise(
                    mode,
                    inputs,
                    seed,
                    width,
                    height,
                    source_image,
                    on_progress,
                    should_cancel,
                    warnings,
                    previews,
                )
        except Cancelled:
            result.cancelled = True
            result.timings["predict_time"] = time.perf_counter() - started
            return denoised
        except (torch.OutOfMemoryError, MemoryError) as exc:
            self._free_memory()
            raise OutOfMemory(_oom_message(inputs, width, height, exc)) from None
        if torch.cuda.is_available() and str(self.model.device).startswith("cuda"):
            denoised.ready = torch.cuda.Event()
            denoised.ready.record()  # finish's stream waits for it, not for the next job's work
        result.timings["denoise_time"] = time.perf_counter() - started
        return denoised

    def finish(self, denoised: Denoised) -> GenerationResult:
        """The finishing stage: VAE decode to PIL, safety, metadata and encoding. May run on
        another thread beside the next ``start`` when ``overlap_safe``."""
        import torch

        result, inputs = denoised.result, denoised.inputs
        if result.cancelled:
            return result
        decode_started = time.perf_counter()
        try:
            pil_images = self._decode(denoised)
        except (torch.OutOfMemoryError, MemoryError) as exc:
            self._free_memory()
            raise OutOfMemory(_oom_message(inputs, result.width, result.height, exc)) from None
        decoded = time.perf_counter()

        kept = self._safety_stage(inputs, pil_images, result.warnings, result)
        checked = time.perf_counter()
        for img, image_seed in kept:
            parameters = None
            if denoised.embed_parameters:
                parameters = image_parameters(
                    inputs,
                    model=denoised.model_name,
                    seed=image_seed,
                    width=img.width,
                    height=img.height,
                    img2img=denoised.img2img,
                )
            data = encode_image(img, inputs.output_format, inputs.output_quality, parameters)
            result.images.append(
                GeneratedImage(data, inputs.output_format, img.width, img.height, image_seed)
            )
        finished = time.perf_counter()
        result.timings.update(
            predict_time=finished - denoised.started,
            decode_time=decoded - decode_started,
            safety_time=checked - decoded,
            encode_time=finished - checked,
        )
        return result

    # -- stages ---------------------------------------------------------------------------
    def _denoise(
        self,
        mode: RunMode,
        inputs,
        seed,
        width,
        height,
        source_image,
        on_progress,
        should_cancel,
        warnings,
        previews=None,
    ):
        import torch

        n = inputs.num_outputs
        steps = _effective_steps(inputs, source_image is not None)
        total = steps * n
        done = 0

        def on_step_end(p, step_index, timestep, callback_kwargs):
            nonlocal done
            done += 1
            if on_progress is not None:
                on_progress(done, total)
            if previews is not None and previews.due(done, total):
                previews.make(p, callback_kwargs["latents"], height, width, done, total)
            if should_cancel is not None and should_cancel():
                raise Cancelled()
            return callback_kwargs

        prompt_embeds, pooled, _ = torch.inference_mode()(self._encode_prompt)(
            inputs.prompt, warnings
        )  # no autograd graph
        common = dict(
            prompt_embeds=prompt_embeds,
            pooled_prompt_embeds=pooled,
            guidance_scale=inputs.guidance,
            num_inference_steps=inputs.num_inference_steps,
            callback_on_step_end=on_step_end,
            output_type="latent",  # decoded by finish, on the finishing stage
        )
        runner = mode.img2img if source_image is not None else mode.pipe
        if source_image is not None:
            # At least one denoising step must run, whatever the strength.
            strength = max(inputs.prompt_strength, 1.0 / inputs.num_inference_steps)
            common.update(image=source_image, strength=strength, height=height, width=width)
        else:
            common.update(height=height, width=width)

        if should_cancel is not None and should_cancel():
            raise Cancelled()
        device = self._generator_device()
        batches: list[tuple[Any, list[int]]] = []
        with torch.inference_mode():
            if self._batched(n, width, height):
                generators = [torch.Generator(device).manual_seed(seed + i) for i in range(n)]
                out = runner(generator=generators, num_images_per_prompt=n, **common)
                batches.append((out.images, [seed + i for i in range(n)]))
            else:
                # One image after another: image i is exactly what seed+i gives alone.
                for i in range(n):
                    generator = torch.Generator(device).manual_seed(seed + i)
                    out = runner(generator=generator, num_images_per_prompt=1, **common)
                    batches.append((out.images, [seed + i]))
        return batches

    def _batched(self, n: int, width: int, height: int) -> bool:
        """Denoise the n outputs in one batch: batch_outputs on, and the size within batch_max_pixels."""
        spec = self.model.spec
        if not spec.batch_outputs or n < 2:
            return False
        return spec.batch_max_pixels is None or width * height <= spec.batch_max_pixels

    def _decode(self, denoised: Denoised) -> list[tuple[Image.Image, int]]:
        """Latents to PIL exactly as the pipeline's own ``output_type="pil"`` path does (unpack,
        scale and shift, VAE decode, postprocess), batch by batch. On CUDA on a stream of its
        own, after the latents were complete: the next job's denoising is not waited for."""
        import torch
        from diffusers.utils.torch_utils import get_module_execution_device

        pipe = self.model.pipe
        height, width = denoised.result.height, denoised.result.width
        stream = None
        if denoised.ready is not None:
            stream = self._finish_stream()
            stream.wait_event(denoised.ready)
        images: list[tuple[Image.Image, int]] = []
        with torch.inference_mode(), torch.cuda.stream(stream) if stream is not None else nullcontext():
            for latents, seeds in denoised.batches:
                if stream is not None:
                    latents.record_stream(stream)  # its memory is not reused before this stream is done
                latents = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
                latents = (latents / pipe.vae.config.scaling_factor) + pipe.vae.config.shift_factor
                latents = latents.to(get_module_execution_device(pipe.vae))
                decoded = pipe.vae.decode(latents, return_dict=False)[0]
                pil = pipe.image_processor.postprocess(decoded, output_type="pil")
                images += list(zip(pil, seeds, strict=True))
        denoised.batches = []  # the latents are freed now, not when the result is dropped
        if self.model.spec.offload != "none":
            pipe.maybe_free_model_hooks()  # the VAE goes back to the CPU, as after a pipeline call
        return images

    def _finish_stream(self):
        import torch

        if self._stream is None:
            self._stream = torch.cuda.Stream()
        return self._stream

    def _encode_prompt(self, prompt: str, warnings: list[str]):
        """Encode once for all images; warn when T5 (or CLIP) truncates the prompt."""
        pipe = self.model.pipe
        limit = self.model.spec.max_sequence_length
        t5_tokens = len(pipe.tokenizer_2(prompt, truncation=False, add_special_tokens=True).input_ids)
        if t5_tokens > limit:
            warnings.append(f"Prompt is {t5_tokens} T5 tokens; only the first {limit} were used.")
        clip_tokens = len(pipe.tokenizer(prompt, truncation=False).input_ids)
        if clip_tokens > pipe.tokenizer.model_max_length:
            warnings.append(
                f"Prompt is {clip_tokens} CLIP tokens; "
                f"CLIP reads the first {pipe.tokenizer.model_max_length} "
                "(T5 reads the rest up to its limit)."
            )
        return pipe.encode_prompt(
            prompt=prompt, prompt_2=None, num_images_per_prompt=1, max_sequence_length=limit
        )

    def _safety_stage(self, inputs, images, warnings, result) -> list[tuple[Image.Image, int]]:
        safety = self.model.safety
        if safety is None:
            warnings.append("No safety checker is configured: images were not checked for NSFW content.")
            return images
        if inputs.disable_safety_checker and self.model.spec.allow_disable_safety_checker:
            warnings.append("Safety checker disabled by request.")
            return images
        if inputs.disable_safety_checker:
            warnings.append("disable_safety_checker is not allowed on this server; images were checked.")
        flags = safety.flags([img for img, _ in images])
        kept = [pair for pair, flagged in zip(images, flags, strict=True) if not flagged]
        result.nsfw_dropped = len(images) - len(kept)
        if not kept:
            raise NSFWContentError(ALL_FLAGGED_MESSAGE)
        if result.nsfw_dropped:
            warnings.append(
                f"{result.nsfw_dropped} of {len(images)} images contained NSFW content and were removed."
            )
        return kept

    def _activate_loras(self, loras: Sequence[LoraRequest], warnings: list[str]) -> float | None:
        """Make exactly ``loras`` active (none: LoRA off); the seconds spent loading files, if any."""
        if self.adapters is None:
            if loras:
                raise AdapterLoadError(f"Model {self.model.spec.name!r} is not set up for LoRA adapters.")
            return None
        warnings += self.adapters.activate(list(loras))
        return self.adapters.last_load_seconds or None

    @staticmethod
    def _use_step_cache(mode: RunMode, inputs: FluxInputs, img2img: bool) -> None:
        """Switch the mode's step cache on or off for this request (StepCache.wanted: its applies_to)."""
        cache = mode.step_cache
        if cache is not None:
            cache.use(cache.wanted(inputs.go_fast), steps=_effective_steps(inputs, img2img))

    # -- helpers --------------------------------------------------------------------------
    def _generator_device(self) -> str:
        # With CPU offload the latents are still made on the execution device (the configured
        # one, not where the idle weights sit); the generators must be on it too.
        return self.model.device

    @staticmethod
    def _free_memory() -> None:
        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def total_steps(inputs: FluxInputs, img2img: bool) -> int:
    """Denoising steps a run makes across all its images (what progress counts to)."""
    return _effective_steps(inputs, img2img) * inputs.num_outputs


def _effective_steps(inputs: FluxInputs, img2img: bool) -> int:
    """Steps actually run: img2img starts part-way down the schedule (diffusers' get_timesteps)."""
    if not img2img:
        return inputs.num_inference_steps
    strength = max(inputs.prompt_strength, 1.0 / inputs.num_inference_steps)
    steps = inputs.num_inference_steps
    return steps - int(max(steps - min(steps * strength, steps), 0))  # = get_timesteps' count


def _oom_message(inputs: FluxInputs, width: int, height: int, exc: BaseException) -> str:
    where = "GPU" if "CUDA" in str(exc) or "cuda" in type(exc).__name__.lower() else "host"
    return (
        f"Out of {where} memory generating {inputs.num_outputs} image(s) at {width}x{height}. "
        "Try a smaller size (megapixels 0.25), fewer outputs, or ask the operator to enable "
        "offload (offload: model) or quantization."
    )


__all__ = [
    "Denoised",
    "FluxGenerator",
    "GenerationResult",
    "GeneratedImage",
    "GenerationError",
    "pick_seed",
    "total_steps",
]
