"""go_fast run modes, the attention backend, warm-up and compile caching, on the tiny model.

fp8 matmuls need an Ada or Hopper GPU, so the fp8 copy's own code path (quantized_copy, its
pipelines, mode selection) runs here with torchao's int8 weight-only config, which the CPU takes:
everything but the config object is what fp8 runs.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from pipelines.errors import ModelLoadError
from pipelines.fast import (
    LORA_ON_STANDARD_WARNING,
    NO_FAST_MODE_WARNING,
    RunMode,
    RunModes,
    quantized_copy,
    separate_mode,
)
from pipelines.spec import ModelSpec
from tests.pipelines.helpers import inputs


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64)


def psnr(a: bytes, b: bytes) -> float:
    mse = float(np.mean((pixels(a) - pixels(b)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


# -- configuration --------------------------------------------------------------------------


def test_go_fast_is_configured_per_model():
    spec = ModelSpec(go_fast={"quantize": "fp8", "compile": True})
    assert spec.go_fast.enabled and spec.go_fast_transformer_separate
    assert not spec.compiles_standard_transformer  # the fp8 copy is compiled, not the standard one


def test_the_older_go_fast_compile_flag_still_means_compile():
    assert ModelSpec(go_fast_compile=True).go_fast.compile
    # It never compiled a torchao-quantized transformer; it still does not.
    assert not ModelSpec(go_fast_compile=True, quantize_transformer="int8").go_fast.compile


def test_an_fp8_go_fast_copy_with_offload_is_refused():
    with pytest.raises(ValidationError, match="go_fast.quantize: fp8 keeps a second transformer"):
        ModelSpec(go_fast={"quantize": "fp8"}, offload="model")


def test_an_unknown_go_fast_field_is_refused():
    with pytest.raises(ValidationError, match="speed"):
        ModelSpec(go_fast={"speed": "max"})


def test_fp8_go_fast_on_the_cpu_fails_at_load_naming_the_gpu_it_needs(tiny_model_dir):
    from pipelines.loading import load_model

    spec = ModelSpec(weights=str(tiny_model_dir), device="cpu", go_fast={"quantize": "fp8"})
    with pytest.raises(ModelLoadError, match=r"fp8 needs a CUDA GPU of compute capability 8.9"):
        load_model(spec)


# -- choosing a mode ------------------------------------------------------------------------


def _mode(name: str, transformer: object, compiled: bool = False) -> RunMode:
    class Pipe:
        pass

    pipe = Pipe()
    pipe.transformer = transformer
    return RunMode(name, pipe, pipe, compiled=compiled)


def test_a_standard_request_always_runs_the_standard_mode():
    standard, fast = _mode("standard", object()), _mode("go_fast", object(), compiled=True)
    assert RunModes(standard, fast).select(False, with_adapters=False) == (standard, [])


def test_go_fast_without_a_faster_mode_runs_standard_and_says_so():
    standard = _mode("standard", object())
    assert RunModes(standard).select(True, with_adapters=False) == (standard, [NO_FAST_MODE_WARNING])


def test_go_fast_with_adapters_stays_on_the_transformer_that_holds_them():
    shared = object()
    standard = _mode("standard", shared)
    separate = _mode("go_fast", object(), compiled=True)
    assert RunModes(standard, separate).select(True, with_adapters=True) == (
        standard,
        [LORA_ON_STANDARD_WARNING],
    )
    compiled_shared = _mode("go_fast", shared, compiled=True)
    assert RunModes(standard, compiled_shared).select(True, with_adapters=True) == (compiled_shared, [])


def test_a_model_compiled_for_every_request_is_already_the_fast_mode(tiny_model_dir, monkeypatch):
    import pipelines.loading
    from pipelines.loading import load_model

    monkeypatch.setattr(pipelines.loading, "compile_transformer", lambda transformer: None)
    model = load_model(ModelSpec(weights=str(tiny_model_dir), compile=True))
    modes = model.run_modes()
    assert modes.select(True, with_adapters=False) == (modes.standard, [])


def test_go_fast_compile_compiles_the_shared_transformer_and_keeps_standard_requests_eager(
    tiny_model_dir, monkeypatch
):
    import pipelines.loading
    from pipelines.loading import load_model

    compiled = []
    monkeypatch.setattr(pipelines.loading, "compile_transformer", compiled.append)
    model = load_model(ModelSpec(weights=str(tiny_model_dir), go_fast={"compile": True}))
    modes = model.run_modes()
    assert compiled == [model.pipe.transformer]
    assert modes.standard.force_eager and not modes.standard.compiled
    assert modes.go_fast.compiled and modes.go_fast.transformer is model.pipe.transformer


# -- a separate quantized transformer -------------------------------------------------------


@pytest.fixture(scope="module")
def quantized_model(tiny_model_dir):
    """A tiny model whose go_fast mode runs on a torchao-quantized copy (int8 here, fp8 on a GPU)."""
    from torchao.quantization import Int8WeightOnlyConfig

    from pipelines.generate import FluxGenerator
    from pipelines.loading import load_model

    model = load_model(ModelSpec(weights=str(tiny_model_dir)))
    before = FluxGenerator(model).generate(inputs()).images[0].data
    copy = quantized_copy(model.pipe.transformer, Int8WeightOnlyConfig())
    model.modes = RunModes(model.run_modes().standard, separate_mode(model.pipe, copy, compiled=False))
    return model, before


def test_the_quantized_copy_leaves_the_standard_transformer_as_it_was(quantized_model):
    import torch

    model, before = quantized_model
    standard = model.pipe.transformer
    fast = model.run_modes().go_fast.transformer
    assert fast is not standard
    q_standard, q_fast = standard.transformer_blocks[0].attn.to_q, fast.transformer_blocks[0].attn.to_q
    assert type(q_standard.weight) is torch.nn.Parameter and q_standard.weight.dtype == torch.float32
    assert type(q_fast.weight.data) is not torch.Tensor  # a torchao quantized tensor
    from pipelines.generate import FluxGenerator

    assert FluxGenerator(model).generate(inputs()).images[0].data == before


def test_the_quantized_copy_shares_every_tensor_it_does_not_quantize(quantized_model):
    model, _ = quantized_model
    standard = dict(model.pipe.transformer.named_parameters())
    fast = model.run_modes().go_fast.transformer
    norm = "transformer_blocks.0.norm1.linear.bias"
    assert dict(fast.named_parameters())[norm].data_ptr() == standard[norm].data_ptr()
    embedder = "x_embedder.bias"
    assert dict(fast.named_parameters())[embedder].data_ptr() == standard[embedder].data_ptr()


def test_go_fast_runs_on_the_quantized_copy_and_stays_close_to_standard(quantized_model):
    from pipelines.generate import FluxGenerator

    model, before = quantized_model
    generator = FluxGenerator(model)
    fast = generator.generate(inputs(go_fast=True))
    assert fast.images[0].data != before  # another transformer ran
    assert NO_FAST_MODE_WARNING not in fast.warnings
    assert psnr(fast.images[0].data, before) > 25
    assert generator.generate(inputs()).images[0].data == before  # and standard is untouched


def test_img2img_go_fast_runs_on_the_quantized_copy_too(quantized_model):
    from pipelines.generate import FluxGenerator

    model, _ = quantized_model
    source = Image.new("RGB", (96, 80), (200, 40, 40))
    generator = FluxGenerator(model)
    standard = generator.generate(inputs(), source).images[0]
    fast = generator.generate(inputs(go_fast=True), source).images[0]
    assert (fast.width, fast.height) == (standard.width, standard.height) == (96, 80)
    assert fast.data != standard.data


# -- attention backend ----------------------------------------------------------------------


def test_auto_attention_times_the_usable_backends_and_keeps_the_fastest():
    import torch

    from pipelines.attention import choose_fastest

    choice = choose_fastest(["native", "_native_math", "flash"], "cpu", torch.float32, (1, 128, 2, 64))
    assert set(choice.timings_ms) == {"native", "_native_math"}
    assert choice.name == min(choice.timings_ms, key=choice.timings_ms.get)
    assert "flash-attn" in choice.skipped["flash"]  # not installed: skipped with the reason


def test_auto_attention_on_the_cpu_keeps_native(tiny_model_dir):
    from pipelines.loading import load_model

    model = load_model(ModelSpec(weights=str(tiny_model_dir), attention_backend="auto"))
    assert model.attention.name == "native"


@pytest.fixture
def attention_backend_restored():
    """diffusers' set_attention_backend also sets a process-wide default backend: put it back."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    before = _AttentionBackendRegistry._active_backend
    yield
    _AttentionBackendRegistry.set_active_backend(before)


