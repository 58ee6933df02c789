"""Decoding input images safely, and data: URLs (pipelines/images.py)."""

from __future__ import annotations

import base64
import io
import os
import struct
import time
import zlib

import pytest
from PIL import Image

from pipelines.images import InputImageError, decode_image, format_bytes, parse_data_url


def encode(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def png_with_size(width: int, height: int) -> bytes:
    """A real 1x1 PNG whose IHDR claims width x height (CRC recomputed): a cheap decompression bomb."""
    data = bytearray(encode(Image.new("RGB", (1, 1), "red"), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_supported_formats_decode_to_rgb_of_the_right_size(fmt):
    out = decode_image(encode(Image.new("RGB", (37, 21), (10, 200, 30)), fmt))
    assert out.mode == "RGB"
    assert out.size == (37, 21)
    r, g, b = out.getpixel((18, 10))
    assert abs(r - 10) < 8 and abs(g - 200) < 8 and abs(b - 30) < 8


def test_decoded_image_is_fully_loaded_and_independent_of_the_input_buffer():
    out = decode_image(encode(Image.new("RGB", (8, 8), "blue"), "PNG"))
    assert out.getpixel((0, 0)) == (0, 0, 255)  # would raise if still lazily bound to a closed file


def test_transparent_pixels_are_composited_onto_white():
    im = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    im.putpixel((0, 0), (255, 0, 0, 255))
    out = decode_image(encode(im, "PNG"))
    assert out.mode == "RGB"
    assert out.getpixel((3, 3)) == (255, 255, 255)
    assert out.getpixel((0, 0)) == (255, 0, 0)


def test_palette_and_greyscale_images_become_rgb():
    assert decode_image(encode(Image.new("P", (5, 5), 3), "PNG")).mode == "RGB"
    assert decode_image(encode(Image.new("L", (5, 5), 128), "JPEG")).getpixel((2, 2))[0] in range(120, 136)


def test_sixteen_bit_greyscale_png_is_scaled_not_clipped():
    im = Image.new("I;16", (4, 4), 32768)
    out = decode_image(encode(im, "PNG"))
    assert out.getpixel((1, 1)) == (128, 128, 128)


def test_exif_orientation_is_applied():
    im = Image.new("RGB", (40, 20), "green")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    out = decode_image(encode(im, "JPEG", exif=exif.tobytes()))
    assert out.size == (20, 40)


def test_truncated_png_is_refused():
    data = encode(Image.effect_noise((64, 64), 50).convert("RGB"), "PNG")
    with pytest.raises(InputImageError, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2])


def test_truncated_jpeg_is_refused():
    data = encode(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG", quality=95)
    with pytest.raises(InputImageError, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2])


def test_random_bytes_are_not_an_image():
    with pytest.raises(InputImageError, match="not an image"):
        decode_image(os.urandom(2048))


def test_empty_data_is_refused():
    with pytest.raises(InputImageError, match="empty"):
        decode_image(b"")


def test_gif_is_refused_as_unsupported():
    with pytest.raises(InputImageError, match="unsupported image format GIF; use PNG, JPEG or WEBP"):
        decode_image(encode(Image.new("RGB", (4, 4)), "GIF"))


@pytest.mark.parametrize("fmt,name", [("BMP", "BMP"), ("TIFF", "TIFF")])
def test_other_formats_are_refused_by_name(fmt, name):
    with pytest.raises(InputImageError, match=f"unsupported image format {name}"):
        decode_image(encode(Image.new("RGB", (4, 4)), fmt))


def test_huge_png_header_is_refused_quickly_without_decoding():
    bomb = png_with_size(30_000, 30_000)
    start = time.perf_counter()
    with pytest.raises(InputImageError, match="too large"):
        decode_image(bomb)
    assert time.perf_counter() - start < 0.5


def test_image_over_our_pixel_cap_but_under_pillows_is_refused_from_the_header():
    start = time.perf_counter()
    with pytest.raises(
        InputImageError, match=r"8000x6000 is 48,000,000 pixels, more than the limit of 40,000,000"
    ):
        decode_image(png_with_size(8000, 6000))
    assert time.perf_counter() - start < 0.5


def test_pillows_decompression_bomb_warning_becomes_an_error():
    # Between Pillow's MAX_IMAGE_PIXELS and twice that, Pillow only warns; with a permissive cap of
    # our own the warning must still refuse the image rather than start decoding it.
    pixels = Image.MAX_IMAGE_PIXELS + 1_000_000
    with pytest.raises(InputImageError, match="decompression bomb"):
        decode_image(png_with_size(pixels // 10_000, 10_000), max_pixels=10**12)


def test_data_over_max_bytes_is_refused():
    data = encode(Image.effect_noise((64, 64), 50).convert("RGB"), "PNG")
    assert len(data) > 1000
    with pytest.raises(InputImageError, match="larger than 1000 bytes"):
        decode_image(data, max_bytes=1000)


def test_data_url_round_trip():
    data = encode(Image.new("RGB", (9, 7), "white"), "PNG")
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    assert parse_data_url(url, max_bytes=2**20) == data
    assert decode_image(parse_data_url(url, max_bytes=2**20)).size == (9, 7)


def test_data_url_with_line_breaks_and_no_padding_is_accepted():
    data = b"\x89PNG some bytes!!"
    encoded = base64.encodebytes(data).decode().rstrip("=\n")
    assert parse_data_url("data:image/png;base64," + encoded, max_bytes=1024) == data


def test_non_base64_data_url_is_refused():
    with pytest.raises(InputImageError, match="base64"):
        parse_data_url("data:image/png,%89PNG", max_bytes=1024)


def test_bad_base64_is_refused():
    with pytest.raises(InputImageError, match="invalid base64"):
        parse_data_url("data:image/png;base64,!!!not*base64$$", max_bytes=1024)


def test_data_url_without_comma_is_refused():
    with pytest.raises(InputImageError, match="malformed data URL"):
        parse_data_url("data:image/png;base64", max_bytes=1024)


def test_data_url_just_over_the_cap_is_refused():
    url = "data:image/png;base64," + base64.b64encode(b"x" * 1025).decode()
    with pytest.raises(InputImageError, match="larger than 1 KiB"):
        parse_data_url(url, max_bytes=1024)


def test_huge_data_url_is_refused_before_decoding(monkeypatch):
    def must_not_decode(*args, **kwargs):
        raise AssertionError("decoded a payload that was obviously too large")

    monkeypatch.setattr(base64, "b64decode", must_not_decode)
    url = "data:image/png;base64," + "A" * (64 * 2**20)
    start = time.perf_counter()
    with pytest.raises(InputImageError, match="larger than 10 MiB"):
        parse_data_url(url, max_bytes=10 * 2**20)
    assert time.perf_counter() - start < 0.1


def test_format_bytes():
    assert format_bytes(10 * 2**20) == "10 MiB"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(100) == "100 bytes"
