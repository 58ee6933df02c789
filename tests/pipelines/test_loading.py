"""Loading a FLUX pipeline from a ModelSpec: folders, single-file transformers, refusals, `auto`."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from pipelines.errors import ModelLoadError
from pipelines.generate import FluxGenerator
from pipelines.inputs import parse_inputs
from pipelines.loading import TINY_WARNING, load_model, resolve_dtype
from pipelines.spec import ModelSpec
from pipelines.tiny import TINY_MARKER, is_tiny_model

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")


def request(seed: int = 99):
    return parse_inputs(
        {
            "prompt": "a lighthouse",
            "megapixels": "0.25",
            "aspect_ratio": "21:9",
            "num_inference_steps": 2,
            "output_format": "png",
            "seed": seed,
        }
    )


def load_error(**spec) -> str:
    with pytest.raises(ModelLoadError) as info:
        load_model(ModelSpec(**spec))
    return str(info.value)


# -- the folder load ------------------------------------------------------------------------


def test_dtype_auto_is_float32_on_cpu(tiny_model_dir):
    model = load_model(ModelSpec(weights=str(tiny_model_dir), device="cpu"))
    assert model.device == "cpu"
    assert model.dtype == torch.float32
    assert model.pipe.transformer.dtype == torch.float32
    assert model.pipe.text_encoder_2.dtype == torch.float32


def test_dtype_auto_is_bfloat16_on_cuda():
    assert resolve_dtype(ModelSpec(), "cuda") == torch.bfloat16
    assert resolve_dtype(ModelSpec(dtype="float16"), "cpu") == torch.float16


def test_the_img2img_pipeline_keeps_the_models_dtype(tiny_model_dir):
    """Making the img2img face must not cast the shared modules (diffusers' default is float32)."""
    model = load_model(ModelSpec(weights=str(tiny_model_dir), dtype="bfloat16"))
    assert model.pipe.transformer.dtype == torch.bfloat16
    assert model.img2img.text_encoder_2.dtype == torch.bfloat16


def test_tiny_folder_is_recognised_and_warns_its_images_are_noise(tiny_model):
    assert tiny_model.is_tiny
    assert TINY_WARNING in tiny_model.warnings
    assert "noise" in TINY_WARNING


def test_img2img_pipeline_shares_the_modules(tiny_model):
    assert tiny_model.img2img.transformer is tiny_model.pipe.transformer
    assert tiny_model.img2img.vae is tiny_model.pipe.vae
    assert tiny_model.img2img.text_encoder_2 is tiny_model.pipe.text_encoder_2


def test_no_safety_checker_unless_configured(tiny_model):
    assert tiny_model.safety is None


# -- single-file transformer ----------------------------------------------------------------


@pytest.fixture(scope="module")
def transformer_file(tiny_model, tmp_path_factory) -> Path:
    """The tiny transformer's state dict in one .safetensors file (diffusers key layout)."""
    path = tmp_path_factory.mktemp("single-file") / "flux-tiny-transformer.safetensors"
    state = {k: v.detach().contiguous() for k, v in tiny_model.pipe.transformer.state_dict().items()}
    save_file(state, str(path))
    return path


def test_single_file_transformer_gives_the_same_image_as_the_folder(
    tiny_model_dir, transformer_file, generator
):
    model = load_model(ModelSpec(weights=str(tiny_model_dir), transformer_file=str(transformer_file)))
    single = FluxGenerator(model).generate(request())
    assert single.images[0].data == generator.generate(request()).images[0].data


def test_single_file_transformer_weights_are_the_ones_used(tiny_model, tiny_model_dir, tmp_path, generator):
    state = {k: v.detach().clone().contiguous() for k, v in tiny_model.pipe.transformer.state_dict().items()}
    state["proj_out.weight"].mul_(-1.0)
    path = tmp_path / "changed.safetensors"
    save_file(state, str(path))
    model = load_model(ModelSpec(weights=str(tiny_model_dir), transformer_file=str(path)))
    assert torch.equal(model.pipe.transformer.proj_out.weight, state["proj_out.weight"])
    assert (
        FluxGenerator(model).generate(request()).images[0].data
        != generator.generate(request()).images[0].data
    )


def test_truncated_transformer_file_is_refused(tiny_model_dir, transformer_file, tmp_path):
    cut = tmp_path / "cut.safetensors"
    data = transformer_file.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    message = load_error(weights=str(tiny_model_dir), transformer_file=str(cut))
    assert "truncated" in message and "download it again" in message


def test_transformer_file_with_a_garbage_header_is_refused(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 64)
    assert "not a valid safetensors file" in load_error(
        weights=str(tiny_model_dir), transformer_file=str(bad)
    )


def test_missing_transformer_file_is_refused(tiny_model_dir, tmp_path):
    message = load_error(weights=str(tiny_model_dir), transformer_file=str(tmp_path / "none.safetensors"))
    assert "does not exist" in message


def test_transformer_file_must_be_safetensors(tiny_model_dir, tmp_path):
    ckpt = tmp_path / "flux.ckpt"
    ckpt.write_bytes(b"pickle")
    assert ".safetensors" in load_error(weights=str(tiny_model_dir), transformer_file=str(ckpt))


def test_transformer_file_of_another_model_is_refused(tiny_model_dir, tmp_path):
    other = tmp_path / "other.safetensors"
    save_file({"foo.weight": torch.zeros(2, 2)}, str(other))
    assert "could not load transformer_file" in load_error(
        weights=str(tiny_model_dir), transformer_file=str(other)
    )


# -- folders that are not FLUX pipelines ----------------------------------------------------


def test_missing_weights_folder_is_refused(tmp_path):
    assert "does not exist" in load_error(weights=str(tmp_path / "no-such-folder"))


def test_folder_naming_another_pipeline_is_refused(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    message = load_error(weights=str(tmp_path))
    assert "not a FLUX pipeline" in message and "StableDiffusionPipeline" in message


def test_folder_without_model_index_is_refused(tmp_path):
    (tmp_path / "transformer").mkdir()
    assert "model_index.json is missing" in load_error(weights=str(tmp_path))


def test_model_index_that_is_not_json_is_refused(tmp_path):
    (tmp_path / "model_index.json").write_text("{not json")
    assert "not valid JSON" in load_error(weights=str(tmp_path))


def test_flux_folder_missing_components_is_refused(tiny_model_dir, tmp_path):
    shutil.copy(tiny_model_dir / "model_index.json", tmp_path / "model_index.json")
    message = load_error(weights=str(tmp_path))
    assert "missing FLUX components" in message and "transformer" in message


def test_weights_that_are_a_file_are_refused(transformer_file):
    message = load_error(weights=str(transformer_file))
    assert "is a file" in message and "transformer_file" in message


def test_corrupt_component_weights_are_refused(tiny_model_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    vae = folder / "vae" / "diffusion_pytorch_model.safetensors"
    vae.write_bytes(vae.read_bytes()[:1000])
    assert "could not load the FLUX pipeline" in load_error(weights=str(folder))


def test_repo_id_missing_from_the_local_cache_is_refused(empty_hf_cache):
    message = load_error(weights="someone/flux-finetune")
    assert "local Hugging Face cache" in message and "someone/flux-finetune" in message


# -- options this machine cannot run --------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("offload", "model"),
        ("offload", "sequential"),
        ("offload", "group"),
        ("quantize_transformer", "fp8"),
        ("quantize_transformer", "int8"),
        ("quantize_transformer", "nf4"),
        ("quantize_text_encoder", "fp8"),
        ("quantize_text_encoder", "nf4"),
    ],
)
def test_gpu_only_option_on_cpu_is_refused(tiny_model_dir, option, value):
    message = load_error(weights=str(tiny_model_dir), device="cpu", **{option: value})
    assert f"{option}: {value}" in message
    assert "needs a CUDA GPU" in message
    assert "cpu" in message


@no_cuda
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_device_without_a_gpu_is_refused(tiny_model_dir, device):
    message = load_error(weights=str(tiny_model_dir), device=device)
    assert "needs a CUDA GPU" in message and device in message


def test_unknown_device_is_refused(tiny_model_dir):
    assert "device must be auto, cpu, cuda or cuda:N" in load_error(weights=str(tiny_model_dir), device="tpu")


def test_unknown_option_in_a_spec_is_refused():
    with pytest.raises(ValueError, match="offlaod"):
        ModelSpec(offlaod="model")


# -- weights: auto --------------------------------------------------------------------------


def test_weights_auto_without_hf_cache_builds_the_tiny_model(empty_hf_cache, tmp_path):
    target = tmp_path / "auto-tiny"
    model = load_model(ModelSpec(weights="auto", tiny_model_dir=str(target)))
    assert is_tiny_model(target)
    assert json.loads((target / "model_index.json").read_text())["_fluxserve"]["kind"] == TINY_MARKER
    assert model.weights.source == "tiny" and model.weights.folder == target
    assert model.is_tiny
    assert TINY_WARNING in model.warnings and "noise" in TINY_WARNING
    result = FluxGenerator(model).generate(request())
    assert TINY_WARNING in result.warnings and len(result.images) == 1


def test_weights_auto_reuses_an_existing_tiny_model(empty_hf_cache, tiny_model_dir):
    index = tiny_model_dir / "model_index.json"
    before = index.stat().st_mtime_ns
    model = load_model(ModelSpec(weights="auto", tiny_model_dir=str(tiny_model_dir)))
    assert model.weights.folder == tiny_model_dir
    assert index.stat().st_mtime_ns == before


def test_weights_auto_builds_one_tiny_model_in_the_user_cache_for_generate_and_the_server(
    empty_hf_cache, tmp_path, monkeypatch
):
    from pipelines.loading import resolve_weights
    from server.config import Settings

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data_dir = tmp_path / "data"

    served = resolve_weights(Settings(data_dir=str(data_dir)).model_spec())  # what `serve` loads
    generated = resolve_weights(ModelSpec(weights="auto"))  # what `generate --model auto` loads

    assert served.folder == generated.folder == tmp_path / "cache" / "fluxserve" / "tiny-flux"
    assert is_tiny_model(served.folder)
    assert not (data_dir / "tiny-flux").exists()


@pytest.mark.parametrize(
    ("family", "repo"),
    [("flux-dev", "black-forest-labs/FLUX.1-dev"), ("flux-schnell", "black-forest-labs/FLUX.1-schnell")],
)
def test_weights_auto_looks_for_the_familys_own_repo_in_the_hf_cache(
    monkeypatch, tiny_model_dir, family, repo
):
    import pipelines.loading as loading

    asked = []
    monkeypatch.setattr(
        loading, "_hf_cache_snapshot", lambda repo_id: asked.append(repo_id) or tiny_model_dir
    )

    weights = loading.resolve_weights(ModelSpec(family=family, weights="auto"))

    assert asked == [repo] and (weights.folder, weights.source) == (tiny_model_dir, "hf-cache")


# -- memory modes that run on the CPU -------------------------------------------------------


def test_fp8_layerwise_casting_stores_the_transformer_in_float8(tiny_model_dir):
    model = load_model(ModelSpec(weights=str(tiny_model_dir), layerwise_casting="fp8"))
    linear = model.pipe.transformer.transformer_blocks[0].attn.to_q
    assert linear.weight.dtype == torch.float8_e4m3fn


def test_fp8_layerwise_casting_changes_the_image_only_a_little(tiny_model_dir, generator):
    cast = FluxGenerator(load_model(ModelSpec(weights=str(tiny_model_dir), layerwise_casting="fp8")))
    image = _pixels(cast.generate(request(seed=31)).images[0].data)
    reference = _pixels(generator.generate(request(seed=31)).images[0].data)
    mse = float(np.mean((image - reference) ** 2))
    assert 0 < mse and 10 * np.log10(1 / mse) > 30  # PSNR in dB; measured ~50 on this model


def test_fp8_layerwise_casting_with_a_quantized_transformer_is_refused():
    with pytest.raises(ValueError, match="layerwise_casting: the transformer is already quantized"):
        ModelSpec(layerwise_casting="fp8", quantize_transformer="nf4")


def test_vae_tiling_decodes_in_tiles_at_the_requested_size(tiny_model_dir):
    model = load_model(ModelSpec(weights=str(tiny_model_dir), vae_tiling=True))
    assert model.pipe.vae.use_tiling
    image = FluxGenerator(model).generate(request()).images[0]
    assert (image.width, image.height) == request().size


def _pixels(data: bytes):
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64) / 255


CARD_CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("gpu-*gb.yaml"))


@no_cuda
@pytest.mark.parametrize("config", CARD_CONFIGS, ids=lambda p: p.name)
def test_a_card_config_on_cpu_is_refused_naming_what_needs_cuda(config, tiny_model_dir):
    import yaml

    model = {**yaml.safe_load(config.read_text())["model"], "weights": str(tiny_model_dir)}
    message = load_error(**model)
    assert f"offload: {model['offload']}" in message and "needs a CUDA GPU" in message
