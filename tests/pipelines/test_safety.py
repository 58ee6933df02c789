"""The safety stage: tiny real StableDiffusionSafetyCheckers, loaded through ``load_model``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.errors import ModelLoadError, NSFWContentError
from pipelines.generate import FluxGenerator
from pipelines.inputs import parse_inputs
from pipelines.loading import load_model
from pipelines.safety import ALL_FLAGGED_MESSAGE, SafetyChecker
from pipelines.spec import ModelSpec
from pipelines.tiny_safety import write_tiny_safety_checker

CONTRACT_MESSAGE = (
    "All generated images contained NSFW content. Try running it again with a different prompt."
)


def inputs(**fields):
    raw = {
        "prompt": "a cat",
        "megapixels": "0.25",
        "aspect_ratio": "21:9",
        "num_inference_steps": 1,
        "output_format": "png",
        "seed": 321,
    }
    raw.update(fields)
    return parse_inputs(raw)


def noise_images(n: int, size=(96, 64)) -> list[Image.Image]:
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def make_generator(tiny_model_dir):
    def make(safety_dir, **spec) -> FluxGenerator:
        model = load_model(ModelSpec(weights=str(tiny_model_dir), safety_checker=str(safety_dir), **spec))
        return FluxGenerator(model)

    return make


# -- the tiny checker itself ----------------------------------------------------------------


def test_flag_everything_checker_flags_every_image(safety_dirs):
    checker = SafetyChecker.load(safety_dirs.flag_all, "cpu", torch.float32)
    assert checker.flags(noise_images(3)) == [True, True, True]


def test_non_flagging_checker_flags_nothing(safety_dirs):
    checker = SafetyChecker.load(safety_dirs.flag_none, "cpu", torch.float32)
    assert checker.flags(noise_images(3)) == [False, False, False]


def test_checker_accepts_any_image_size(safety_dirs):
    checker = SafetyChecker.load(safety_dirs.flag_none, "cpu", torch.float32)
    assert checker.flags(noise_images(2, (1440, 720))) == [False, False]
    assert checker.flags(noise_images(1, (16, 16))) == [False]


def test_checker_of_no_images_is_empty(safety_dirs):
    assert SafetyChecker.load(safety_dirs.flag_all, "cpu", torch.float32).flags([]) == []


def test_stable_diffusion_folder_layout_is_accepted(tmp_path):
    write_tiny_safety_checker(tmp_path / "safety_checker", flag_everything=True)
    write_tiny_safety_checker(tmp_path / "feature_extractor", flag_everything=True)
    assert SafetyChecker.load(tmp_path, "cpu", torch.float32).flags(noise_images(1)) == [True]


def test_missing_safety_checker_folder_fails_the_load(tiny_model_dir, tmp_path):
    with pytest.raises(ModelLoadError, match="safety_checker folder .* does not exist"):
        load_model(ModelSpec(weights=str(tiny_model_dir), safety_checker=str(tmp_path / "nope")))


def test_folder_without_a_checker_fails_the_load(tiny_model_dir, tmp_path):
    with pytest.raises(ModelLoadError, match="could not load the safety checker"):
        load_model(ModelSpec(weights=str(tiny_model_dir), safety_checker=str(tmp_path)))


# -- the safety stage in generation ---------------------------------------------------------


def test_contract_message_is_exact():
    assert ALL_FLAGGED_MESSAGE == CONTRACT_MESSAGE


def test_all_images_flagged_raises_nsfw_error_with_the_contract_message(make_generator, safety_dirs):
    generator = make_generator(safety_dirs.flag_all)
    with pytest.raises(NSFWContentError) as info:
        generator.generate(inputs(num_outputs=2))
    assert str(info.value) == CONTRACT_MESSAGE


def test_non_flagging_checker_keeps_every_image(make_generator, safety_dirs):
    result = make_generator(safety_dirs.flag_none).generate(inputs(num_outputs=2))
    assert [img.seed for img in result.images] == [321, 322]
    assert result.nsfw_dropped == 0
    assert not any("NSFW" in w or "safety" in w.lower() for w in result.warnings), result.warnings


def test_checked_images_are_unchanged_by_the_checker(make_generator, safety_dirs, generator):
    checked = make_generator(safety_dirs.flag_none).generate(inputs())
    unchecked = generator.generate(inputs())
    assert checked.images[0].data == unchecked.images[0].data


def test_flagged_images_are_dropped_and_counted(make_generator, safety_dirs, monkeypatch):
    generator = make_generator(safety_dirs.flag_none)
    seen: list[list[Image.Image]] = []

    def flag_second(images):
        seen.append(images)
        return [i == 1 for i in range(len(images))]

    monkeypatch.setattr(generator.model.safety, "flags", flag_second)
    result = generator.generate(inputs(num_outputs=3))
    assert [img.seed for img in result.images] == [321, 323]
    assert result.nsfw_dropped == 1
    assert result.num_requested == 3
    assert any("1 of 3 images" in w and "NSFW" in w for w in result.warnings), result.warnings
    # The checker saw every generated image, at the output size.
    assert len(seen) == 1 and [img.size for img in seen[0]] == [(768, 320)] * 3


def test_disable_safety_checker_is_honoured_when_allowed(make_generator, safety_dirs):
    result = make_generator(safety_dirs.flag_all).generate(inputs(num_outputs=2, disable_safety_checker=True))
    assert len(result.images) == 2
    assert result.nsfw_dropped == 0
    assert any("disabled by request" in w for w in result.warnings)


def test_disable_safety_checker_refused_when_not_allowed_still_checks(make_generator, safety_dirs):
    generator = make_generator(safety_dirs.flag_all, allow_disable_safety_checker=False)
    with pytest.raises(NSFWContentError, match="All generated images contained NSFW content"):
        generator.generate(inputs(disable_safety_checker=True))


def test_disable_safety_checker_refused_when_not_allowed_warns(make_generator, safety_dirs):
    generator = make_generator(safety_dirs.flag_none, allow_disable_safety_checker=False)
    result = generator.generate(inputs(disable_safety_checker=True))
    assert len(result.images) == 1
    assert any("not allowed" in w for w in result.warnings), result.warnings
