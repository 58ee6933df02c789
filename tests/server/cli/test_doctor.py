"""`fluxserve doctor`: what each configured model would load, whether it is complete, and how to get
FLUX.1-dev when it is missing. Exit 0 when every model is usable, 1 otherwise."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from server.cli import main


def run_doctor(tmp_path: Path, capsys: pytest.CaptureFixture, *extra: str, **model) -> tuple[int, dict]:
    config = tmp_path / "doctor.yaml"
    config.write_text(yaml.safe_dump({"model": {"device": "cpu", **model}}))
    rc = main(["doctor", "--json", "--config", str(config), *extra])
    return rc, json.loads(capsys.readouterr().out)


@pytest.fixture
def tiny_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A copy of the tiny model folder that a test may damage."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "weights"))


def test_the_tiny_model_folder_is_complete_and_usable(tiny_model_dir, tmp_path, capsys):
    rc, report = run_doctor(tmp_path, capsys, weights=str(tiny_model_dir))
    assert rc == 0
    assert report["ok"] is True
    (model,) = report["models"]
    assert model["folder"] == str(tiny_model_dir) and model["source"] == "folder"
    assert model["is_tiny"] is True
    assert model["complete"] is True and model["usable"] is True and model["problems"] == []
    assert model["safetensors_files"] >= 4  # transformer, vae and both text encoders


def test_a_folder_missing_a_component_is_not_usable(tiny_copy, tmp_path, capsys):
    shutil.rmtree(tiny_copy / "vae")
    rc, report = run_doctor(tmp_path, capsys, weights=str(tiny_copy))
    assert rc == 1
    assert report["ok"] is False
    (model,) = report["models"]
    assert model["complete"] is False and model["usable"] is False
    assert "component folder vae/ is missing" in model["problems"]


def test_a_truncated_safetensors_file_is_named(tiny_copy, tmp_path, capsys):
    weights = tiny_copy / "transformer" / "diffusion_pytorch_model.safetensors"
    size = weights.stat().st_size
    with weights.open("r+b") as fh:
        fh.truncate(size - 100)
    rc, report = run_doctor(tmp_path, capsys, weights=str(tiny_copy))
    assert rc == 1
    (problem,) = report["models"][0]["problems"]
    assert problem.startswith("transformer/diffusion_pytorch_model.safetensors is truncated")
    assert f"{size - 100} bytes on disk, {size} expected" in problem


def test_a_shard_named_by_the_index_but_absent_is_named(tiny_copy, tmp_path, capsys):
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors"}}
    (tiny_copy / "text_encoder_2" / "model.safetensors.index.json").write_text(json.dumps(index))
    rc, report = run_doctor(tmp_path, capsys, weights=str(tiny_copy))
    assert rc == 1
    assert report["models"][0]["problems"] == [
        "text_encoder_2/model-00001-of-00002.safetensors is missing (a shard)"
    ]


def test_auto_with_an_empty_hf_cache_says_the_tiny_model_would_be_built_and_how_to_get_flux(
    empty_hf_cache, tmp_path, capsys
):
    tiny_dir = tmp_path / "tiny-not-built"
    rc, report = run_doctor(tmp_path, capsys, weights="auto", tiny_model_dir=str(tiny_dir))
    assert rc == 0  # the tiny model is usable: the server would start
    (model,) = report["models"]
    assert model["source"] == "tiny" and model["folder"] == str(tiny_dir)
    assert model["tiny_built"] is False
    assert any("not built yet" in note for note in model["notes"])
    assert not tiny_dir.exists()  # said, not done
    commands = "\n".join(model["get_weights"])
    assert "https://huggingface.co/black-forest-labs/FLUX.1-dev" in commands
    assert "hf auth login" in commands
    assert "scripts/download_weights.sh" in commands


def test_a_repo_id_missing_from_the_cache_is_not_usable(empty_hf_cache, tmp_path, capsys):
    rc, report = run_doctor(tmp_path, capsys, weights="black-forest-labs/FLUX.1-dev")
    assert rc == 1
    (model,) = report["models"]
    assert model["folder"] is None and "local Hugging Face cache" in model["problems"][0]
    assert "scripts/download_weights.sh" in "\n".join(model["get_weights"])


def test_the_text_report_names_weights_torch_and_devices(tiny_model_dir, tmp_path, capsys):
    import torch

    config = tmp_path / "doctor.yaml"
    config.write_text(yaml.safe_dump({"model": {"weights": str(tiny_model_dir), "device": "cpu"}}))
    rc = main(["doctor", "--config", str(config)])
    out = capsys.readouterr().out
    assert rc == 0
    assert f"weights: {tiny_model_dir} -> {tiny_model_dir} (a folder)" in out
    assert f"torch {torch.__version__}" in out
    if torch.cuda.is_available():
        assert "cuda:0 " in out and "free of" in out
    else:
        assert "no CUDA device" in out
    assert out.rstrip().endswith("ok: every model is usable")


def test_weights_check_is_doctor(tiny_model_dir, tmp_path, capsys):
    config = tmp_path / "doctor.yaml"
    config.write_text(yaml.safe_dump({"model": {"weights": str(tiny_model_dir), "device": "cpu"}}))
    assert main(["weights", "check", "--json", "--config", str(config)]) == 0
    assert json.loads(capsys.readouterr().out)["models"][0]["complete"] is True


def test_cuda_options_without_cuda_are_a_problem(tiny_model_dir, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the refusal on a machine without CUDA")
    rc, report = run_doctor(tmp_path, capsys, weights=str(tiny_model_dir), device="cuda")
    assert rc == 1
    assert "needs a CUDA GPU" in report["models"][0]["problems"][0]
