"""The flux-dev inputs of the contract: coercion, defaults, refusals, sizes."""

from __future__ import annotations

import math

import pytest

from pipelines.inputs import (
    ASPECT_RATIO_SIZES,
    MAX_PROMPT_CHARS,
    FluxInputs,
    InvalidInputs,
    img2img_size,
    output_size,
    parse_inputs,
)

# The contract's table (CONTRACT.md section 2), copied here on purpose: the code must match it.
CONTRACT_SIZES = {
    "1:1": (1024, 1024),
    "16:9": (1344, 768),
    "21:9": (1536, 640),
    "3:2": (1216, 832),
    "2:3": (832, 1216),
    "4:5": (896, 1088),
    "5:4": (1088, 896),
    "3:4": (896, 1152),
    "4:3": (1152, 896),
    "9:16": (768, 1344),
    "9:21": (640, 1536),
}


def refused(raw: dict) -> dict[str, str]:
    with pytest.raises(InvalidInputs) as info:
        parse_inputs(raw)
    return info.value.details


# -- coercion and defaults ----------------------------------------------------------------


def test_numeric_strings_are_coerced():
    inputs = parse_inputs(
        {
            "prompt": "a cat",
            "num_inference_steps": "28",
            "num_outputs": " 2 ",
            "guidance": "3.5",
            "prompt_strength": "0.25",
            "seed": "42",
            "output_quality": "90",
            "megapixels": "0.25",
        }
    )
    assert inputs.num_inference_steps == 28 and isinstance(inputs.num_inference_steps, int)
    assert inputs.num_outputs == 2
    assert inputs.guidance == 3.5 and isinstance(inputs.guidance, float)
    assert inputs.prompt_strength == 0.25
    assert inputs.seed == 42
    assert inputs.output_quality == 90
    assert inputs.megapixels == "0.25"


def test_whole_floats_are_accepted_for_integers():
    assert parse_inputs({"prompt": "a", "num_inference_steps": 20.0}).num_inference_steps == 20


def test_boolean_strings_are_coerced():
    inputs = parse_inputs({"prompt": "a", "disable_safety_checker": "true", "go_fast": "False"})
    assert inputs.disable_safety_checker is True
    assert inputs.go_fast is False


def test_megapixels_as_numbers_are_accepted():
    assert parse_inputs({"prompt": "a", "megapixels": 0.25}).megapixels == "0.25"
    assert parse_inputs({"prompt": "a", "megapixels": 1}).megapixels == "1"


def test_defaults_match_the_contract():
    inputs = parse_inputs({"prompt": "a cat"})
    assert inputs.aspect_ratio == "1:1"
    assert inputs.megapixels == "1"
    assert inputs.image is None
    assert inputs.prompt_strength == 0.8
    assert inputs.num_outputs == 1
    assert inputs.num_inference_steps == 28
    assert inputs.guidance == 3.5
    assert inputs.seed is None
    assert inputs.output_format == "webp"
    assert inputs.output_quality == 80
    assert inputs.disable_safety_checker is False
    assert inputs.go_fast is False


def test_null_means_the_default():
    inputs = parse_inputs(
        {
            "prompt": "a cat",
            "aspect_ratio": None,
            "megapixels": None,
            "num_outputs": None,
            "num_inference_steps": None,
            "guidance": None,
            "output_format": None,
            "output_quality": None,
            "disable_safety_checker": None,
            "image": None,
            "seed": None,
        }
    )
    assert inputs == parse_inputs({"prompt": "a cat"})


def test_model_defaults_fill_missing_and_null_fields_but_not_given_ones():
    defaults = {"num_inference_steps": 20, "guidance": 2.0}
    inputs = parse_inputs({"prompt": "a", "num_inference_steps": None, "guidance": 5}, defaults=defaults)
    assert inputs.num_inference_steps == 20
    assert inputs.guidance == 5.0


@pytest.mark.parametrize("seed", [0, "0", None])
def test_seed_zero_or_null_means_random(seed):
    assert parse_inputs({"prompt": "a", "seed": seed}).seed is None


def test_largest_seed_is_accepted():
    assert parse_inputs({"prompt": "a", "seed": 2**63 - 1}).seed == 2**63 - 1


def test_unknown_fields_are_ignored():
    inputs = parse_inputs({"prompt": "a cat", "lora_scale": 0.8, "hf_lora": "x/y", "extra": {"a": 1}})
    assert inputs == parse_inputs({"prompt": "a cat"})


@pytest.mark.parametrize(
    "url", ["https://example.com/a.png", "http://example.com/a.png", "data:image/png;base64,AAAA"]
)
def test_image_accepts_http_and_data_urls(url):
    assert parse_inputs({"prompt": "a", "image": url}).image == url


def test_empty_image_string_means_no_image():
    assert parse_inputs({"prompt": "a", "image": ""}).image is None


