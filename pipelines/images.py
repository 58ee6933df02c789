"""Decoding user-supplied input images safely (img2img sources), and ``data:`` URLs.

Pillow only, no torch: the API process may validate with this module, and a worker calls it before the
pipeline runs. Everything a user can send is treated as hostile:

- only the PNG, JPEG and WEBP parsers ever see the bytes (``Image.open(formats=...)``), so the header
  parsers of Pillow's ~40 other formats are not attack surface;
- the pixel count is checked from the header, before any pixel is decoded (decompression bombs);
  Pillow's own bomb check (``DecompressionBombError`` / ``DecompressionBombWarning``) is turned into
  the same error;
- truncated files fail (``ImageFile.LOAD_TRUNCATED_IMAGES`` is left False: a half-grey image would
  silently become the img2img source);
- every failure is an :class:`InputImageError` whose message says what is wrong and what to do.
"""

from __future__ import annotations

import base64
import binascii
import io
import threading
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "InputImageError",
    "decode_image",
    "format_bytes",
    "data_url_size_problem",
    "parse_data_url",
]

DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_BYTES = 10 * 2**20

# Pillow format names we accept. "MPO" is a multi-picture JPEG (what many cameras and phones write):
# Pillow's JPEG plugin opens such files as MPO; the first picture is an ordinary JPEG.
ALLOWED_FORMATS = frozenset({"PNG", "JPEG", "MPO", "WEBP"})
_OPEN_FORMATS = ("PNG", "JPEG", "WEBP")  # the plugins allowed to parse untrusted bytes

# Magic numbers of formats people commonly send by mistake, only to name them in the error message
# (their parsers are never run).
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"),
    (b"%PDF", "PDF"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
    (b"<svg", "SVG"),
    (b"<?xml", "SVG"),
)

# Pillow reports a possible decompression bomb with a *warning* (between MAX_IMAGE_PIXELS and twice
# that) raised through the process-global warnings machinery. We turn it into an error with
# warnings.catch_warnings(), which is not thread-safe on Python 3.11; this lock keeps our own
# concurrent decodes from interleaving their filter save/restore. It only covers Image.open (header
# parsing, fast), not pixel decoding.
_OPEN_LOCK = threading.Lock()


class InputImageError(ValueError):
    """The input image cannot be used; the message says why, in words a user can act on."""


def format_bytes(n: int) -> str:
    """``10485760`` -> ``"10 MiB"``, ``1536`` -> ``"1.5 KiB"``, ``100`` -> ``"100 bytes"``."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} bytes"


def _sniff_format(data: bytes) -> str | None:
    head = data[:16].lstrip() if data[:1].isspace() else data[:16]
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] != b"WEBP":
        return "RIFF"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in (b"heic", b"heix", b"mif1", b"msf1", b"hevc"):
            return "HEIC"
    return None


def _unsupported(fmt: str) -> InputImageError:
    return InputImageError(f"unsupported image format {fmt}; use PNG, JPEG or WEBP")


def _too_many_pixels(width: int, height: int, max_pixels: int) -> InputImageError:
    return InputImageError(
        f"image is too large: {width}x{height} is {width * height:,} pixels, "
        f"more than the limit of {max_pixels:,}; send a smaller image"
    )


def decode_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES
) -> Image.Image:
    """Decode PNG, JPEG or WEBP bytes into a fully loaded RGB image, EXIF orientation applied.

    Raises :class:`InputImageError` for empty or oversized data, anything that is not one of the three
    formats, truncated or corrupt files, and images with more than ``max_pixels`` pixels (checked from
    the header, before decoding). Animated images give their first frame.
    """
    if not data:
        raise InputImageError("image is empty (0 bytes)")
    if len(data) > max_bytes:
        raise InputImageError(
            f"image is larger than {format_bytes(max_bytes)} ({format_bytes(len(data))}); send a smaller file"
        )

    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Lazy: reads the header only; no pixel is decoded here.
            im = Image.open(io.BytesIO(data), formats=_OPEN_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputImageError(f"image is too large (possible decompression bomb): {exc}") from None
    except UnidentifiedImageError:
        fmt = _sniff_format(data)
        if fmt is not None:
            raise _unsupported(fmt) from None
        raise InputImageError("not an image: the data is not a PNG, JPEG or WEBP file") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputImageError(f"image is corrupt: {exc}") from None

    try:
        # Defence in depth: Image.open was restricted to our formats, but check what it says it is.
        if im.format not in ALLOWED_FORMATS:
            raise _unsupported(im.format or "unknown")
        width, height = im.size
        if width <= 0 or height <= 0:
            raise InputImageError(f"image has an invalid size {width}x{height}")
        # The decompression-bomb check, from the header, before load() allocates anything.
        if width * height > max_pixels:
            raise _too_many_pixels(width, height, max_pixels)

        try:
            im.load()  # LOAD_TRUNCATED_IMAGES stays False: a short file raises here
        except Image.DecompressionBombError as exc:
            raise InputImageError(f"image is too large (possible decompression bomb): {exc}") from None
        except MemoryError:
            raise InputImageError("image is too large to decode") from None
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
            raise InputImageError(
                f"image data is truncated or corrupt ({exc}); send the complete file"
            ) from None

        try:
            oriented = ImageOps.exif_transpose(im)
        except Exception:  # noqa: BLE001 - malformed EXIF: keep the pixels as stored rather than refuse
            oriented = im
        if oriented is None:  # pragma: no cover - only with in_place=True
            oriented = im
        return _to_rgb(oriented)
    finally:
        im.close()


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any mode Pillow gives for PNG/JPEG/WEBP to RGB.

    Transparency is composited onto white, not black: a plain ``convert("RGB")`` drops alpha and
    exposes whatever colour the transparent pixels happen to store (often black, sometimes garbage),
    while white matches how browsers and viewers show a transparent logo or cut-out on a page, which is
    what a user expects the model to start from.
    """
    if im.mode == "I" or im.mode.startswith("I;16"):
        # 16-bit greyscale PNG: scale to 8 bits (convert("RGB") would clip everything above 255 to white).
        im = im.convert("I").point(lambda v: v / 256).convert("L")
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        return background.convert("RGB")
    if im.mode == "RGB":
        return im.copy()  # detached from the file object we are about to close
    return im.convert("RGB")


