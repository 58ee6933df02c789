"""OpenAI's ``size`` ("WxH" or "auto") onto the contract's aspect-ratio table (CONTRACT.md section 2).

The rule, in the order it is applied:

1. ``auto`` (or no size): the model's defaults (1:1 at 1 megapixel unless configured otherwise).
2. A size whose width/height ratio is within ``RATIO_TOLERANCE`` (relative) of a table entry's
   ratio, either as named (4:3 = 1.333) or as the table's size has it (1152x896 = 1.286), takes
   that entry: every exact table size (1344x768, or 672x384 at 0.25) matches, and so do sizes of
   nearly the same shape: DALL-E's 1792x1024 (1.75) -> 16:9, 1536x1024 -> 3:2, 1024x768 -> 4:3.
3. Its area then picks the megapixels: whichever of 1 and 0.25 is nearer on a log scale
   (the boundary is 0.5 megapixels), so 1024x1024 -> 1, 512x512 -> 0.25, 256x256 -> 0.25.
4. Anything else (no ratio close enough, a side of 0, not ``WxH``) is refused, naming the sizes
   the table gives.

The image made is the table's size for that ratio and megapixels, not the size asked for.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from pipelines.inputs import ASPECT_RATIO_SIZES, output_size

# How far (relative) a size's ratio may be from a table ratio: 1792x1024 is 1.75 and 16:9's
# table size is exactly 1.75, 1536x1024 (1.5) is 3:2's 1216x832 (1.4615) by 2.6%.
RATIO_TOLERANCE = 0.03
# The two megapixel settings and the area (in pixels) each stands for.
MEGAPIXELS = {"1": 1024 * 1024, "0.25": 512 * 512}
MAX_SIDE = 16384  # past this a "size" is no image size at all
_SIZE = re.compile(r"\s*([0-9]{1,6})\s*[xX×]\s*([0-9]{1,6})\s*")


@dataclass(frozen=True)
class SizeChoice:
    """What a ``size`` becomes: the contract's ``aspect_ratio`` and ``megapixels``."""

    aspect_ratio: str
    megapixels: str

    @property
    def size(self) -> tuple[int, int]:
        """Width and height of the image that will be made."""
        return output_size(self.aspect_ratio, self.megapixels)


class UnsupportedSize(ValueError):
    """A ``size`` that maps onto no entry of the table."""


def accepted_sizes() -> list[str]:
    """Every exact size the table gives, 1 megapixel first: for error messages and the docs."""
    return [f"{w}x{h}" for mp in MEGAPIXELS for w, h in (output_size(r, mp) for r in ASPECT_RATIO_SIZES)]


def choose_size(size: str | None) -> SizeChoice | None:
    """The aspect ratio and megapixels for an OpenAI ``size``; None for ``auto`` or no size (the
    model's defaults). Raises UnsupportedSize."""
    if size is None or size.strip().lower() in ("", "auto"):
        return None
    match = _SIZE.fullmatch(size)
    if match is None:
        raise UnsupportedSize(f"size must be 'WxH' or 'auto', not {size[:40]!r}; {_accepted()}")
    width, height = int(match.group(1)), int(match.group(2))
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        raise UnsupportedSize(f"size {width}x{height} is out of range; {_accepted()}")
    ratio = _nearest_ratio(width / height)
    if ratio is None:
        raise UnsupportedSize(f"size {width}x{height} has no supported aspect ratio; {_accepted()}")
    return SizeChoice(ratio, _nearest_megapixels(width * height))


def _nearest_ratio(ratio: float) -> str | None:
    best = min(ASPECT_RATIO_SIZES, key=lambda name: _distance(ratio, name))
    return best if _distance(ratio, best) <= math.log1p(RATIO_TOLERANCE) else None


def _distance(ratio: float, name: str) -> float:
    """How far ``ratio`` is from a table entry, on a log scale: from the nearer of its named ratio
    and its table size's ratio."""
    named_w, named_h = (int(part) for part in name.split(":"))
    width, height = ASPECT_RATIO_SIZES[name]
    return min(abs(math.log(ratio * named_h / named_w)), abs(math.log(ratio * height / width)))


def _nearest_megapixels(area: int) -> str:
    return min(MEGAPIXELS, key=lambda mp: abs(math.log(area / MEGAPIXELS[mp])))


def _accepted() -> str:
    return (
        f"use 'auto' or one of {', '.join(accepted_sizes())} "
        f"(or a size within {RATIO_TOLERANCE:.0%} of one of those aspect ratios, such as 1792x1024)"
    )
