"""Adapter sources to files (pipelines/loras/resolve.py) without a network: the adapter folder and the
local Hugging Face cache (a hand-made one: models--owner--repo/{refs/main, snapshots/<commit>/...})."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.errors import GenerationError
from pipelines.loras.resolve import AdapterFetchError, AdapterFiles, AdapterFilesConfig
from pipelines.loras.sources import parse_adapter_source

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    made = {name: tmp_path / name for name in ("loras", "cache", "hf")}
    for path in made.values():
        path.mkdir()
    return made


def files(folders, **overrides) -> AdapterFiles:
    paths = {"adapter_dir": str(folders["loras"]), "cache_dir": str(folders["cache"])}
    config = AdapterFilesConfig(**{**paths, "hf_cache_dir": str(folders["hf"]), **overrides})
    return AdapterFiles(config, downloader=None)


def resolve(adapters: AdapterFiles, text: str) -> Path:
    with adapters.open(parse_adapter_source(text)) as path:
        return path


def fail(adapters: AdapterFiles, text: str) -> str:
    with pytest.raises(AdapterFetchError) as caught:
        resolve(adapters, text)
    return str(caught.value)


def hf_repo(root: Path, repo: str, names: list[str], data: bytes) -> Path:
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(COMMIT)
    snapshot = folder / "snapshots" / COMMIT
    for name in names:
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_bytes(data)
    return snapshot


def test_the_error_ends_a_prediction_like_any_generation_error():
    assert issubclass(AdapterFetchError, GenerationError)


# -- the adapter folder ----------------------------------------------------------------------


def test_a_name_from_the_adapter_folder_resolves_in_place(folders, adapter_bytes):
    (folders["loras"] / "my-style.safetensors").write_bytes(adapter_bytes)
    for text in ("my-style", "my-style.safetensors"):
        assert resolve(files(folders), text) == folders["loras"] / "my-style.safetensors"
    assert list(folders["cache"].iterdir()) == []  # not copied


def test_a_missing_name_lists_some_that_exist(folders, adapter_bytes):
    for name in ("anime", "ink"):
        (folders["loras"] / f"{name}.safetensors").write_bytes(adapter_bytes)
    message = fail(files(folders), "nope")
    assert message == "no adapter named 'nope' in the adapter folder; available: anime, ink"


def test_a_missing_adapter_folder_is_named(folders, tmp_path):
    message = fail(files(folders, adapter_dir=str(tmp_path / "absent")), "x")
    assert "does not exist" in message and "loras.dir" in message


def test_a_link_out_of_the_adapter_folder_is_refused(folders, tmp_path, adapter_bytes):
    outside = tmp_path / "secret.safetensors"
    outside.write_bytes(adapter_bytes)
    (folders["loras"] / "escape.safetensors").symlink_to(outside)
    assert fail(files(folders), "escape") == "adapter 'escape' points outside the adapter folder"


def test_a_local_file_that_is_not_safetensors_is_refused(folders):
    (folders["loras"] / "bad.safetensors").write_bytes(b"PK\x03\x04 a zip, not safetensors")
    assert "is not a safetensors file" in fail(files(folders), "bad")


# -- the Hugging Face cache -----------------------------------------------------------------


def test_a_named_file_comes_from_the_local_hugging_face_cache(folders, adapter_bytes):
    snapshot = hf_repo(folders["hf"], "owner/repo", ["lora.safetensors", "other.safetensors"], adapter_bytes)
    path = resolve(files(folders), "huggingface.co/owner/repo/lora.safetensors")
    assert path == snapshot / "lora.safetensors"


def test_a_repo_with_one_safetensors_file_resolves_to_it(folders, adapter_bytes):
    snapshot = hf_repo(folders["hf"], "owner/repo", ["sub/only.safetensors"], adapter_bytes)
    assert resolve(files(folders), "owner/repo") == snapshot / "sub" / "only.safetensors"


def test_a_repo_with_several_safetensors_files_lists_them(folders, adapter_bytes):
    hf_repo(folders["hf"], "owner/repo", ["a.safetensors", "b.safetensors"], adapter_bytes)
    message = fail(files(folders), "owner/repo")
    assert "holds several .safetensors files" in message and "a.safetensors, b.safetensors" in message


def test_a_repo_with_no_safetensors_file_says_so(folders, adapter_bytes):
    hf_repo(folders["hf"], "owner/repo", ["model.bin"], adapter_bytes)
    message = fail(files(folders), "owner/repo")
    assert message.startswith("huggingface.co/owner/repo holds no .safetensors file")
    assert "loras.hub_downloads" in message


def test_a_repo_missing_from_the_cache_names_the_setting_that_allows_downloads(folders):
    for text in ("owner/absent", "huggingface.co/owner/absent/lora.safetensors"):
        message = fail(files(folders), text)
        assert "is not in this server's Hugging Face cache" in message
        assert "loras.hub_downloads" in message


def test_hub_downloads_with_the_hub_offline_say_so(folders, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    message = fail(files(folders, hub_downloads=True), "owner/absent")
    assert "HF_HUB_OFFLINE" in message


def test_a_hub_file_that_is_not_safetensors_is_refused(folders):
    hf_repo(folders["hf"], "owner/repo", ["lora.safetensors"], b"\xff" * 32)
    assert "is not a safetensors file" in fail(files(folders), "owner/repo")
