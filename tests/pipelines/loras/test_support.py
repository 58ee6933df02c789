"""Which model configurations can take LoRA adapters (torch-free: the API asks at create)."""

from __future__ import annotations

import pytest

from pipelines.loras.support import lora_support_problem
from pipelines.spec import ModelSpec


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"quantize_transformer": "nf4"},
        {"quantize_transformer": "int8"},
        {"transformer_file": "/weights/flux1-dev.safetensors"},
        {"compile": True},
        {"go_fast_compile": True},
        {"quantize_transformer": "int8", "go_fast_compile": True},  # go_fast never compiles int8
        {"offload": "model"},
    ],
)
def test_these_models_can_take_lora(options):
    assert lora_support_problem(ModelSpec(**options)) is None


def test_an_fp8_transformer_cannot_take_lora_and_the_message_says_why():
    problem = lora_support_problem(ModelSpec(name="flux-dev", quantize_transformer="fp8"))
    assert problem is not None
    assert "'flux-dev'" in problem and "fp8" in problem and "int8" in problem


@pytest.mark.parametrize(
    "options",
    [
        {"quantize_transformer": "nf4", "compile": True},
        {"quantize_transformer": "nf4", "go_fast_compile": True},
        {"quantize_transformer": "int8", "compile": True},
    ],
)
def test_a_quantized_model_that_may_be_compiled_cannot_take_lora(options):
    problem = lora_support_problem(ModelSpec(**options))
    assert problem is not None
    assert "compiled" in problem and options["quantize_transformer"] in problem


def test_the_rules_load_no_torch():
    import subprocess
    import sys

    code = "import sys, pipelines.loras.support; print('torch' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    )