# -- refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        # NaN and infinities, as numbers and as strings
        ("guidance", math.nan),
        ("guidance", "NaN"),
        ("guidance", math.inf),
        ("prompt_strength", "Infinity"),
        ("prompt_strength", -math.inf),
        ("num_inference_steps", math.nan),
        # negative
        ("seed", -1),
        ("guidance", -0.5),
        ("prompt_strength", "-0.1"),
        ("output_quality", -1),
        # out of range
        ("num_outputs", 0),
        ("num_outputs", 5),
        ("num_inference_steps", 0),
        ("num_inference_steps", 51),
        ("guidance", 10.5),
        ("prompt_strength", 1.01),
        ("output_quality", 101),
        ("seed", 2**63),
        # wrong type
        ("num_outputs", "many"),
        ("guidance", [3.5]),
        ("num_inference_steps", {"n": 4}),
        ("num_inference_steps", 2.5),
        ("disable_safety_checker", "perhaps"),
        ("go_fast", 2),
        ("image", 42),
        ("image", "ftp://example.com/a.png"),
        ("image", "/etc/passwd"),
        # booleans are not numbers
        ("num_outputs", True),
        ("guidance", False),
        ("seed", True),
        ("output_quality", False),
        ("megapixels", True),
        # bad enums
        ("aspect_ratio", "7:5"),
        ("aspect_ratio", 1),
        ("output_format", "gif"),
        ("megapixels", "2"),
        ("megapixels", 0.5),
        # prompts
        ("prompt", ""),
        ("prompt", "   \n"),
        ("prompt", 123),
        ("prompt", "x" * 100_000),
    ],
)
def test_bad_field_is_named_in_details(field, value):
    raw = {"prompt": "a cat", field: value}
    details = refused(raw)
    assert field in details, details
    assert details[field]


def test_prompt_at_the_character_limit_is_accepted():
    assert len(parse_inputs({"prompt": "x" * MAX_PROMPT_CHARS}).prompt) == MAX_PROMPT_CHARS


def test_missing_prompt_is_named():
    assert "prompt" in refused({"guidance": 3})


def test_null_prompt_is_refused():
    assert "prompt" in refused({"prompt": None})


def test_every_bad_field_is_reported_at_once():
    details = refused({"prompt": "", "guidance": "NaN", "num_outputs": 9, "output_format": "gif", "seed": -3})
    assert {"prompt", "guidance", "num_outputs", "output_format", "seed"} <= set(details)


def test_nan_reason_says_finite():
    assert "finite" in refused({"prompt": "a", "guidance": "nan"})["guidance"]


def test_boolean_for_a_number_reason_says_boolean():
    assert "boolean" in refused({"prompt": "a", "num_outputs": True})["num_outputs"]


def test_input_that_is_not_an_object_is_refused():
    with pytest.raises(InvalidInputs) as info:
        parse_inputs(["a cat"])
    assert "input" in info.value.details


def test_invalid_inputs_is_a_value_error_naming_fields():
    with pytest.raises(ValueError, match="num_outputs"):
        parse_inputs({"prompt": "a", "num_outputs": 0})


def test_parsed_inputs_are_frozen():
    inputs = parse_inputs({"prompt": "a"})
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        inputs.num_outputs = 4  # type: ignore[misc]


# -- sizes ---------------------------------------------------------------------------------


def test_aspect_ratio_table_matches_the_contract():
    assert ASPECT_RATIO_SIZES == CONTRACT_SIZES


@pytest.mark.parametrize("ratio", sorted(CONTRACT_SIZES))
def test_every_size_is_a_multiple_of_64_near_one_megapixel(ratio):
    w, h = output_size(ratio, "1")
    assert w % 64 == 0 and h % 64 == 0
    assert 0.85e6 < w * h < 1.1e6


@pytest.mark.parametrize("ratio", sorted(CONTRACT_SIZES))
def test_quarter_megapixel_halves_both_sides(ratio):
    w, h = CONTRACT_SIZES[ratio]
    assert output_size(ratio, "0.25") == (w // 2, h // 2)
    assert parse_inputs({"prompt": "a", "aspect_ratio": ratio, "megapixels": "0.25"}).size == (w // 2, h // 2)


def test_size_property_uses_the_table():
    assert FluxInputs(prompt="a", aspect_ratio="16:9").size == (1344, 768)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ((300, 200), (304, 208)),  # no scaling; 18.75 -> 19*16, 12.5 -> 13*16 (halves round up)
        ((2000, 1000), (1440, 720)),  # scaled down to fit 1440
        ((1000, 2000), (720, 1440)),
        ((3000, 3000), (1440, 1440)),
        ((1440, 1440), (1440, 1440)),
        ((1024, 768), (1024, 768)),  # already multiples of 16: unchanged
        ((100, 100), (96, 96)),  # 6.25 -> 6
        ((24, 40), (32, 48)),  # 1.5 -> 2, 2.5 -> 3
        ((5, 7), (16, 16)),  # never below 16
        ((4000, 100), (1440, 32)),  # 36 px after scaling -> 32
    ],
)
def test_img2img_size_rule(source, expected):
    assert img2img_size(*source) == expected


@pytest.mark.parametrize("source", [(64, 48), (500, 333), (1439, 1000)])
def test_img2img_size_never_scales_up(source):
    w, h = img2img_size(*source)
    assert abs(w - source[0]) <= 8 and abs(h - source[1]) <= 8
    assert w % 16 == 0 and h % 16 == 0
