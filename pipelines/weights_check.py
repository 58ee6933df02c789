"""Is a weights folder a complete FLUX diffusers pipeline? Read without loading a tensor (no torch).

Unlike ``loading.check_flux_folder``, which stops at the first fault so a load fails fast, this
lists every fault it finds, for `fluxserve doctor`: the components model_index.json and FLUX need,
each ``*.safetensors`` file's header (a truncated download or an HTML error page saved under that
name), and the shards a ``*.safetensors.index.json`` names but the folder lacks (an interrupted
download of a sharded text encoder or transformer). A Hugging Face cache snapshot holds symlinks
into its blob store: a link whose blob never arrived counts as a file that cannot be read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.safetensors_check import SafetensorsError, TruncatedSafetensors, check_safetensors_header

FLUX_PIPELINE_CLASSES = {"FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline"}
FLUX_COMPONENTS = (
    "transformer",
    "vae",
    "text_encoder",
    "text_encoder_2",
    "tokenizer",
    "tokenizer_2",
    "scheduler",
)
# The components that hold weights (the others are configs and vocabularies).
WEIGHT_COMPONENTS = ("transformer", "vae", "text_encoder", "text_encoder_2")
OTHER_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".gguf")


@dataclass
class FolderCheck:
    """What ``check_weights_folder`` found: ``problems`` is empty for a complete folder."""

    folder: Path
    problems: list[str] = field(default_factory=list)
    safetensors_files: int = 0  # headers read and found sound
    safetensors_bytes: int = 0

    @property
    def complete(self) -> bool:
        return not self.problems


def check_weights_folder(folder: Path) -> FolderCheck:
    """Every fault of ``folder`` as a FLUX diffusers pipeline folder (see the module docstring)."""
    report = FolderCheck(folder)
    if not folder.exists():
        report.problems.append(f"{folder} does not exist")
        return report
    if not folder.is_dir():
        report.problems.append(f"{folder} is a file, not a diffusers folder")
        return report
    _check_index(folder, report)
    for component in FLUX_COMPONENTS:
        if not (folder / component).is_dir():
            report.problems.append(f"component folder {component}/ is missing")
        elif component in WEIGHT_COMPONENTS:
            _check_component_weights(folder / component, report)
    return report


def check_safetensors_file(path: Path, report: FolderCheck) -> None:
    """One file's header, its fault (if any) added to ``report`` named by its path in the folder."""
    name = _relative(path, report.folder)
    try:
        check_safetensors_header(path)
    except TruncatedSafetensors as exc:
        report.problems.append(
            f"{name} is truncated: {exc.size} bytes on disk, {exc.expected} expected (download it again)"
        )
        return
    except SafetensorsError as exc:
        report.problems.append(f"{name} is not a sound safetensors file ({exc})")
        return
    report.safetensors_files += 1
    report.safetensors_bytes += path.stat().st_size


def _check_index(folder: Path, report: FolderCheck) -> None:
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        report.problems.append("model_index.json is missing: not a diffusers pipeline folder")
        return
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError) as exc:
        report.problems.append(f"model_index.json cannot be read: {exc}")
        return
    cls = index.get("_class_name") if isinstance(index, dict) else None
    if cls not in FLUX_PIPELINE_CLASSES:
        report.problems.append(f"model_index.json names {cls!r}, not a FLUX pipeline (FluxPipeline)")


def _check_component_weights(component: Path, report: FolderCheck) -> None:
    files = sorted(component.glob("*.safetensors"))
    for path in files:
        check_safetensors_file(path, report)
    for index_path in sorted(component.glob("*.safetensors.index.json")):
        for shard in _missing_shards(index_path, report):
            report.problems.append(f"{_relative(component / shard, report.folder)} is missing (a shard)")
    if not files and not any(p.suffix in OTHER_WEIGHT_SUFFIXES for p in component.iterdir()):
        report.problems.append(f"{component.name}/ holds no weights file (*.safetensors)")


def _missing_shards(index_path: Path, report: FolderCheck) -> list[str]:
    try:
        weight_map = json.loads(index_path.read_text()).get("weight_map") or {}
        shards = sorted({str(name) for name in weight_map.values()})
    except (OSError, ValueError, AttributeError) as exc:
        report.problems.append(f"{_relative(index_path, report.folder)} cannot be read: {exc}")
        return []
    return [name for name in shards if not (index_path.parent / name).exists()]


def _relative(path: Path, folder: Path) -> str:
    try:
        return str(path.relative_to(folder))
    except ValueError:
        return str(path)
