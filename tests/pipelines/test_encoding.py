"""Encoding images to the contract's output formats."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipelines.encoding import CONTENT_TYPES, encode_image


@pytest.fixture(scope="module")
def picture() -> Image.Image:
    """Smooth gradients plus noise: something lossy codecs have to work at."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:96, 0:128]
    base = np.stack([x * 2, y * 2, (x + y)], axis=-1).astype(np.int16)
    noisy = np.clip(base + rng.integers(-40, 40, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy, "RGB")


def decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


@pytest.mark.parametrize("fmt", ["webp", "jpg"])
def test_lower_quality_gives_a_smaller_file(picture, fmt):
    sizes = [len(encode_image(picture, fmt, q)) for q in (5, 50, 95)]
    assert sizes[0] < sizes[1] < sizes[2]


@pytest.mark.parametrize("fmt", ["webp", "jpg"])
def test_higher_quality_is_closer_to_the_original(picture, fmt):
    original = np.asarray(picture, dtype=float)

    def error(q: int) -> float:
        return float(np.abs(np.asarray(decode(encode_image(picture, fmt, q)), dtype=float) - original).mean())

    assert error(95) < error(10)


def test_png_round_trip_is_lossless(picture):
    decoded = decode(encode_image(picture, "png"))
    assert decoded.format == "PNG" and decoded.mode == "RGB"
    assert np.array_equal(np.asarray(decoded), np.asarray(picture))


def test_png_ignores_quality(picture):
    assert encode_image(picture, "png", 0) == encode_image(picture, "png", 100)


@pytest.mark.parametrize("quality", [0, 100])
@pytest.mark.parametrize("fmt", ["webp", "jpg"])
def test_quality_extremes_are_accepted(picture, fmt, quality):
    assert decode(encode_image(picture, fmt, quality)).size == picture.size


@pytest.mark.parametrize(
    ("fmt", "pil_format", "magic"),
    [("webp", "WEBP", b"RIFF"), ("jpg", "JPEG", b"\xff\xd8\xff"), ("png", "PNG", b"\x89PNG\r\n\x1a\n")],
)
def test_each_format_has_its_magic_bytes(picture, fmt, pil_format, magic):
    data = encode_image(picture, fmt, 80)
    assert data.startswith(magic)
    if fmt == "webp":
        assert data[8:12] == b"WEBP"
    assert decode(data).format == pil_format


@pytest.mark.parametrize("mode", ["RGBA", "L", "P"])
@pytest.mark.parametrize("fmt", ["webp", "jpg", "png"])
def test_non_rgb_images_are_encoded_as_rgb(picture, mode, fmt):
    assert decode(encode_image(picture.convert(mode), fmt)).mode == "RGB"


def test_encoding_does_not_change_the_image(picture):
    rgba = picture.convert("RGBA")
    encode_image(rgba, "jpg")
    assert rgba.mode == "RGBA"


def test_unknown_format_is_refused(picture):
    with pytest.raises(ValueError, match="output_format"):
        encode_image(picture, "gif")


def test_content_types():
    assert CONTENT_TYPES == {"webp": "image/webp", "jpg": "image/jpeg", "png": "image/png"}
