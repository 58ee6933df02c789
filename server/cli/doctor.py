"""`fluxserve doctor` (also `fluxserve weights check`): what each configured model would load, from
where, whether those weights are complete, and the GPUs torch sees — before a server is started.

Nothing is built, downloaded or loaded: the tiny demo model is only said to be built on first start
when it is missing, and safetensors files are judged by their headers. Exit 0 when every model is
usable (the tiny model counts), 1 otherwise. ``--json`` prints the same report as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported late at run time: `fluxserve --help` stays quick
    from pipelines.spec import ModelSpec

LICENCE_URL = "https://huggingface.co/{repo}"
DOWNLOAD_SIZE = {"flux-dev": "~33 GB", "flux-schnell": "~33 GB"}


def get_weights_commands(repo: str, family: str, folder: str | None = None) -> list[str]:
    """The steps to fetch a family's weights (README, "Real FLUX.1-dev weights"), into the
    Hugging Face cache or into ``folder``."""
    if family == "flux-dev":
        download = f"scripts/download_weights.sh {folder}" if folder else "scripts/download_weights.sh"
    else:
        download = f".venv/bin/hf download {repo}" + (f" --local-dir {folder}" if folder else "")
    download += (
        f"   # into {folder}" if folder else "   # into the Hugging Face cache: `weights: auto` finds it"
    )
    return [
        f"# accept the licence with your Hugging Face account: {LICENCE_URL.format(repo=repo)}",
        ".venv/bin/hf auth login                 # or: export HF_TOKEN=hf_...",
        f"{download} ({DOWNLOAD_SIZE.get(family, 'large')})",
    ]


def model_report(spec: ModelSpec) -> dict[str, Any]:
    """One configured model: where its weights resolve, whether they are complete, and why not."""
    from pipelines.errors import ModelLoadError
    from pipelines.loading import check_cuda_options, locate_weights
    from pipelines.spec import HF_REPO_IDS
    from pipelines.tiny import is_tiny_model
    from pipelines.weights_check import FolderCheck, check_safetensors_file, check_weights_folder

    repo = HF_REPO_IDS[spec.family]
    report: dict[str, Any] = {
        "name": spec.name,
        "family": spec.family,
        "weights": spec.weights,
        "folder": None,
        "source": None,
        "is_tiny": False,
        "tiny_built": None,
        "complete": False,
        "usable": False,
        "problems": [],
        "notes": [],
        "safetensors_files": 0,
        "safetensors_bytes": 0,
        "transformer_file": spec.transformer_file,
        "device": spec.device,
        "get_weights": None,
    }
    try:
        located = locate_weights(spec)
    except ModelLoadError as exc:
        report["problems"].append(str(exc))
        report["get_weights"] = get_weights_commands(spec.weights, spec.family)
        return report
    report.update(folder=str(located.folder), source=located.source, is_tiny=located.is_tiny)

    if located.source == "tiny":
        built = is_tiny_model(located.folder)
        report["tiny_built"] = built
        report["notes"].append(
            f"{repo} is not in the local Hugging Face cache: the tiny demo model (random weights, "
            "its images are noise) is served instead"
        )
        report["get_weights"] = get_weights_commands(repo, spec.family)
        if not built:
            report["notes"].append(
                f"the tiny model is not built yet: `fluxserve serve` or `generate` builds it in "
                f"{located.folder} on first start (a few MB, seconds)"
            )
            report["complete"] = report["usable"] = True  # nothing there to check yet
            _check_device_options(spec, report, check_cuda_options)
            return report

    check: FolderCheck = check_weights_folder(located.folder)
    if spec.transformer_file:
        check_safetensors_file(_expand(spec.transformer_file), check)
    report["problems"].extend(check.problems)
    if located.source == "folder" and not located.folder.exists():
        report["get_weights"] = get_weights_commands(repo, spec.family, str(located.folder))
    report["safetensors_files"] = check.safetensors_files
    report["safetensors_bytes"] = check.safetensors_bytes
    report["complete"] = check.complete
    if located.is_tiny and located.source != "tiny":
        report["notes"].append("this folder holds the tiny demo model: random weights, its images are noise")
    report["usable"] = check.complete
    _check_device_options(spec, report, check_cuda_options)
    return report


def _expand(path: str):
    from pathlib import Path

    return Path(path).expanduser()


def _check_device_options(spec: ModelSpec, report: dict[str, Any], check_cuda_options) -> None:
    """Options that need CUDA (or a quantization package) on a machine without them."""
    from pipelines.errors import ModelLoadError

    device = spec.device
    if device == "auto":
        device = "cuda" if _cuda_count() else "cpu"
    elif device.startswith("cuda") and not _cuda_count():
        report["problems"].append(f"device {spec.device!r} needs a CUDA GPU, but torch sees none")
        report["usable"] = False
        return
    try:
        check_cuda_options(spec, device)
    except ModelLoadError as exc:
        report["problems"].append(str(exc))
        report["usable"] = False


def _cuda_count() -> int:
    try:
        import torch
    except Exception:  # noqa: BLE001 - torch_report says what is wrong with torch
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def torch_report() -> dict[str, Any]:
    """The torch build and every CUDA device it sees, with its total and free memory."""
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - a broken install is what doctor is for
        return {"version": None, "cuda": None, "devices": [], "problem": f"torch cannot be imported: {exc}"}
    out: dict[str, Any] = {"version": torch.__version__, "cuda": torch.version.cuda, "devices": []}
    if not torch.cuda.is_available():
        return out
    for index in range(torch.cuda.device_count()):
        device: dict[str, Any] = {"index": index, "name": torch.cuda.get_device_name(index)}
        try:
            free, total = torch.cuda.mem_get_info(index)
            device.update(total_bytes=int(total), free_bytes=int(free))
        except RuntimeError as exc:  # a device in use exclusively, or in a bad state
            device.update(total_bytes=None, free_bytes=None, problem=str(exc).splitlines()[0])
        out["devices"].append(device)
    return out


def doctor_report(config: str | None) -> dict[str, Any]:
    """The whole report (the ``--json`` output): ``ok`` when every model is usable."""
    from server.config import load_settings

    settings = load_settings(config)
    hf_home = os.environ.get("HF_HOME") or "~/.cache/huggingface"
    torch_info = torch_report()
    models = [model_report(spec) for spec in settings.model_specs]
    ok = all(m["usable"] for m in models) and "problem" not in torch_info
    return {"ok": ok, "config": config, "hf_home": hf_home, "models": models, "torch": torch_info}


def _gib(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def render_text(report: dict[str, Any]) -> list[str]:
    """The report as lines for a person."""
    lines: list[str] = []
    for m in report["models"]:
        lines.append(f"model {m['name']} ({m['family']})")
        where = {"folder": "a folder", "hf-cache": "the Hugging Face cache", "tiny": "the tiny demo model"}
        if m["folder"]:
            lines.append(
                f"  weights: {m['weights']} -> {m['folder']} ({where.get(m['source'], m['source'])})"
            )
        else:
            lines.append(f"  weights: {m['weights']} -> not found")
        if m["transformer_file"]:
            lines.append(f"  transformer_file: {m['transformer_file']}")
        if m["complete"] and m["folder"] and m["tiny_built"] is not False:
            lines.append(
                f"  complete: every FLUX component, {m['safetensors_files']} safetensors file(s) with sound "
                f"headers ({_gib(m['safetensors_bytes'])})"
            )
        for note in m["notes"]:
            lines.append(f"  note: {note}")
        for problem in m["problems"]:
            lines.append(f"  problem: {problem}")
        lines.append(f"  usable: {'yes' if m['usable'] else 'no'}")
        if m["get_weights"]:
            lines.append("  to get the real weights (on a machine with internet, in the fluxserve checkout):")
            lines.extend(f"    {command}" for command in m["get_weights"])
    t = report["torch"]
    if t.get("problem"):
        lines.append(f"torch: {t['problem']}")
    else:
        cuda = f"CUDA {t['cuda']}" if t["cuda"] else "a CPU-only build"
        lines.append(f"torch {t['version']} ({cuda})")
    if t["devices"]:
        for d in t["devices"]:
            memory = f"{_gib(d.get('free_bytes'))} free of {_gib(d.get('total_bytes'))}"
            lines.append(
                f"  cuda:{d['index']} {d['name']}: {memory}"
                + (f" ({d['problem']})" if "problem" in d else "")
            )
    else:
        lines.append("  no CUDA device: models run on the CPU (slow; fine for the tiny model)")
    lines.append(f"Hugging Face cache: HF_HOME={report['hf_home']}")
    lines.append("ok: every model is usable" if report["ok"] else "not ok: see the problems above")
    return lines


def cmd_doctor(args: argparse.Namespace) -> int:
    report = doctor_report(args.config)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print("\n".join(render_text(report)))
    return 0 if report["ok"] else 1


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", default=None, help="YAML config file whose models to check (default: none, built-in)"
    )
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=cmd_doctor)


DESCRIPTION = (
    "For each configured model: what its weights resolve to and from where, whether the folder is "
    "complete (every FLUX component, safetensors headers, shards), the torch build and CUDA devices "
    "with their memory, and how to get FLUX.1-dev when it is missing. Loads and downloads nothing. "
    "Exit 0 when every model is usable, 1 otherwise."
)


def _add_doctor(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "doctor", help="check the weights, torch and GPUs before serving", description=DESCRIPTION
    )
    _add_options(p)


def _add_weights(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("weights", help="the model weights (check: as `fluxserve doctor`)")
    weights = p.add_subparsers(dest="weights_command", required=True)
    _add_options(weights.add_parser("check", help="as `fluxserve doctor`", description=DESCRIPTION))
