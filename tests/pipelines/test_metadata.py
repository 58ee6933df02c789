"""Generation parameters inside the output files: the A1111 text, the JSON inputs, read back with Pillow."""

from __future__ import annotations

import io
import json

import pytest
from PIL import ExifTags, Image

from pipelines.encoding import encode_image, read_parameters
from pipelines.inputs import FluxSchnellInputs, parse_inputs
from pipelines.metadata import ImageParameters, image_parameters
from tests.pipelines.helpers import inputs

FORMATS = ["png", "jpg", "webp"]


def parameters(**fields) -> ImageParameters:
    raw = {"prompt": "a red fox, in the snow", "num_inference_steps": 28, "seed": 42, **fields}
    run = parse_inputs(raw)
    width, height = run.size
    return image_parameters(run, model="flux-dev", seed=run.seed, width=width, height=height, img2img=False)


@pytest.fixture(scope="module")
def picture() -> Image.Image:
    return Image.new("RGB", (64, 48), (200, 40, 10))


def test_a1111_text_is_the_prompt_then_one_line_of_settings():
    assert parameters().a1111_text() == (
        "a red fox, in the snow\n"
        "Steps: 28, Sampler: Euler, CFG scale: 1, Guidance: 3.5, Seed: 42, Size: 1024x1024, Model: flux-dev"
    )


def test_schnell_text_has_no_guidance():
    run = FluxSchnellInputs(prompt="a cat", seed=5)
    text = image_parameters(run, model="flux-schnell", seed=5, width=512, height=512, img2img=False)
    assert "Guidance" not in text.a1111_text()
    assert "Steps: 4," in text.a1111_text()


def test_img2img_text_names_the_denoising_strength():
    run = parse_inputs({"prompt": "a cat", "image": "data:image/png;base64,AAAA", "prompt_strength": 0.6})
    text = image_parameters(run, model="flux-dev", seed=9, width=512, height=512, img2img=True).a1111_text()
    assert text.endswith("Denoising strength: 0.6")


def test_lora_sources_are_written_with_their_scales_and_without_signatures():
    from pipelines.inputs import FluxLoraInputs

    run = FluxLoraInputs(
        prompt="a cat",
        lora_weights="https://cdn.example.com/style.safetensors?X-Amz-Signature=secret&v=2",
        lora_scale=0.8,
        extra_lora="my-style",
    )
    params = image_parameters(run, model="flux-dev-lora", seed=3, width=512, height=512, img2img=False)
    text, document = params.a1111_text(), params.json_text()
    assert "secret" not in text and "secret" not in document
    assert 'Lora 1: "https://cdn.example.com/style.safetensors?X-Amz-Signature=REDACTED&v=2"' in text
    assert "Lora 1 scale: 0.8, Lora 2: my-style, Lora 2 scale: 1" in text
    assert json.loads(document)["inputs"]["lora_weights"].endswith("X-Amz-Signature=REDACTED&v=2")


def test_json_holds_the_exact_inputs_with_this_images_seed():
    document = json.loads(parameters(num_outputs=3, guidance=2.5).json_text())
    assert document["model"] == "flux-dev"
    assert (document["width"], document["height"], document["seed"]) == (1024, 1024, 42)
    assert document["inputs"]["guidance"] == 2.5
    assert document["inputs"]["prompt"] == "a red fox, in the snow"
    assert document["inputs"]["num_outputs"] == 1  # this image alone is what these inputs give


def test_an_inline_source_image_is_not_copied_into_the_file():
    run = parse_inputs({"prompt": "a cat", "image": "data:image/png;base64," + "A" * 5000})
    params = image_parameters(run, model="flux-dev", seed=1, width=512, height=512, img2img=True)
    assert "AAAA" not in params.json_text()


@pytest.mark.parametrize("fmt", FORMATS)
def test_parameters_read_back_from_each_format(picture, fmt):
    params = parameters(prompt="ein Fuchs im Schnee, über 10°")
    text, document = read_parameters(encode_image(picture, fmt, 80, params))
    assert text == params.a1111_text()
    assert json.loads(document or "") == json.loads(params.json_text())


def test_png_holds_the_parameters_chunk_a1111_reads(picture):
    png = Image.open(io.BytesIO(encode_image(picture, "png", 80, parameters())))
    assert png.text["parameters"].startswith("a red fox, in the snow\nSteps: 28, ")
    assert json.loads(png.text["fluxserve"])["seed"] == 42


@pytest.mark.parametrize("fmt", ["jpg", "webp"])
def test_jpeg_and_webp_hold_an_exif_user_comment_in_unicode(picture, fmt):
    image = Image.open(io.BytesIO(encode_image(picture, fmt, 80, parameters())))
    comment = image.getexif().get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment]
    assert comment.startswith(b"UNICODE\x00")
    assert comment[8:].decode("utf-16-be").startswith("a red fox, in the snow\nSteps: 28")


@pytest.mark.parametrize("fmt", FORMATS)
def test_without_parameters_a_file_carries_no_metadata(picture, fmt):
    image = Image.open(io.BytesIO(encode_image(picture, fmt, 80)))
    assert read_parameters(encode_image(picture, fmt, 80)) == (None, None)
    assert not image.getexif()
    assert "xmp" not in image.info and not getattr(image, "text", {})


@pytest.mark.parametrize("fmt", FORMATS)
def test_generated_files_carry_their_parameters(generator, fmt):
    result = generator.generate(inputs(output_format=fmt, seed=31, num_outputs=2))
    for i, image in enumerate(result.images):
        text, document = read_parameters(image.data)
        assert text == (
            "a red fox in the snow\n"
            f"Steps: 2, Sampler: Euler, CFG scale: 1, Guidance: 3.5, Seed: {31 + i}, Size: 512x512, "
            "Model: flux-dev"
        )
        assert json.loads(document or "")["inputs"]["seed"] == 31 + i


def test_generated_files_name_the_model_they_are_given(generator):
    [image] = generator.generate(inputs(), model_name="flux-dev-lora").images
    assert read_parameters(image.data)[0].endswith("Model: flux-dev-lora")


@pytest.mark.parametrize("fmt", FORMATS)
def test_generation_without_embedding_writes_no_metadata(generator, fmt):
    [image] = generator.generate(inputs(output_format=fmt), embed_parameters=False).images
    assert read_parameters(image.data) == (None, None)


def test_same_seed_still_gives_identical_bytes_with_parameters_inside(generator):
    a = generator.generate(inputs(seed=77, output_format="jpg"))
    b = generator.generate(inputs(seed=77, output_format="jpg"))
    assert a.images[0].data == b.images[0].data
    assert read_parameters(a.images[0].data)[0] is not None


def test_png_json_leaves_out_the_quality_it_ignores():
    assert "output_quality" not in json.loads(parameters(output_format="png").json_text())["inputs"]