def data_url_size_problem(url: str, max_bytes: int) -> str | None:
    """Why a ``data:`` URL is surely over ``max_bytes`` decoded, judged on its length alone (cheap:
    nothing is decoded or copied, so the API can refuse it at create), or None.

    The exact decoded size of a clean payload is 3/4 of its length; ~5% is allowed for line breaks
    so wrapped base64 is not refused here (``parse_data_url`` checks the exact size after)."""
    if not isinstance(url, str) or url[:5].lower() != "data:":
        return None
    comma = url.find(",", 0, 1024)  # the header is short; don't scan a huge payload for it
    if comma < 0:
        return None
    encoded_len = len(url) - comma - 1
    max_encoded = 4 * ((max_bytes + 2) // 3)
    if encoded_len > max_encoded + max_encoded // 20 + 16:
        return f"data URL image is larger than {format_bytes(max_bytes)}"
    return None


def parse_data_url(url: str, max_bytes: int) -> bytes:
    """``data:[<mime>];base64,<payload>`` -> the decoded bytes.

    Only base64 data URLs are accepted. The size is checked on the encoded length before anything is
    decoded or copied, so a gigabyte-long string is refused cheaply. The media type is not trusted
    (clients send ``application/octet-stream`` or nothing): :func:`decode_image` checks the real
    format. Line breaks inside the payload, missing ``=`` padding and the URL-safe alphabet are
    tolerated.
    """
    if not isinstance(url, str) or url[:5].lower() != "data:":
        raise InputImageError("not a data URL (expected data:image/...;base64,...)")
    comma = url.find(",", 0, 1024)  # the header is short; don't scan a huge payload for it
    if comma < 0:
        raise InputImageError("malformed data URL: no ',' after the media type")
    header = url[5:comma]
    params = [p.strip().lower() for p in header.split(";")]
    if "base64" not in params[1:]:
        raise InputImageError("data URL must be base64-encoded (data:image/png;base64,...)")

    too_large = data_url_size_problem(url, max_bytes)
    if too_large:
        raise InputImageError(too_large)

    payload = url[comma + 1 :]
    if any(c in payload for c in " \t\r\n"):
        payload = "".join(payload.split())
    if "%" in payload:
        raise InputImageError("data URL payload must be plain base64, not percent-encoded")
    if "-" in payload or "_" in payload:
        payload = payload.translate(str.maketrans("-_", "+/"))
    remainder = len(payload) % 4
    if remainder == 1:
        raise InputImageError("data URL contains invalid base64 (wrong length)")
    if remainder:
        payload += "=" * (4 - remainder)
    decoded_len = len(payload) // 4 * 3 - (len(payload) - len(payload.rstrip("=")))
    if decoded_len > max_bytes:
        raise InputImageError(f"data URL image is larger than {format_bytes(max_bytes)}")
    if decoded_len <= 0:
        raise InputImageError("data URL is empty")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputImageError(f"data URL contains invalid base64 ({exc})") from None
