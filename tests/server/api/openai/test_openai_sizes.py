"""OpenAI's ``size`` onto the aspect-ratio table: exact sizes, near ratios, megapixels by area, refusals."""

from __future__ import annotations

import pytest

from pipelines.inputs import ASPECT_RATIO_SIZES, output_size
from server.api.openai.sizes import SizeChoice, UnsupportedSize, accepted_sizes, choose_size


@pytest.mark.parametrize("ratio", list(ASPECT_RATIO_SIZES))
@pytest.mark.parametrize("megapixels", ["1", "0.25"])
def test_every_table_size_maps_to_its_own_ratio_and_megapixels(ratio, megapixels):
    width, height = output_size(ratio, megapixels)

    assert choose_size(f"{width}x{height}") == SizeChoice(ratio, megapixels)


@pytest.mark.parametrize(
    "size, ratio",
    [
        ("1792x1024", "16:9"),
        ("1024x1792", "9:16"),
        ("1536x1024", "3:2"),
        ("1024x1536", "2:3"),
        ("1024x768", "4:3"),
    ],
)
def test_a_size_close_to_a_table_ratio_takes_that_ratio(size, ratio):
    assert choose_size(size).aspect_ratio == ratio


@pytest.mark.parametrize(
    "size, megapixels",
    [("1024x1024", "1"), ("2048x2048", "1"), ("768x768", "1"), ("700x700", "0.25"), ("512x512", "0.25"),
     ("256x256", "0.25"), ("1792x1024", "1")],
)  # fmt: skip
def test_megapixels_are_the_nearer_of_1_and_a_quarter_on_a_log_scale(size, megapixels):
    assert choose_size(size).megapixels == megapixels


def test_the_image_made_has_the_table_size_of_the_choice():
    assert choose_size("1792x1024").size == (1344, 768)
    assert choose_size("256x256").size == (512, 512)


@pytest.mark.parametrize("size", [None, "auto", "AUTO", ""])
def test_auto_or_no_size_leaves_the_models_defaults(size):
    assert choose_size(size) is None


@pytest.mark.parametrize(
    "size", ["1000x500", "100x900", "900x1000", "0x512", "512x0", "big", "1024*1024", "99999999x1"]
)
def test_a_size_with_no_close_table_ratio_is_refused_naming_the_accepted_sizes(size):
    with pytest.raises(UnsupportedSize) as refused:
        choose_size(size)

    assert "1024x1024" in str(refused.value) and "1344x768" in str(refused.value)


def test_the_accepted_sizes_are_the_table_at_both_megapixels():
    sizes = accepted_sizes()

    assert len(sizes) == 2 * len(ASPECT_RATIO_SIZES)
    assert sizes[0] == "1024x1024" and "512x512" in sizes
