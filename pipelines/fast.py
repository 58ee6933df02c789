"""go_fast: the two run modes of one loaded model, and which one a request gets.

The standard mode runs the model as configured. The go_fast mode (``ModelSpec.go_fast``) may run
a second transformer quantized to fp8 (torchao dynamic activation + weight quantization) and/or
a compiled transformer. Both modes share the text encoders, the VAE and every transformer
parameter that is not quantized, so the fp8 copy costs only its quantized weights.

When go_fast compiles the standard transformer itself (no fp8 copy) and the model is not
compiled for every request, standard requests run that transformer under
``torch.compiler.set_stance("force_eager")``: their bytes stay what they were before any go_fast
request, and no graph is ever traced twice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pipelines.errors import ModelLoadError

STANDARD, GO_FAST = "standard", "go_fast"

NO_FAST_MODE_WARNING = "go_fast: no faster mode is configured on this server; ran the standard mode."
LORA_ON_STANDARD_WARNING = (
    "go_fast: LoRA adapters run on the standard transformer (the fp8 go_fast copy takes none); "
    "ran the standard mode."
)


@dataclass
class RunMode:
    """One way to run the model: its pipelines and whether their transformer runs compiled."""

    name: str
    pipe: Any  # diffusers.FluxPipeline
    img2img: Any  # diffusers.FluxImg2ImgPipeline sharing pipe's modules
    compiled: bool  # run the transformer's compiled blocks
    force_eager: bool = False  # the transformer is compiled for the other mode: run it eagerly
    step_cache: Any = None  # pipelines.step_cache.StepCache on this mode's transformer, if any

    @property
    def transformer(self) -> Any:
        return self.pipe.transformer

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Wrap one run in this mode."""
        if not self.force_eager:
            yield
            return
        import torch

        with torch.compiler.set_stance("force_eager"):
            yield


@dataclass
class RunModes:
    standard: RunMode
    go_fast: RunMode | None = None  # None: go_fast requests run the standard mode

    @property
    def all(self) -> list[RunMode]:
        return [self.standard] + ([self.go_fast] if self.go_fast is not None else [])

    def select(self, go_fast: bool, with_adapters: bool) -> tuple[RunMode, list[str]]:
        """The mode for one request, and warnings for its logs when go_fast could not be honoured.
        ``go_fast`` is the standard mode itself where that is already the fast one (compiled or
        quantized for every request), and None where nothing faster is configured."""
        if not go_fast:
            return self.standard, []
        if self.go_fast is None:
            return self.standard, [NO_FAST_MODE_WARNING]
        if with_adapters and self.go_fast.transformer is not self.standard.transformer:
            return self.standard, [LORA_ON_STANDARD_WARNING]
        return self.go_fast, []


def separate_mode(pipe: Any, transformer: Any, compiled: bool) -> RunMode:
    """The go_fast mode on its own ``transformer``: pipelines sharing every other module of ``pipe``.
    Built from the components directly: ``from_pipe`` would cast every shared module to one dtype
    (float32 unless told otherwise), and a quantized transformer must not be cast at all."""
    from diffusers import FluxImg2ImgPipeline, FluxPipeline

    components = {**pipe.components, "transformer": transformer}
    fast_pipe = FluxPipeline(**components)
    fast_img2img = FluxImg2ImgPipeline(**components)
    for p in (fast_pipe, fast_img2img):
        p.set_progress_bar_config(disable=True)
    return RunMode(GO_FAST, fast_pipe, fast_img2img, compiled=compiled)


def quantized_copy(transformer: Any, torchao_config: Any) -> Any:
    """A second transformer whose Linear weights are quantized with ``torchao_config``; every other
    tensor (norms, embeddings, biases) shares storage with ``transformer``, which is left as it is.

    torchao's ``quantize_`` replaces each weight Parameter with a new quantized one rather than
    writing into it, so starting from a module that *shares* the original tensors (built on the meta
    device, then ``load_state_dict(assign=True)``) never doubles the memory of the full model.
    """
    import torch
    from torchao.quantization import quantize_

    with torch.device("meta"):
        copy = type(transformer).from_config(transformer.config)
    copy.load_state_dict(transformer.state_dict(), assign=True, strict=True)
    copy.eval().requires_grad_(False)
    quantize_(copy, torchao_config)
    return copy


def fp8_config() -> Any:
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig

    return Float8DynamicActivationFloat8WeightConfig()


def check_fp8_device(device: str) -> None:
    """fp8 matmuls need an Ada (sm 8.9) or newer GPU; say so at load rather than at the first request."""
    import torch

    if not device.startswith("cuda"):
        raise ModelLoadError(
            f"go_fast.quantize: fp8 needs a CUDA GPU of compute capability 8.9 or newer (Ada, Hopper), "
            f"but the model runs on {device}; set go_fast.quantize: none"
        )
    major, minor = torch.cuda.get_device_capability(torch.device(device))
    if (major, minor) < (8, 9):
        raise ModelLoadError(
            f"go_fast.quantize: fp8 needs compute capability 8.9 or newer (Ada, Hopper); this GPU is "
            f"{major}.{minor}: set go_fast.quantize: none (go_fast.compile still helps)"
        )
