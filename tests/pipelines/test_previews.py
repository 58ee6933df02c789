"""Live previews: a latent part-way through denoising as a small WebP image (pipelines/previews.py)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from pipelines.previews import PreviewDecoder, PreviewRequest, latent_to_rgb
from tests.pipelines.helpers import inputs


def decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def packed_latents(pipe, width: int, height: int):
    """Random packed Flux latents (1, tokens, 64) for an output of width x height pixels."""
    import torch

    h, w = 2 * (height // (pipe.vae_scale_factor * 2)), 2 * (width // (pipe.vae_scale_factor * 2))
    latents = torch.randn(1, 16, h, w, generator=torch.Generator().manual_seed(0))
    return pipe._pack_latents(latents, 1, 16, h, w)


@pytest.mark.parametrize(("width", "height", "size"), [(1024, 768, (256, 192)), (512, 1024, (128, 256))])
def test_the_preview_of_a_latent_is_a_webp_image_of_the_output_shape_within_max_side(
    tiny_model, width, height, size
):
    pipe = tiny_model.pipe
    data = PreviewDecoder(max_side=256).webp(pipe, packed_latents(pipe, width, height), height, width)

    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    assert decode(data).size == size


def test_the_linear_preview_maps_16_channels_to_rgb_in_range():
    import torch

    rgb = latent_to_rgb(torch.randn(2, 16, 8, 6) * 10)

    assert rgb.shape == (2, 3, 8, 6)
    assert float(rgb.min()) >= 0.0 and float(rgb.max()) <= 1.0


def test_the_preview_of_a_zero_latent_is_the_factors_bias():
    import torch

    rgb = latent_to_rgb(torch.zeros(1, 16, 2, 2))

    # bias (-0.0329, -0.0718, -0.0851) mapped from [-1, 1] to [0, 1]
    assert [round(float(c), 4) for c in rgb[0, :, 0, 0]] == [0.4836, 0.4641, 0.4575]


def test_generation_sends_a_preview_every_n_steps_and_at_the_last(generator):
    sent: list[tuple[int, int, bytes]] = []
    previews = PreviewRequest(lambda done, total, data: sent.append((done, total, data)), every_n_steps=4)

    result = generator.generate(inputs(num_inference_steps=10, megapixels="0.25"), previews=previews)

    assert [(done, total) for done, total, _ in sent] == [(4, 10), (8, 10), (10, 10)]
    assert all(decode(data).size == (256, 256) for _, _, data in sent)
    assert len(result.images) == 1


def test_generation_without_previews_sends_none_and_gives_the_same_image(generator):
    sent: list[int] = []
    previews = PreviewRequest(lambda done, total, data: sent.append(done), every_n_steps=1)

    plain = generator.generate(inputs(num_inference_steps=3, seed=5))
    with_previews = generator.generate(inputs(num_inference_steps=3, seed=5), previews=previews)

    assert sent == [1, 2, 3]
    assert plain.images[0].data == with_previews.images[0].data


def test_a_tiny_vae_decodes_the_preview_when_configured(tiny_model, tmp_path):
    from diffusers import AutoencoderTiny

    AutoencoderTiny(
        latent_channels=16,
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
    ).save_pretrained(tmp_path / "taesd")
    pipe = tiny_model.pipe
    decoder = PreviewDecoder(max_side=128, taesd=tmp_path / "taesd")

    image = decoder.image(pipe, packed_latents(pipe, 512, 256), 256, 512)

    assert image.size == (128, 64)
    assert decoder._taesd is not None  # decoded by the tiny VAE, not the linear factors
