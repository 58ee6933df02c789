"""`fluxserve generate` and `fluxserve tiny-model` on the tiny model."""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from pipelines.tiny import TINY_MARKER, is_tiny_model
from server.cli import main


def size_of(path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size


def test_generate_writes_each_output_at_its_size_and_prints_the_seed(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out.png"
    rc = main(
        [
            "generate",
            "a cat",
            "--model",
            str(tiny_model_dir),
            "--steps",
            "2",
            "--megapixels",
            "0.25",
            "--aspect-ratio",
            "16:9",
            "--num-outputs",
            "2",
            "--seed",
            "7",
            "-o",
            str(out),
        ]
    )
    stdout = capsys.readouterr().out
    assert rc == 0
    assert not out.exists()
    for i in (0, 1):
        path = tmp_path / f"out-{i}.png"
        assert path.read_bytes().startswith(b"\x89PNG")
        assert size_of(path) == (672, 384)
    assert "Using seed: 7" in stdout
    assert "(seed 7)" in stdout and "(seed 8)" in stdout


def test_generate_single_output_keeps_the_file_name(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "one.jpg"
    rc = main(
        [
            "generate",
            "a cat",
            "--model",
            str(tiny_model_dir),
            "--steps",
            "1",
            "--megapixels",
            "0.25",
            "--aspect-ratio",
            "21:9",
            "--seed",
            "3",
            "-o",
            str(out),
        ]
    )
    assert rc == 0
    assert out.read_bytes().startswith(b"\xff\xd8\xff")  # format from the extension
    assert size_of(out) == (768, 320)


def test_generate_without_seed_prints_the_random_one(tiny_model_dir, tmp_path, capsys):
    rc = main(
        [
            "generate",
            "a cat",
            "--model",
            str(tiny_model_dir),
            "--steps",
            "1",
            "--megapixels",
            "0.25",
            "--aspect-ratio",
            "21:9",
            "-o",
            str(tmp_path / "r.webp"),
        ]
    )
    stdout = capsys.readouterr().out
    assert rc == 0
    seed = int(stdout.split("Using seed: ")[1].split(";")[0])
    assert seed > 0
    assert (tmp_path / "r.webp").read_bytes()[8:12] == b"WEBP"


def test_generate_img2img_from_a_file(tiny_model_dir, tmp_path, capsys):
    source = tmp_path / "src.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)).save(source)
    out = tmp_path / "i2i.png"
    rc = main(
        [
            "generate",
            "a cat",
            "--model",
            str(tiny_model_dir),
            "--steps",
            "2",
            "--image",
            str(source),
            "--prompt-strength",
            "0.5",
            "--seed",
            "1",
            "-o",
            str(out),
        ]
    )
    assert rc == 0
    assert size_of(out) == (96, 80)


def test_tiny_model_command_writes_a_folder_marked_as_random(tmp_path, capsys):
    target = tmp_path / "tiny"
    assert main(["tiny-model", str(target)]) == 0
    index = json.loads((target / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline"
    assert index["_fluxserve"]["kind"] == TINY_MARKER
    assert is_tiny_model(target)
    assert "noise" in (target / "README.md").read_text()
    assert "noise" in capsys.readouterr().out


def test_bad_input_exits_2_naming_the_field(tiny_model_dir, tmp_path, capsys):
    rc = main(
        ["generate", "a cat", "--model", str(tiny_model_dir), "--steps", "0", "-o", str(tmp_path / "x.png")]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert "num_inference_steps" in err
    assert not list(tmp_path.iterdir())


def test_every_bad_field_is_named(tiny_model_dir, tmp_path, capsys):
    rc = main(
        [
            "generate",
            "a cat",
            "--model",
            str(tiny_model_dir),
            "--guidance",
            "NaN",
            "--aspect-ratio",
            "7:5",
            "-o",
            str(tmp_path / "x.png"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert "guidance" in err and "aspect_ratio" in err


def test_bad_image_file_exits_2(tiny_model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    rc = main(
        [
            "generate",
            "a cat",
            "--model",
            str(tiny_model_dir),
            "--image",
            str(bad),
            "-o",
            str(tmp_path / "x.png"),
        ]
    )
    assert rc == 2
    assert "--image" in capsys.readouterr().err


def test_missing_model_folder_exits_1_with_the_reason(tmp_path, capsys):
    rc = main(["generate", "a cat", "--model", str(tmp_path / "nope"), "-o", str(tmp_path / "x.png")])
    assert rc == 1
    assert "does not exist" in capsys.readouterr().err


def test_output_decodes_to_the_same_image_as_the_library(tiny_model_dir, tmp_path, generator, capsys):
    from pipelines.inputs import parse_inputs

    out = tmp_path / "same.png"
    main(
        [
            "generate",
            "a cat",
            "--model",
            str(tiny_model_dir),
            "--steps",
            "2",
            "--megapixels",
            "0.25",
            "--aspect-ratio",
            "21:9",
            "--seed",
            "11",
            "-o",
            str(out),
        ]
    )
    want = generator.generate(
        parse_inputs(
            {
                "prompt": "a cat",
                "num_inference_steps": 2,
                "megapixels": "0.25",
                "aspect_ratio": "21:9",
                "seed": 11,
                "output_format": "png",
            }
        )
    ).images[0]
    assert out.read_bytes() == want.data
    assert Image.open(io.BytesIO(want.data)).size == (768, 320)
