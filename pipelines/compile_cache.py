"""torch.compile's caches kept in the data folder, so a worker's second start skips most compiling.

Two layers, both torch's own:
- Inductor's on-disk caches (FX graph cache, AOT autograd cache, Triton kernels) pointed at
  ``<folder>/inductor`` and ``<folder>/triton`` instead of ``/tmp``, which containers lose.
- torch's "mega-cache" (``torch.compiler.save_cache_artifacts`` / ``load_cache_artifacts``): one file
  per model configuration holding the compiled artifacts and autotuning results, written after
  warm-up and loaded before the first compile.

The environment part must run before torch's inductor reads its config: call ``use_folder`` at the
start of the worker process, before torch is imported.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def environment(folder: str | os.PathLike[str]) -> dict[str, str]:
    """The environment that points inductor's and Triton's caches into ``folder`` and turns
    inductor's on-disk caches on: for this process (``use_folder``) or a child's."""
    root = Path(folder).expanduser()
    return {
        "TORCHINDUCTOR_CACHE_DIR": str(root / "inductor"),
        "TRITON_CACHE_DIR": str(root / "triton"),
        "TORCHINDUCTOR_FX_GRAPH_CACHE": "1",
        "TORCHINDUCTOR_AUTOGRAD_CACHE": "1",
    }


def use_folder(folder: str | os.PathLike[str]) -> Path:
    """Point this process's inductor and Triton caches into ``folder`` (made when something is
    first written); the cache switches keep a value already set in the environment."""
    for name, value in environment(folder).items():
        if name.endswith("_DIR"):
            os.environ[name] = value
        else:
            os.environ.setdefault(name, value)
    return Path(folder).expanduser()


def artifacts_key_for(model: Any) -> str:
    """``artifacts_key`` of a LoadedModel: its settings (not its name or request defaults)."""
    return artifacts_key(model.spec.model_dump(exclude={"defaults", "name"}), model.device)


def artifacts_key(spec_fields: dict[str, Any], device: str) -> str:
    """A file name for one model configuration on one kind of device with these library versions."""
    import diffusers
    import torch

    device_name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "cpu"
    material = json.dumps(
        {
            "spec": spec_fields,
            "device": device_name,
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(material.encode()).hexdigest()[:20]


def load_artifacts(folder: Path, key: str) -> bool:
    """Load a previous start's compile artifacts; False when there are none (or they do not load)."""
    import torch

    path = folder / f"artifacts-{key}.bin"
    if not path.is_file():
        return False
    try:
        torch.compiler.load_cache_artifacts(path.read_bytes())
    except Exception as exc:  # noqa: BLE001 - a stale or damaged file only costs a full compile
        log.warning("ignoring compile cache %s: %s", path, exc)
        return False
    return True


def save_artifacts(folder: Path, key: str) -> int:
    """Write this process's compile artifacts (after warm-up); the bytes written (0: nothing to save)."""
    import torch

    saved = torch.compiler.save_cache_artifacts()
    if not saved:
        return 0
    data = saved[0]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"artifacts-{key}.bin"
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)  # several workers of one model may save at once: last one wins, whole
    return len(data)
