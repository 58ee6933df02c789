"""Is a file a whole safetensors file? Its header read without loading a tensor (and without torch).

A safetensors file is an 8-byte little-endian header length, a JSON header naming each tensor's
byte range (``data_offsets``, relative to the end of the header), then the data. A truncated
download, or an HTML error page saved under a ``.safetensors`` name, fails here in microseconds
instead of deep inside a loader.
"""

from __future__ import annotations

import json
from pathlib import Path

MAX_HEADER_BYTES = 100 * 2**20  # the format's own limit


class SafetensorsError(ValueError):
    """The file is not a whole safetensors file."""


class NotSafetensors(SafetensorsError):
    """The header is not a safetensors header (the message says what is wrong with it)."""


class TruncatedSafetensors(SafetensorsError):
    """The header is sound but names bytes past the end of the file."""

    def __init__(self, size: int, expected: int) -> None:
        super().__init__(f"{size} bytes on disk, {expected} expected")
        self.size = size
        self.expected = expected


def check_safetensors_header(path: Path) -> int:
    """The number of tensors in ``path``, after checking that its header is sound and that every
    tensor's bytes lie inside the file. Raises NotSafetensors or TruncatedSafetensors (OSError
    for a file that cannot be read becomes NotSafetensors too)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            header_len = int.from_bytes(fh.read(8), "little")
            if header_len <= 0 or 8 + header_len > size:
                raise NotSafetensors("header length exceeds the file")
            if header_len > MAX_HEADER_BYTES:
                raise NotSafetensors("header is larger than the format allows")
            header = json.loads(fh.read(header_len))
    except (ValueError, OSError) as exc:
        if isinstance(exc, NotSafetensors):
            raise
        raise NotSafetensors(str(exc)) from None
    if not isinstance(header, dict):
        raise NotSafetensors("header is not a JSON object")
    end = 0
    tensors = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise NotSafetensors(f"tensor {name!r} has no valid data_offsets")
        end = max(end, offsets[1])
        tensors += 1
    if 8 + header_len + end > size:
        raise TruncatedSafetensors(size, 8 + header_len + end)
    return tensors
