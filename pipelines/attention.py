"""The transformer's attention backend: a configured one, or the fastest one measured at start.

diffusers dispatches FLUX's attention to one of several kernels (PyTorch SDPA and its math /
flash / efficient / cuDNN variants, flash-attn 2 and 3, SageAttention, xformers). Which is
fastest depends on the GPU and on what is installed, so ``attention_backend: auto`` times each
installed candidate on FLUX.1-dev's attention shape (24 heads of 128, 4096 image + 512 text
tokens at 1024²) and keeps the fastest whose output agrees with ``native``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from pipelines.errors import ModelLoadError

log = logging.getLogger(__name__)

# What auto tries on a GPU, most likely fastest first. Hub kernels are left out: they download.
GPU_CANDIDATES = (
    "_flash_3",
    "flash",
    "sage",
    "_native_cudnn",
    "_native_flash",
    "_native_efficient",
    "xformers",
    "native",
)
FLUX_ATTENTION_SHAPE = (1, 4096 + 512, 24, 128)  # batch, tokens, heads, head dim at 1024²
AGREEMENT_TOLERANCE = 3e-2  # max |difference| from native on unit-normal inputs, bf16 rounding included


@dataclass
class BackendChoice:
    name: str
    timings_ms: dict[str, float] = field(default_factory=dict)  # candidate -> median ms (auto only)
    skipped: dict[str, str] = field(default_factory=dict)  # candidate -> why it was not usable

    def describe(self) -> str:
        if not self.timings_ms:
            return f"attention backend {self.name}"
        timed = ", ".join(f"{k} {v:.2f} ms" for k, v in sorted(self.timings_ms.items(), key=lambda kv: kv[1]))
        return f"attention backend {self.name} (measured: {timed})"


def known_backends() -> list[str]:
    from diffusers.models.attention_dispatch import AttentionBackendName

    return [b.value for b in AttentionBackendName]


def apply_attention_backend(transformers: Sequence, setting: str, device: str, dtype) -> BackendChoice:
    """Set ``setting`` (or, for ``auto``, the measured fastest) on every transformer given."""
    if setting == "auto":
        if device.startswith("cuda"):
            choice = choose_fastest(GPU_CANDIDATES, device, dtype, FLUX_ATTENTION_SHAPE)
        else:
            choice = BackendChoice("native", skipped={"*": "auto measures on a GPU only"})
    else:
        if setting not in known_backends():
            raise ModelLoadError(
                f"attention_backend {setting!r} is not a diffusers attention backend; known: "
                f"auto, {', '.join(known_backends())}"
            )
        problem = _unusable(setting, device, dtype, (1, 64, 2, 64))
        if problem:
            raise ModelLoadError(f"attention_backend {setting!r} cannot run here: {problem}")
        choice = BackendChoice(setting)
    if choice.name != "native":  # native is every transformer's default already
        # diffusers also makes it the process's default backend: one worker process holds one model.
        for transformer in transformers:
            transformer.set_attention_backend(choice.name)
    return choice


def choose_fastest(
    candidates: Sequence[str], device: str, dtype, shape: tuple[int, int, int, int]
) -> BackendChoice:
    """Time each usable candidate on ``shape``; the fastest whose output agrees with native."""
    import torch

    q, k, v = (torch.randn(shape, device=device, dtype=dtype) for _ in range(3))
    reference = _attend("native", q, k, v)
    choice = BackendChoice("native")
    for name in candidates:
        problem = _unusable(name, device, dtype, shape)
        if problem is None:
            try:
                difference = (_attend(name, q, k, v).float() - reference.float()).abs().max().item()
                if difference > AGREEMENT_TOLERANCE:
                    problem = f"differs from native by {difference:.3g}"
                else:
                    choice.timings_ms[name] = _median_ms(name, q, k, v, device)
            except Exception as exc:  # noqa: BLE001 - a broken install is skipped, not fatal
                problem = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if problem is not None:
            choice.skipped[name] = problem
    if choice.timings_ms:
        choice.name = min(choice.timings_ms, key=choice.timings_ms.__getitem__)
    log.info("%s", choice.describe())
    return choice


def _unusable(name: str, device: str, dtype, shape) -> str | None:
    """Why backend ``name`` cannot run here (missing package, wrong device or dtype); None if it can."""
    import torch
    from diffusers.models.attention_dispatch import (
        AttentionBackendName,
        _check_attention_backend_requirements,
    )

    try:
        backend = AttentionBackendName(name)
        _check_attention_backend_requirements(backend)
    except Exception as exc:  # noqa: BLE001 - diffusers raises plain errors naming the package
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    try:
        q = torch.zeros((1, 16, shape[2], shape[3]), device=device, dtype=dtype)
        _attend(name, q, q, q)
    except Exception as exc:  # noqa: BLE001 - e.g. a CUDA-only kernel on the CPU
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"{type(exc).__name__}: {text}"
    return None


def _attend(name: str, q, k, v):
    from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn

    return dispatch_attention_fn(q, k, v, backend=AttentionBackendName(name))


def _median_ms(name: str, q, k, v, device: str, repeats: int = 7) -> float:
    import torch

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize(torch.device(device))

    _attend(name, q, k, v)
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _attend(name, q, k, v)
        sync()
        times.append((time.perf_counter() - start) * 1000)
    return sorted(times)[len(times) // 2]
