"""Encoding generated images to the output formats of the contract (webp, jpg, png).

With ``parameters`` the file carries how it was made (pipelines/metadata.py): PNG in text chunks,
JPEG and WebP in EXIF UserComment and XMP. Without, it carries no metadata at all.
"""

from __future__ import annotations

import io
from typing import Any
from xml.sax.saxutils import escape

from PIL import ExifTags, Image
from PIL.PngImagePlugin import PngInfo

from pipelines.metadata import JSON_KEY, TEXT_KEY, ImageParameters

CONTENT_TYPES = {"webp": "image/webp", "jpg": "image/jpeg", "png": "image/png"}
PIL_FORMATS = {"webp": "WEBP", "jpg": "JPEG", "png": "PNG"}
# EXIF UserComment as A1111 writes it (piexif's "unicode" encoding): an 8-byte charset prefix,
# then UTF-16 big-endian text.
USER_COMMENT_PREFIX = b"UNICODE\x00"
XMP_NAMESPACE = "urn:fluxserve:xmp:1.0/"


def encode_image(
    image: Image.Image, output_format: str, quality: int = 80, parameters: ImageParameters | None = None
) -> bytes:
    """Encode an RGB image. ``quality`` (0-100) applies to webp and jpg; png is always lossless."""
    if output_format not in PIL_FORMATS:
        raise ValueError(f"output_format must be one of {', '.join(PIL_FORMATS)}, got {output_format!r}")
    if image.mode != "RGB":
        image = image.convert("RGB")
    extra: dict[str, Any] = {}
    if parameters is not None:
        extra = _png_metadata(parameters) if output_format == "png" else _exif_and_xmp(parameters)
    buf = io.BytesIO()
    if output_format == "png":
        image.save(buf, format="PNG", compress_level=6, **extra)
    elif output_format == "jpg":
        # Pillow's JPEG quality runs 1-95 usefully; 0 is accepted by the contract and maps to 1.
        image.save(buf, format="JPEG", quality=max(1, min(quality, 100)), optimize=True, **extra)
    else:
        image.save(buf, format="WEBP", quality=quality, method=4, **extra)
    return buf.getvalue()


def _png_metadata(parameters: ImageParameters) -> dict[str, Any]:
    info = PngInfo()
    # tEXt where the text is Latin-1, else iTXt (UTF-8): Pillow picks, as A1111's own writer does.
    info.add_text(TEXT_KEY, parameters.a1111_text())
    info.add_text(JSON_KEY, parameters.json_text())
    return {"pnginfo": info}


def _exif_and_xmp(parameters: ImageParameters) -> dict[str, Any]:
    exif = Image.Exif()
    exif[ExifTags.Base.Software] = "fluxserve"
    comment = USER_COMMENT_PREFIX + parameters.a1111_text().encode("utf-16-be")
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment] = comment
    return {"exif": exif.tobytes(), "xmp": _xmp_packet(parameters)}


def _xmp_packet(parameters: ImageParameters) -> bytes:
    """An XMP packet holding the exact inputs as JSON (property ``fluxserve:parameters``)."""
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">'
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description rdf:about="" xmlns:{JSON_KEY}="{XMP_NAMESPACE}">'
        f"<{JSON_KEY}:parameters>{escape(parameters.json_text())}</{JSON_KEY}:parameters>"
        "</rdf:Description></rdf:RDF></x:xmpmeta>"
        '<?xpacket end="r"?>'
    ).encode()


def read_parameters(data: bytes) -> tuple[str | None, str | None]:
    """The A1111 text and the JSON inputs inside an encoded image (None where absent)."""
    with Image.open(io.BytesIO(data)) as image:
        if image.format == "PNG":
            text = getattr(image, "text", {})
            return text.get(TEXT_KEY), text.get(JSON_KEY)
        comment = image.getexif().get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.UserComment)
        xmp = image.info.get("xmp")
    a1111 = None
    if isinstance(comment, bytes) and comment.startswith(USER_COMMENT_PREFIX):
        a1111 = comment[len(USER_COMMENT_PREFIX) :].decode("utf-16-be")
    return a1111, _json_from_xmp(xmp)


def _json_from_xmp(xmp: bytes | str | None) -> str | None:
    if not xmp:
        return None
    from xml.etree import ElementTree

    text = xmp.decode() if isinstance(xmp, bytes) else xmp
    start = text.find("<x:xmpmeta")
    end = text.rfind("</x:xmpmeta>")
    if start < 0 or end < 0:
        return None
    root = ElementTree.fromstring(text[start : end + len("</x:xmpmeta>")])
    found = root.find(f".//{{{XMP_NAMESPACE}}}parameters")
    return found.text if found is not None else None