def test_a_configured_attention_backend_is_used(tiny_model_dir, attention_backend_restored):
    from pipelines.generate import FluxGenerator
    from pipelines.loading import load_model

    model = load_model(ModelSpec(weights=str(tiny_model_dir), attention_backend="_native_math"))
    processor = model.pipe.transformer.transformer_blocks[0].attn.processor
    assert str(processor._attention_backend) in ("_native_math", "AttentionBackendName._NATIVE_MATH")
    assert FluxGenerator(model).generate(inputs()).images  # and it runs


@pytest.mark.parametrize(
    ("backend", "reason"),
    [("flash", "flash-attn"), ("no_such_backend", "not a diffusers attention backend")],
)
def test_an_attention_backend_that_cannot_run_fails_at_load_saying_why(tiny_model_dir, backend, reason):
    from pipelines.loading import load_model

    with pytest.raises(ModelLoadError, match=reason):
        load_model(ModelSpec(weights=str(tiny_model_dir), attention_backend=backend))


# -- warm-up --------------------------------------------------------------------------------


def test_warm_up_runs_each_mode_once_and_changes_no_later_image(tiny_model_dir):
    from pipelines.generate import FluxGenerator
    from pipelines.loading import load_model
    from pipelines.warmup import warm_up

    cold = load_model(ModelSpec(weights=str(tiny_model_dir)))
    expected = FluxGenerator(cold).generate(inputs()).images[0].data
    model = load_model(ModelSpec(weights=str(tiny_model_dir)))
    said: list[str] = []
    report = warm_up(model, said.append)
    assert report.runs == 1 and said == ["warming up the standard mode"]
    assert FluxGenerator(model).generate(inputs()).images[0].data == expected


