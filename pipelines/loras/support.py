"""Which model configurations can take LoRA adapters. Torch-free: the API refuses LoRA inputs at
create with the same message the worker would give.

What diffusers 0.42 / peft 0.21 can do on a quantized transformer (read in their sources):

- bitsandbytes nf4: LoRA layers wrap ``bnb.nn.Linear4bit`` (peft ``tuners/lora/bnb.py``), and
  diffusers loads Flux LoRAs into a 4-bit transformer (``_maybe_expand_transformer_param_shape_or_error_``
  handles bnb 4-bit since diffusers 0.33): supported.
- torchao int8 weight-only: peft's ``TorchaoLoraLinear`` (``tuners/lora/torchao.py``): supported.
- torchao fp8 (``Float8DynamicActivationFloat8WeightConfig``): ``TorchaoLoraLinear`` says it "only supports
  int8 weights for now", and loading a LoRA into a float8-quantized Flux transformer is a known
  failure (diffusers issue 10621): refused.
- hotswapping under torch.compile (how a compiled model takes adapters without recompiling) pads
  only plain ``lora.Linear`` layers (peft ``utils/hotswap.py``, ``_pad_lora_weights``) and is untested
  on quantized layers: a quantized model that may be compiled is refused.
- a single-file transformer checkpoint (``transformer_file``) is an ordinary FluxTransformer2DModel.
"""

from __future__ import annotations

from pipelines.spec import ModelSpec


def may_compile(spec: ModelSpec) -> bool:
    """Whether the transformer that holds adapters is torch.compiled (for every request, or for
    go_fast ones when go_fast has no transformer of its own)."""
    return spec.compiles_standard_transformer


def lora_support_problem(spec: ModelSpec) -> str | None:
    """Why this model cannot apply LoRA adapters, in words for the client; None when it can."""
    quant = spec.quantize_transformer
    if quant == "fp8":
        return (
            f"Model {spec.name!r} cannot apply LoRA adapters: its transformer is quantized to fp8 "
            "(torchao float8), and LoRA layers on torchao weights support int8 only. "
            "Use a model configured without fp8 quantization (none, int8 or nf4)."
        )
    if quant != "none" and may_compile(spec):
        return (
            f"Model {spec.name!r} cannot apply LoRA adapters: its transformer is quantized ({quant}) and "
            "compiled, and swapping adapters in a compiled model is not supported on quantized layers. "
            "Turn off compile/go_fast.compile or quantization for this model."
        )
    return None
