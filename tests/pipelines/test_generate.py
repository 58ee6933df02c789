"""Generation on the tiny random FLUX pipeline (CPU), loaded through ``load_model``."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from pipelines.errors import OutOfMemory
from pipelines.generate import FluxGenerator, pick_seed
from pipelines.inputs import ASPECT_RATIO_SIZES
from pipelines.loading import TINY_WARNING, load_model
from pipelines.spec import ModelSpec
from tests.pipelines.helpers import inputs

MAGIC = {"webp": (b"RIFF", b"WEBP"), "jpg": (b"\xff\xd8\xff", None), "png": (b"\x89PNG\r\n\x1a\n", None)}


def decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def source_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


# -- sizes --------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", sorted(ASPECT_RATIO_SIZES))
def test_each_aspect_ratio_at_quarter_megapixel_gives_half_the_table_size(generator, ratio):
    w, h = ASPECT_RATIO_SIZES[ratio]
    result = generator.generate(inputs(aspect_ratio=ratio, num_inference_steps=1))
    assert (result.width, result.height) == (w // 2, h // 2)
    [image] = result.images
    assert (image.width, image.height) == (w // 2, h // 2)
    assert decode(image.data).size == (w // 2, h // 2)


# -- seeds --------------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes(generator):
    a = generator.generate(inputs(seed=77))
    b = generator.generate(inputs(seed=77))
    assert a.images[0].data == b.images[0].data


def test_another_seed_gives_a_different_image(generator):
    a = generator.generate(inputs(seed=77))
    b = generator.generate(inputs(seed=78))
    assert a.images[0].data != b.images[0].data


@pytest.fixture(scope="module")
def three_outputs(generator):
    return generator.generate(inputs(seed=500, num_outputs=3, aspect_ratio="21:9"))


def test_num_outputs_3_gives_three_images_with_consecutive_seeds(three_outputs):
    assert len(three_outputs.images) == 3
    assert [img.seed for img in three_outputs.images] == [500, 501, 502]
    assert three_outputs.seed == 500
    assert three_outputs.num_requested == 3
    assert len({img.data for img in three_outputs.images}) == 3


@pytest.mark.parametrize("i", [0, 1, 2])
def test_image_i_equals_seed_plus_i_generated_alone(generator, three_outputs, i):
    alone = generator.generate(inputs(seed=500 + i, num_outputs=1, aspect_ratio="21:9"))
    assert alone.images[0].data == three_outputs.images[i].data


def test_null_seed_picks_a_random_seed_and_reports_it(generator):
    result = generator.generate(inputs(seed=None))
    assert 0 < result.seed < 2**32
    assert result.images[0].seed == result.seed
    again = generator.generate(inputs(seed=result.seed))
    assert again.images[0].data == result.images[0].data


def test_seed_zero_picks_a_random_seed(generator):
    seeds = {generator.generate(inputs(seed=0, num_inference_steps=1)).seed for _ in range(2)}
    assert 0 not in seeds
    assert len(seeds) == 2


def test_pick_seed_keeps_a_given_seed_and_never_returns_zero():
    assert pick_seed(12345) == 12345
    assert all(0 < pick_seed(None) < 2**32 for _ in range(200))


def test_batched_outputs_keep_seeds_and_are_within_one_level_of_sequential(tiny_model_dir, generator):
    batched = FluxGenerator(load_model(ModelSpec(weights=str(tiny_model_dir), batch_outputs=True)))
    request = inputs(seed=900, num_outputs=2, aspect_ratio="21:9")
    got = batched.generate(request)
    want = generator.generate(request)
    assert [img.seed for img in got.images] == [900, 901]
    for a, b in zip(got.images, want.images, strict=True):
        diff = np.abs(np.asarray(decode(a.data), dtype=int) - np.asarray(decode(b.data), dtype=int))
        assert diff.max() <= 2


# -- img2img ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [((300, 200), (304, 208)), ((2000, 1000), (1440, 720)), ((64, 48), (64, 48))],
)
def test_img2img_output_size_follows_the_contract_rule(generator, source, expected):
    result = generator.generate(inputs(prompt_strength=0.5), source_image=source_image(*source))
    assert (result.width, result.height) == expected
    assert decode(result.images[0].data).size == expected


def test_img2img_ignores_aspect_ratio_and_megapixels(generator):
    result = generator.generate(
        inputs(aspect_ratio="21:9", megapixels="1", prompt_strength=0.5), source_image=source_image(96, 64)
    )
    assert (result.width, result.height) == (96, 64)


def test_prompt_strength_changes_the_img2img_result(generator):
    src = source_image(128, 96)
    weak = generator.generate(inputs(num_inference_steps=4, prompt_strength=0.3), source_image=src)
    strong = generator.generate(inputs(num_inference_steps=4, prompt_strength=0.9), source_image=src)
    assert weak.images[0].data != strong.images[0].data


def test_img2img_is_reproducible_for_a_seed(generator):
    src = source_image(128, 96)
    a = generator.generate(inputs(prompt_strength=0.6), source_image=src)
    b = generator.generate(inputs(prompt_strength=0.6), source_image=src)
    assert a.images[0].data == b.images[0].data


@pytest.mark.parametrize(("steps", "strength"), [(5, 0.5), (4, 0.3), (10, 0.8), (3, 0.0), (4, 1.0)])
def test_img2img_progress_total_matches_the_steps_run(generator, steps, strength):
    calls: list[tuple[int, int]] = []
    generator.generate(
        inputs(num_inference_steps=steps, prompt_strength=strength, num_outputs=2),
        source_image=source_image(64, 64),
        on_progress=lambda done, total: calls.append((done, total)),
    )
    total = calls[-1][1]
    assert calls == [(i, total) for i in range(1, total + 1)]


# -- formats ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["webp", "jpg", "png"])
def test_output_format_has_its_magic_bytes(generator, fmt):
    image = generator.generate(inputs(output_format=fmt, num_inference_steps=1)).images[0]
    head, tail = MAGIC[fmt]
    assert image.data.startswith(head)
    if tail:
        assert image.data[8:12] == tail
    assert image.format == fmt
    assert image.content_type == {"webp": "image/webp", "jpg": "image/jpeg", "png": "image/png"}[fmt]
    assert decode(image.data).format == {"webp": "WEBP", "jpg": "JPEG", "png": "PNG"}[fmt]


@pytest.mark.parametrize("fmt", ["webp", "jpg"])
def test_output_quality_changes_the_size_of_lossy_formats(generator, fmt):
    low = generator.generate(inputs(output_format=fmt, output_quality=10, num_inference_steps=1))
    high = generator.generate(inputs(output_format=fmt, output_quality=95, num_inference_steps=1))
    assert len(low.images[0].data) < len(high.images[0].data)


def test_png_ignores_output_quality(generator):
    low = generator.generate(inputs(output_format="png", output_quality=0, num_inference_steps=1))
    high = generator.generate(inputs(output_format="png", output_quality=100, num_inference_steps=1))
    assert low.images[0].data == high.images[0].data


# -- progress and cancel ------------------------------------------------------------------


def test_progress_is_called_once_per_step_up_to_steps_times_outputs(generator):
    calls: list[tuple[int, int]] = []
    generator.generate(
        inputs(num_inference_steps=3, num_outputs=2, aspect_ratio="21:9"),
        on_progress=lambda done, total: calls.append((done, total)),
    )
    assert calls == [(i, 6) for i in range(1, 7)]


def test_cancel_after_step_2_stops_the_run(generator):
    calls: list[tuple[int, int]] = []
    result = generator.generate(
        inputs(num_inference_steps=4, num_outputs=2, aspect_ratio="21:9"),
        on_progress=lambda done, total: calls.append((done, total)),
        should_cancel=lambda: len(calls) >= 2,
    )
    assert result.cancelled
    assert result.images == []
    assert calls == [(1, 8), (2, 8)]


def test_cancel_before_the_first_step_runs_nothing(generator):
    calls: list[tuple[int, int]] = []
    result = generator.generate(
        inputs(), on_progress=lambda done, total: calls.append((done, total)), should_cancel=lambda: True
    )
    assert result.cancelled
    assert result.images == []
    assert calls == []


def test_a_cancelled_run_leaves_the_generator_usable(generator):
    generator.generate(inputs(seed=31), should_cancel=lambda: True)
    a = generator.generate(inputs(seed=31))
    b = generator.generate(inputs(seed=31))
    assert not a.cancelled and a.images[0].data == b.images[0].data


# -- warnings, timings, errors ------------------------------------------------------------


def test_prompt_longer_than_t5_limit_warns_about_truncation(generator):
    result = generator.generate(
        inputs(prompt="a photo of a cat sitting on a red chair " * 100, num_inference_steps=1)
    )
    assert any("T5 tokens" in w and "512" in w for w in result.warnings), result.warnings
    assert len(result.images) == 1


def test_short_prompt_gives_no_truncation_warning(generator):
    result = generator.generate(inputs(num_inference_steps=1))
    assert not any("tokens" in w for w in result.warnings)


def test_no_safety_checker_is_reported_as_a_warning(generator):
    result = generator.generate(inputs(num_inference_steps=1))
    assert any("No safety checker" in w for w in result.warnings)


def test_tiny_model_warning_is_in_every_result(generator):
    assert TINY_WARNING in generator.generate(inputs(num_inference_steps=1)).warnings


def test_warnings_do_not_accumulate_across_runs(generator):
    first = generator.generate(inputs(num_inference_steps=1)).warnings
    second = generator.generate(inputs(num_inference_steps=1)).warnings
    assert first == second


def test_go_fast_without_a_fast_mode_runs_standard_and_says_so(generator):
    plain = generator.generate(inputs(seed=5))
    fast = generator.generate(inputs(seed=5, go_fast=True))
    assert any("go_fast" in w for w in fast.warnings)
    assert fast.images[0].data == plain.images[0].data


def test_timings_cover_the_stages(generator):
    timings = generator.generate(inputs(num_inference_steps=1)).timings
    assert set(timings) >= {"predict_time", "denoise_time", "safety_time", "encode_time"}
    assert timings["predict_time"] >= timings["denoise_time"] > 0


def test_out_of_memory_becomes_a_readable_error(generator, monkeypatch):
    import torch

    def boom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(generator, "_denoise", boom)
    with pytest.raises(OutOfMemory, match="megapixels 0.25"):
        generator.generate(inputs())


def test_prompt_is_encoded_once_without_an_autograd_graph(generator, monkeypatch):
    import torch

    pipe = generator.model.pipe
    original = pipe.encode_prompt
    calls: list[tuple[bool, bool]] = []

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        if kwargs.get("prompt_embeds") is None:  # the pipeline's own calls pass our embeddings through
            calls.append((torch.is_grad_enabled(), torch.is_inference_mode_enabled()))
            assert not out[0].requires_grad and out[0].grad_fn is None
        return out

    monkeypatch.setattr(pipe, "encode_prompt", spy)
    generator.generate(inputs(num_outputs=2, num_inference_steps=1, aspect_ratio="21:9"))
    assert calls == [(False, True)]


def test_largest_seed_generates_with_consecutive_seeds_past_it(generator):
    top = 2**63 - 1
    result = generator.generate(inputs(seed=top, num_outputs=2, num_inference_steps=1, aspect_ratio="21:9"))
    assert [img.seed for img in result.images] == [top, top + 1]


# -- two stages: start (GPU) and finish (decode, safety, encoding) -------------------------


def test_finish_decodes_to_the_same_bytes_as_the_pipelines_own_pil_output(generator):
    import torch

    from pipelines.encoding import encode_image

    request = inputs(seed=41)
    ours = generator.generate(request, embed_parameters=False)
    width, height = request.size
    with torch.inference_mode():
        out = generator.model.pipe(
            prompt=request.prompt,
            guidance_scale=request.guidance,
            num_inference_steps=request.num_inference_steps,
            height=height,
            width=width,
            generator=torch.Generator("cpu").manual_seed(41),
            output_type="pil",
        )
    assert ours.images[0].data == encode_image(out.images[0], "png", request.output_quality, None)


def test_a_finish_on_another_thread_beside_the_next_start_keeps_each_predictions_own_bytes(generator):
    import threading

    first, second = inputs(seed=61, prompt="a lighthouse"), inputs(seed=62, prompt="a red barn")
    alone = [generator.generate(first).images[0].data, generator.generate(second).images[0].data]

    finished: list = []
    denoised_first = generator.start(first)
    finishing = threading.Thread(target=lambda: finished.append(generator.finish(denoised_first)))
    finishing.start()
    denoised_second = generator.start(second)  # the GPU stage of the next job, while the first finishes
    finishing.join()
    both = [finished[0].images[0].data, generator.finish(denoised_second).images[0].data]

    assert both == alone


def test_a_cancelled_start_finishes_as_a_cancelled_result_without_images(generator):
    result = generator.finish(generator.start(inputs(), should_cancel=lambda: True))
    assert result.cancelled and result.images == []


def test_timings_include_the_decode_on_the_finishing_stage(generator):
    timings = generator.generate(inputs(num_inference_steps=1)).timings
    assert timings["decode_time"] > 0
    assert timings["predict_time"] >= timings["denoise_time"] + timings["decode_time"]


def test_offload_turns_overlap_off_and_no_offload_allows_it(generator):
    assert generator.overlap_safe
    offloaded = FluxGenerator(
        replace(generator.model, spec=generator.model.spec.model_copy(update={"offload": "model"}))
    )
    assert not offloaded.overlap_safe


@pytest.mark.parametrize(("max_pixels", "batches"), [(None, [2]), (10**6, [2]), (64 * 64, [1, 1])])
def test_batch_max_pixels_batches_only_sizes_within_it(generator, monkeypatch, max_pixels, batches):
    spec = generator.model.spec.model_copy(update={"batch_outputs": True, "batch_max_pixels": max_pixels})
    sized = FluxGenerator(replace(generator.model, spec=spec))
    pipeline_class = type(generator.model.pipe)
    call = pipeline_class.__call__
    seen: list[int] = []

    def counting(self, **kwargs):
        seen.append(kwargs["num_images_per_prompt"])
        return call(self, **kwargs)

    monkeypatch.setattr(pipeline_class, "__call__", counting)
    result = sized.generate(inputs(seed=900, num_outputs=2, num_inference_steps=1, aspect_ratio="21:9"))
    assert seen == batches
    assert [img.seed for img in result.images] == [900, 901]


def test_outputs_too_large_to_batch_equal_seed_plus_i_generated_alone(generator):
    spec = generator.model.spec.model_copy(update={"batch_outputs": True, "batch_max_pixels": 64 * 64})
    sized = FluxGenerator(replace(generator.model, spec=spec))
    request = inputs(seed=900, num_outputs=2, num_inference_steps=1, aspect_ratio="21:9")
    got = [img.data for img in sized.generate(request).images]
    assert got == [img.data for img in generator.generate(request).images]
