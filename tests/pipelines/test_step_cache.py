"""Step caching: each method skips transformer work and changes the image only a little; it applies
to the requests its config names; switched off, the images are exactly the uncached ones."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from pipelines.generate import FluxGenerator
from pipelines.loading import load_model
from pipelines.spec import ModelSpec, StepCacheSpec
from pipelines.step_cache import StepCache
from tests.pipelines.helpers import inputs

STEPS = 8
# Knobs loose enough that the tiny random model (whose outputs swing far more from step to step
# than FLUX.1-dev's) skips work within 8 steps.
METHODS = {
    "first_block": StepCacheSpec(method="first_block", threshold=1.0),
    "taylorseer": StepCacheSpec(method="taylorseer", interval=2, warmup_steps=2),
    "mag": StepCacheSpec(method="mag", threshold=0.5),
}
PSNR_FLOOR_DB = 35.0  # "a little": measured 53-80 dB on this model at 64x64, 8 steps


class AttentionCounter:
    """Counts attention computations in the transformer's blocks: a skipped block or a predicted
    attention output never reaches its query projection."""

    def __init__(self, transformer) -> None:
        self.calls = 0
        blocks = [*transformer.transformer_blocks, *transformer.single_transformer_blocks]
        self._handles = [b.attn.to_q.register_forward_hook(self._count) for b in blocks]

    def _count(self, *_args) -> None:
        self.calls += 1

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


@pytest.fixture
def counter(tiny_model) -> Iterator[AttentionCounter]:
    counted = AttentionCounter(tiny_model.pipe.transformer)
    yield counted
    counted.remove()


def pixels(model, steps: int = STEPS) -> np.ndarray:
    generator = torch.Generator("cpu").manual_seed(7)
    with torch.inference_mode():
        out = model.pipe(
            "a red fox", height=64, width=64, num_inference_steps=steps, generator=generator, output_type="np"
        )
    return out.images[0]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2)))


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64) / 255


@pytest.fixture
def uncached(tiny_model, counter) -> tuple[np.ndarray, int]:
    image = pixels(tiny_model)
    calls, counter.calls = counter.calls, 0
    return image, calls


@pytest.mark.parametrize("method", METHODS)
def test_each_method_changes_the_image_only_a_little(method, tiny_model, uncached):
    cache = StepCache(tiny_model.pipe.transformer, METHODS[method])
    cache.use(True, steps=STEPS)
    try:
        image = pixels(tiny_model)
    finally:
        cache.use(False)
    assert not np.array_equal(image, uncached[0])
    assert psnr(image, uncached[0]) > PSNR_FLOOR_DB


@pytest.mark.parametrize("method", METHODS)
def test_each_method_runs_fewer_transformer_block_computations(method, tiny_model, uncached, counter):
    cache = StepCache(tiny_model.pipe.transformer, METHODS[method])
    cache.use(True, steps=STEPS)
    try:
        pixels(tiny_model)
    finally:
        cache.use(False)
    assert counter.calls < uncached[1]


def test_use_false_gives_the_images_of_a_model_without_a_cache(tiny_model, uncached):
    cache = StepCache(tiny_model.pipe.transformer, METHODS["first_block"])
    cache.use(True, steps=STEPS)
    pixels(tiny_model)
    cache.use(False)
    assert np.array_equal(pixels(tiny_model), uncached[0])


def test_mag_follows_the_request_step_count(tiny_model, counter):
    cache = StepCache(tiny_model.pipe.transformer, METHODS["mag"])
    try:
        for steps in (STEPS, 12):
            counter.calls = 0
            cache.use(True, steps=steps)
            pixels(tiny_model, steps)
            assert counter.calls < 2 * steps  # two blocks a step when nothing is skipped
    finally:
        cache.use(False)


# -- per request, through generation ---------------------------------------------------------


@pytest.fixture(scope="module")
def go_fast_cached(tiny_model_dir) -> FluxGenerator:
    """A model whose step cache applies to go_fast requests only (the default)."""
    spec = ModelSpec(weights=str(tiny_model_dir), step_cache={"method": "first_block", "threshold": 1.0})
    return FluxGenerator(load_model(spec))


def test_a_request_without_go_fast_is_exactly_the_uncached_image(go_fast_cached, generator):
    request = inputs(seed=21)
    go_fast_cached.generate(inputs(seed=21, go_fast=True))  # the cache was on just before
    assert go_fast_cached.generate(request).images[0].data == generator.generate(request).images[0].data


def test_a_go_fast_request_uses_the_cache(go_fast_cached, generator):
    fast = go_fast_cached.generate(inputs(seed=22, go_fast=True)).images[0].data
    plain = generator.generate(inputs(seed=22)).images[0].data
    assert fast != plain
    assert psnr(decoded(fast), decoded(plain)) > PSNR_FLOOR_DB
    assert not any("go_fast" in w for w in go_fast_cached.generate(inputs(go_fast=True)).warnings)


def test_applies_to_all_caches_every_request(tiny_model_dir):
    spec = ModelSpec(
        weights=str(tiny_model_dir),
        step_cache={"method": "first_block", "threshold": 1.0, "applies_to": "all"},
    )
    model = load_model(spec)
    counter = AttentionCounter(model.pipe.transformer)
    FluxGenerator(model).generate(inputs(seed=23))
    assert counter.calls < 2 * 2  # two blocks, two steps, when nothing is skipped


# -- refused configs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step_cache", "field"),
    [
        ({"method": "teacache"}, "method"),
        ({"method": "taylorseer", "threshold": 0.1}, "threshold"),
        ({"method": "first_block", "interval": 2}, "interval"),
        ({"method": "first_block", "mag_ratios": [1.0, 1.0]}, "mag_ratios"),
        ({"method": "mag", "threshold": 0}, "threshold"),
        ({"method": "first_block", "applies_to": "some"}, "applies_to"),
    ],
)
def test_a_bad_step_cache_is_refused_naming_the_field(step_cache, field):
    with pytest.raises(ValidationError, match=field):
        ModelSpec(step_cache=step_cache)


@pytest.mark.parametrize("compile_option", ["compile", "go_fast_compile"])
def test_a_step_cache_with_compile_is_refused(compile_option):
    with pytest.raises(ValidationError, match="step_cache: cannot run in a compiled transformer"):
        ModelSpec(step_cache={"method": "first_block"}, **{compile_option: True})


@pytest.mark.heavy
@pytest.mark.parametrize("method", METHODS)
def test_cache_hooks_still_break_the_fullgraph_compile(method, tiny_model_dir):
    """Why step_cache is refused with compile; when diffusers makes its hooks compilable this
    fails, and the refusal in pipelines/spec.py can go."""
    model = load_model(ModelSpec(weights=str(tiny_model_dir)))
    StepCache(model.pipe.transformer, METHODS[method]).use(True, steps=4)
    model.pipe.transformer.compile_repeated_blocks(fullgraph=True)
    with pytest.raises(Exception, match=r"torch\.compiler\.disable"):
        pixels(model, steps=4)


@pytest.mark.parametrize(
    "step_cache",
    [{"method": "first_block", "threshold": 1.0}, {"method": "taylorseer"}, {"method": "mag"}],
    ids=["first_block", "taylorseer", "mag"],
)
def test_a_cancelled_cached_run_leaves_nothing_for_the_next_one(tiny_model_dir, step_cache):
    generator = FluxGenerator(load_model(ModelSpec(weights=str(tiny_model_dir), step_cache=step_cache)))
    request = inputs(seed=24, go_fast=True, num_inference_steps=8)
    expected = generator.generate(request).images[0].data
    answers = iter([False, False, False, True])  # before the run, then after each step: stop after 3
    other = inputs(seed=99, prompt="another prompt entirely", go_fast=True, num_inference_steps=8)
    assert generator.generate(other, should_cancel=lambda: next(answers)).cancelled
    assert generator.generate(request).images[0].data == expected
