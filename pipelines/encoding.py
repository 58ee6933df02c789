"""Encoding generated images to the output formats of the contract (webp, jpg, png)."""

from __future__ import annotations

import io

from PIL import Image

CONTENT_TYPES = {"webp": "image/webp", "jpg": "image/jpeg", "png": "image/png"}
PIL_FORMATS = {"webp": "WEBP", "jpg": "JPEG", "png": "PNG"}


def encode_image(image: Image.Image, output_format: str, quality: int = 80) -> bytes:
    """Encode an RGB image. ``quality`` (0-100) applies to webp and jpg; png is always lossless."""
    if output_format not in PIL_FORMATS:
        raise ValueError(f"output_format must be one of {', '.join(PIL_FORMATS)}, got {output_format!r}")
    if image.mode != "RGB":
        image = image.convert("RGB")
    buf = io.BytesIO()
    if output_format == "png":
        image.save(buf, format="PNG", compress_level=6)
    elif output_format == "jpg":
        # Pillow's JPEG quality runs 1-95 usefully; 0 is accepted by the contract and maps to 1.
        image.save(buf, format="JPEG", quality=max(1, min(quality, 100)), optimize=True)
    else:
        image.save(buf, format="WEBP", quality=quality, method=4)
    return buf.getvalue()