def test_the_compile_cache_lives_in_the_folder_given(tmp_path, monkeypatch):
    from pipelines.compile_cache import use_folder

    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "TORCHINDUCTOR_FX_GRAPH_CACHE"):
        monkeypatch.delenv(name, raising=False)
    root = use_folder(tmp_path / "cc")
    import os

    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(root / "inductor")
    assert os.environ["TRITON_CACHE_DIR"] == str(root / "triton")
    assert os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"] == "1"


@pytest.mark.heavy
def test_compiled_go_fast_warms_every_size_then_never_recompiles(tiny_model_dir, tmp_path):
    """The real torch.compile on the CPU: after warm-up, no size, img2img size or mode switch
    recompiles, standard requests keep their eager bytes, and the artifacts are saved."""
    import torch

    from pipelines import compile_cache
    from pipelines.generate import FluxGenerator
    from pipelines.loading import load_model
    from pipelines.warmup import warm_up_cached

    spec = ModelSpec(weights=str(tiny_model_dir), go_fast={"compile": True})
    eager = (
        FluxGenerator(load_model(ModelSpec(weights=str(tiny_model_dir)))).generate(inputs()).images[0].data
    )
    torch._dynamo.reset()
    model = load_model(spec)
    generator = FluxGenerator(model)
    report = warm_up_cached(model, tmp_path)
    assert report.runs == 22 + 1 + 1  # every size, one img2img, and the standard (eager) mode
    torch._dynamo.config.error_on_recompile = True
    try:
        for ratio, mp in (("16:9", "0.25"), ("9:21", "1"), ("1:1", "0.25")):
            fast = generator.generate(inputs(go_fast=True, aspect_ratio=ratio, megapixels=mp))
            assert fast.images and NO_FAST_MODE_WARNING not in fast.warnings
        source = Image.new("RGB", (336, 208), (10, 90, 200))
        assert generator.generate(inputs(go_fast=True), source).images[0].width == 336
        assert generator.generate(inputs()).images[0].data == eager  # standard: eager bytes
    finally:
        torch._dynamo.config.error_on_recompile = False
    assert report.compile_cache == "miss" and report.artifacts_bytes > 0
    assert compile_cache.load_artifacts(tmp_path, compile_cache.artifacts_key_for(model))


def test_a_go_fast_copy_carries_its_own_step_cache_and_standard_requests_none(tiny_model_dir):
    from torchao.quantization import Int8WeightOnlyConfig

    from pipelines.generate import FluxGenerator
    from pipelines.loading import _run_modes, load_model

    model = load_model(ModelSpec(weights=str(tiny_model_dir)))
    expected = FluxGenerator(model).generate(inputs()).images[0].data
    spec = ModelSpec(
        weights=str(tiny_model_dir),
        go_fast={"quantize": "fp8"},
        step_cache={"method": "first_block", "threshold": 1.0},
    )
    model.spec = spec
    model.modes = _run_modes(spec, model.pipe, model.img2img, fast_quantization=Int8WeightOnlyConfig())
    modes = model.run_modes()
    assert modes.standard.step_cache is None  # applies_to: go_fast, and go_fast has its own transformer
    assert modes.go_fast.step_cache.transformer is modes.go_fast.transformer
    generator = FluxGenerator(model)
    assert generator.generate(inputs()).images[0].data == expected
    assert generator.generate(inputs(go_fast=True)).images[0].data != expected
    assert modes.go_fast.step_cache.active
