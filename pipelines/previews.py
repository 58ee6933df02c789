"""Live previews: a Flux latent, part-way through denoising, as a small WebP image.

Two ways to see a latent:

- **linear** (the default, no weights): each of the 16 latent channels contributes a fixed
  amount of red, green and blue. The factors are the ones ComfyUI uses for Flux
  (``comfy/latent_formats.py``, class ``Flux``: ``latent_rgb_factors`` and
  ``latent_rgb_factors_bias``), fitted on the model's latent space (the one the transformer
  sees, before the VAE's scale and shift are undone). It costs one 16x3 matrix product on a
  latent 8x smaller than the image: a blurry but faithful idea of the composition and colours.
- **tiny VAE**: an ``AutoencoderTiny`` folder (TAEF1) decodes the latent into a real small
  image, at the cost of a small decoder pass.

The latent handed to the step callback is the current noisy one (x_t), not the model's clean
estimate: early previews are noisy, later ones converge to the result.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

if TYPE_CHECKING:
    import torch

DEFAULT_MAX_SIDE = 256
DEFAULT_EVERY_N_STEPS = 4
WEBP_QUALITY = 70  # small files: a preview is looked at for a second

# Flux's 16 latent channels -> RGB (rows: channels; columns: R, G, B), and the bias added after.
FLUX_LATENT_RGB_FACTORS: tuple[tuple[float, float, float], ...] = (
    (-0.0346, 0.0244, 0.0681),
    (0.0034, 0.0210, 0.0687),
    (0.0275, -0.0668, -0.0433),
    (-0.0174, 0.0160, 0.0617),
    (0.0859, 0.0721, 0.0329),
    (0.0004, 0.0383, 0.0115),
    (0.0405, 0.0861, 0.0915),
    (-0.0236, -0.0185, -0.0259),
    (-0.0245, 0.0250, 0.1180),
    (0.1008, 0.0755, -0.0421),
    (-0.0515, 0.0201, 0.0011),
    (0.0428, -0.0012, -0.0036),
    (0.0817, 0.0765, 0.0749),
    (-0.1264, -0.0522, -0.1103),
    (-0.0280, -0.0881, -0.0499),
    (-0.1262, -0.0982, -0.0778),
)
FLUX_LATENT_RGB_BIAS: tuple[float, float, float] = (-0.0329, -0.0718, -0.0851)

PreviewSink = Callable[[int, int, bytes], None]  # (steps done, total steps, WebP bytes)


def latent_to_rgb(latents: torch.Tensor) -> torch.Tensor:
    """(B, 16, h, w) latents -> (B, 3, h, w) RGB in [0, 1], by the linear factors."""
    import torch

    factors = torch.tensor(FLUX_LATENT_RGB_FACTORS, dtype=torch.float32, device=latents.device)
    bias = torch.tensor(FLUX_LATENT_RGB_BIAS, dtype=torch.float32, device=latents.device)
    rgb = torch.nn.functional.linear(latents.float().movedim(1, -1), factors.T, bias)  # (B, h, w, 3)
    return ((rgb + 1) / 2).clamp(0, 1).movedim(-1, 1)


def rgb_to_image(rgb: torch.Tensor, max_side: int = DEFAULT_MAX_SIDE) -> Image.Image:
    """The first image of a (B, 3, h, w) [0, 1] batch as a PIL image, its longer side at most
    ``max_side`` (a linear preview is 8x smaller than the output: it is scaled up to fit)."""
    import torch

    pixels = (rgb[0].movedim(0, -1) * 255).round().to("cpu", torch.uint8).numpy()
    image = Image.fromarray(pixels, "RGB")
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resample = Image.Resampling.BILINEAR if scale > 1 else Image.Resampling.LANCZOS
    return image.resize(size, resample) if size != image.size else image


def encode_webp(image: Image.Image, quality: int = WEBP_QUALITY) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="WEBP", quality=quality, method=0)  # method 0: the fastest encoder
    return buf.getvalue()


class PreviewDecoder:
    """Packed Flux latents (B, tokens, 64) -> a small WebP image: linear factors, or a tiny VAE
    when ``taesd`` names an AutoencoderTiny folder (loaded on first use, on the latents' device)."""

    def __init__(self, max_side: int = DEFAULT_MAX_SIDE, taesd: str | Path | None = None) -> None:
        self.max_side = max_side
        self.taesd_path = Path(taesd) if taesd else None
        self._taesd = None

    def image(self, pipe, latents: torch.Tensor, height: int, width: int) -> Image.Image:
        """``pipe``: the running Flux pipeline (its ``_unpack_latents``, VAE scale and shift);
        ``height``/``width``: the output's pixel size."""
        import torch

        with torch.inference_mode():
            unpacked = pipe._unpack_latents(latents[:1], height, width, pipe.vae_scale_factor)
            if self.taesd_path is None:
                return rgb_to_image(latent_to_rgb(unpacked), self.max_side)
            vae = pipe.vae.config
            raw = unpacked / vae.scaling_factor + vae.shift_factor  # the VAE's own latent space
            decoder = self._load_taesd(raw.device, raw.dtype)
            decoded = decoder.decode(raw.to(decoder.dtype)).sample  # [-1, 1]
            return rgb_to_image(((decoded.float() + 1) / 2).clamp(0, 1), self.max_side)

    def webp(self, pipe, latents: torch.Tensor, height: int, width: int) -> bytes:
        return encode_webp(self.image(pipe, latents, height, width))

    def _load_taesd(self, device, dtype):
        if self._taesd is None:
            from diffusers import AutoencoderTiny

            self._taesd = AutoencoderTiny.from_pretrained(self.taesd_path, local_files_only=True).to(
                device, dtype
            )
        return self._taesd


@dataclass
class PreviewRequest:
    """A run's previews: one every ``every_n_steps`` steps and at the last step, each handed to
    ``send``; none closer than ``min_interval_s`` to the previous one (but the last step's)."""

    send: PreviewSink
    decoder: PreviewDecoder = field(default_factory=PreviewDecoder)
    every_n_steps: int = DEFAULT_EVERY_N_STEPS
    min_interval_s: float = 0.0
    _last_sent: float = field(default=float("-inf"), repr=False)

    def due(self, done: int, total: int) -> bool:
        if done == total:
            return True
        if self.every_n_steps <= 0 or done % self.every_n_steps:
            return False
        return time.monotonic() - self._last_sent >= self.min_interval_s

    def make(self, pipe, latents: torch.Tensor, height: int, width: int, done: int, total: int) -> None:
        self._last_sent = time.monotonic()
        self.send(done, total, self.decoder.webp(pipe, latents, height, width))
