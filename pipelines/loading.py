"""Loading a FLUX pipeline from a ModelSpec: weights location, dtype, device, memory mode,
quantization and compile. Everything here runs with the model hub offline.

Text-to-image and img2img share one set of modules (``FluxImg2ImgPipeline.from_pipe``).
Options that need CUDA are implemented for real and, without CUDA, fail at load time with a
message saying what is needed; nothing is ignored silently.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.attention import BackendChoice, apply_attention_backend
from pipelines.errors import ModelLoadError
from pipelines.fast import (
    GO_FAST,
    STANDARD,
    RunMode,
    RunModes,
    check_fp8_device,
    fp8_config,
    quantized_copy,
    separate_mode,
)
from pipelines.safetensors_check import NotSafetensors, TruncatedSafetensors, check_safetensors_header
from pipelines.spec import HF_REPO_IDS, ModelSpec
from pipelines.step_cache import StepCache
from pipelines.tiny import is_tiny_model, write_tiny_model
from pipelines.weights_check import FLUX_COMPONENTS, FLUX_PIPELINE_CLASSES

log = logging.getLogger(__name__)

TINY_WARNING = "Serving the tiny demo model with random weights: its images are noise."


def default_tiny_dir() -> Path:
    """Where ``weights: auto`` keeps the tiny model unless ``model.tiny_model_dir`` says otherwise:
    the user cache (``$XDG_CACHE_HOME``, else ``~/.cache``), one copy for `fluxserve generate`
    and every server."""
    cache = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(cache) if os.path.isabs(cache) else Path("~/.cache").expanduser()  # the XDG rule
    return root / "fluxserve" / "tiny-flux"


def ensure_tiny_model(folder: Path) -> Path:
    """The tiny model in ``folder``, built there if missing. Several processes may ask at once (a
    server's workers, `fluxserve generate`): one builds it in a temporary folder beside it and
    renames that into place while the others wait on a lock, so none reads a half-written one."""
    if is_tiny_model(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_tiny_model(folder):
            return folder
        if folder.exists() and any(folder.iterdir()):
            raise ModelLoadError(
                f"{folder} is not empty and holds no tiny model: "
                "remove it, or set model.tiny_model_dir elsewhere"
            )
        log.warning("FLUX.1-dev weights not found; building the tiny demo model in %s", folder)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            write_tiny_model(staging)
            with contextlib.suppress(FileNotFoundError):
                folder.rmdir()  # an empty folder: replaced by the built one
            os.replace(staging, folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return folder


@dataclass
class ResolvedWeights:
    folder: Path
    is_tiny: bool
    source: str  # a human description: "folder", "hf-cache", "tiny"


@dataclass
class LoadedModel:
    spec: ModelSpec
    pipe: Any  # diffusers.FluxPipeline
    img2img: Any  # diffusers.FluxImg2ImgPipeline sharing pipe's modules
    device: str
    dtype: Any  # torch.dtype
    weights: ResolvedWeights
    safety: Any | None = None  # pipelines.safety.SafetyChecker
    warnings: list[str] = field(default_factory=list)
    load_seconds: float = 0.0
    compiled: bool = False  # pipe.transformer's blocks are compiled (for every request or for go_fast)
    modes: RunModes | None = None  # standard and go_fast (None: built from pipe/img2img, as in tests)
    attention: BackendChoice | None = None

    def run_modes(self) -> RunModes:
        if self.modes is None:
            self.modes = RunModes(RunMode(STANDARD, self.pipe, self.img2img, compiled=self.compiled))
        return self.modes

    @property
    def is_tiny(self) -> bool:
        return self.weights.is_tiny


_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _hf_cache_snapshot(repo_id: str) -> Path | None:
    """The newest local snapshot of a repo in the Hugging Face cache, without any network."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure means "not in the local cache"
        return None


def check_flux_folder(folder: Path) -> None:
    """Refuse early, with a readable message, a folder that is not a FLUX diffusers pipeline."""
    if not folder.exists():
        raise ModelLoadError(f"weights folder {folder} does not exist")
    if not folder.is_dir():
        raise ModelLoadError(
            f"weights {folder} is a file, not a diffusers folder "
            "(use transformer_file for a single-file checkpoint)"
        )
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise ModelLoadError(f"{folder} is not a diffusers pipeline folder: model_index.json is missing")
    try:
        index = json.loads(index_path.read_text())
    except ValueError as exc:
        raise ModelLoadError(f"{index_path} is not valid JSON: {exc}") from None
    cls = index.get("_class_name")
    if cls not in FLUX_PIPELINE_CLASSES:
        raise ModelLoadError(
            f"{folder} is not a FLUX pipeline: model_index.json names {cls!r}, expected FluxPipeline"
        )
    missing = [c for c in FLUX_COMPONENTS if not (folder / c).is_dir()]
    if missing:
        raise ModelLoadError(f"{folder} is missing FLUX components: {', '.join(missing)}")


def resolve_weights(spec: ModelSpec) -> ResolvedWeights:
    """Turn ``spec.weights`` into a local folder: a path, a cached hub snapshot, or the tiny model
    (built where ``locate_weights`` says when it is not there yet)."""
    located = locate_weights(spec)
    if located.source == "tiny":
        ensure_tiny_model(located.folder)
    else:
        check_flux_folder(located.folder)
    return located


def locate_weights(spec: ModelSpec) -> ResolvedWeights:
    """Where ``spec.weights`` points, without checking that folder or building anything: for
    ``auto`` without the family's repo in the local cache, the tiny model's folder, which may not
    exist yet. ModelLoadError for a repo id missing from the local cache."""
    weights = spec.weights
    if weights == "auto":
        snapshot = _hf_cache_snapshot(HF_REPO_IDS[spec.family])
        if snapshot is not None:
            return ResolvedWeights(snapshot, False, "hf-cache")
        tiny_dir = Path(spec.tiny_model_dir).expanduser() if spec.tiny_model_dir else default_tiny_dir()
        return ResolvedWeights(tiny_dir, True, "tiny")
    path = Path(weights).expanduser()
    if path.exists() or not _REPO_ID.fullmatch(weights):
        return ResolvedWeights(path, is_tiny_model(path), "folder")
    # "owner/name": a Hugging Face repo id, read from the local cache only.
    snapshot = _hf_cache_snapshot(weights)
    if snapshot is None:
        raise ModelLoadError(
            f"weights {weights!r} is neither a folder nor a repo in the local Hugging Face cache "
            f"(HF_HOME={os.environ.get('HF_HOME', '~/.cache/huggingface')}); download it first "
            "(scripts/download_weights.sh)"
        )
    return ResolvedWeights(snapshot, is_tiny_model(snapshot), "hf-cache")


def resolve_device(spec: ModelSpec) -> str:
    import torch

    if spec.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec.device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(
            f"device {spec.device!r} needs a CUDA GPU, but torch sees none (torch {torch.__version__})"
        )
    if spec.device != "cpu" and not spec.device.startswith("cuda"):
        raise ModelLoadError(f"device must be auto, cpu, cuda or cuda:N, got {spec.device!r}")
    return spec.device


def resolve_dtype(spec: ModelSpec, device: str):
    import torch

    if spec.dtype == "auto":
        # bfloat16 is ~10x slower than float32 on CPU; FLUX was trained in bfloat16.
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, spec.dtype)


def check_cuda_options(spec: ModelSpec, device: str) -> None:
    """Every option that needs CUDA, refused up front on a machine without it."""
    needs = []
    if spec.offload != "none":
        needs.append(f"offload: {spec.offload}")
    if spec.quantize_transformer != "none":
        needs.append(f"quantize_transformer: {spec.quantize_transformer}")
    if spec.quantize_text_encoder != "none":
        needs.append(f"quantize_text_encoder: {spec.quantize_text_encoder}")
    if needs and not device.startswith("cuda"):
        raise ModelLoadError(
            f"{', '.join(needs)} needs a CUDA GPU, but the model runs on {device}; "
            "remove the option or run on a machine with an NVIDIA GPU"
        )
    if spec.go_fast_transformer_separate:
        check_fp8_device(device)
    for option in (spec.quantize_transformer, spec.quantize_text_encoder, spec.go_fast.quantize):
        _require_quant_backend(option)


def _require_quant_backend(method: str) -> None:
    import importlib.util

    package = {"fp8": "torchao", "int8": "torchao", "nf4": "bitsandbytes"}.get(method)
    if package and importlib.util.find_spec(package) is None:
        raise ModelLoadError(
            f"quantization {method!r} needs the {package} package: pip install 'fluxserve[quant]'"
        )


def _quant_config(library, method: str, dtype):
    """A quantization config from ``library`` (the diffusers module for the transformer, the
    transformers module for T5: each has its own BitsAndBytesConfig and TorchAoConfig)."""
    if method == "nf4":
        return library.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
        )
    return library.TorchAoConfig(_torchao_config(method))


def _torchao_config(method: str):
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, Int8WeightOnlyConfig

    return Float8DynamicActivationFloat8WeightConfig() if method == "fp8" else Int8WeightOnlyConfig()


def _load_error(what: str, exc: BaseException) -> ModelLoadError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "out of memory" in text.lower() or isinstance(exc, MemoryError):
        return ModelLoadError(
            f"out of memory while loading {what}: use offload: model, quantization or a larger GPU ({text})"
        )
    return ModelLoadError(f"could not load {what}: {type(exc).__name__}: {text}")


def load_model(spec: ModelSpec) -> LoadedModel:
    """Load the pipelines (text-to-image + img2img sharing modules) and the safety checker."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub from the worker
    started = time.perf_counter()
    _quiet_libraries()  # first: resolving `auto` may write the tiny model, with diffusers
    weights = resolve_weights(spec)
    device = resolve_device(spec)
    check_cuda_options(spec, device)
    dtype = resolve_dtype(spec, device)
    warnings: list[str] = [TINY_WARNING] if weights.is_tiny else []

    import diffusers
    import transformers
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from transformers import T5EncoderModel

    overrides: dict[str, Any] = {}
    if spec.transformer_file:
        overrides["transformer"] = _load_single_file_transformer(spec, weights.folder, dtype)
    elif spec.quantize_transformer != "none":
        try:
            overrides["transformer"] = FluxTransformer2DModel.from_pretrained(
                weights.folder,
                subfolder="transformer",
                torch_dtype=dtype,
                quantization_config=_quant_config(diffusers, spec.quantize_transformer, dtype),
                local_files_only=True,
            )
        except Exception as exc:  # noqa: BLE001
            raise _load_error("the quantized transformer", exc) from exc
    if spec.quantize_text_encoder != "none":
        try:
            overrides["text_encoder_2"] = T5EncoderModel.from_pretrained(
                weights.folder,
                subfolder="text_encoder_2",
                torch_dtype=dtype,
                quantization_config=_quant_config(transformers, spec.quantize_text_encoder, dtype),
                local_files_only=True,
            )
        except Exception as exc:  # noqa: BLE001
            raise _load_error("the quantized T5 encoder", exc) from exc

    try:
        pipe = FluxPipeline.from_pretrained(
            weights.folder, torch_dtype=dtype, local_files_only=True, **overrides
        )
    except Exception as exc:  # noqa: BLE001 - corrupt or incomplete weights end here
        raise _load_error(f"the FLUX pipeline from {weights.folder}", exc) from exc
    model = prepare_model(pipe, spec, device, dtype, weights)
    model.warnings = warnings
    model.load_seconds = time.perf_counter() - started
    log.info(
        "loaded %s from %s (%s) on %s in %s in %.1f s",
        spec.name,
        weights.folder,
        weights.source,
        device,
        dtype,
        model.load_seconds,
    )
    return model


def prepare_model(pipe, spec: ModelSpec, device: str, dtype, weights: ResolvedWeights) -> LoadedModel:
    """A built FluxPipeline made ready to serve as ``spec`` says: placement and memory mode, the
    img2img face, VAE tiling, layerwise casting, the run modes (go_fast, compile, step cache), the
    attention backend, the safety checker. Quantized modules are the caller's (they are chosen when
    the weights are read)."""
    import torch
    from diffusers import FluxImg2ImgPipeline

    pipe.set_progress_bar_config(disable=True)
    try:
        _place(pipe, spec, device)
    except torch.OutOfMemoryError as exc:
        raise _load_error("the model onto the GPU", exc) from exc
    # Built from the components: from_pipe would cast every shared module to one dtype (float32
    # unless told otherwise), and a quantized module must not be cast at all.
    img2img = FluxImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    if spec.vae_tiling:
        pipe.vae.enable_tiling()
    if spec.layerwise_casting == "fp8":
        # Weights stored in float8, each layer cast up to the model's dtype while it runs.
        pipe.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype)

    try:
        modes = _run_modes(spec, pipe, img2img)
    except torch.OutOfMemoryError as exc:
        raise _load_error("the go_fast transformer", exc) from exc
    transformers = list({id(m.transformer): m.transformer for m in modes.all}.values())
    attention = apply_attention_backend(transformers, spec.attention_backend, device, dtype)

    safety = None
    if spec.safety_checker:
        from pipelines.safety import SafetyChecker

        safety = SafetyChecker.load(spec.safety_checker, device if spec.offload == "none" else "cpu", dtype)

    return LoadedModel(
        spec,
        pipe,
        img2img,
        device,
        dtype,
        weights,
        safety,
        compiled=spec.compiles_standard_transformer,
        modes=modes,
        attention=attention,
    )


def _load_single_file_transformer(spec: ModelSpec, config_folder: Path, dtype):
    import diffusers
    from diffusers import FluxTransformer2DModel

    path = Path(spec.transformer_file).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"transformer_file {path} does not exist")
    if path.suffix != ".safetensors":
        raise ModelLoadError(f"transformer_file {path} must be a .safetensors checkpoint")
    _check_safetensors_header(path)
    kwargs: dict[str, Any] = {}
    if spec.quantize_transformer != "none":
        kwargs["quantization_config"] = _quant_config(diffusers, spec.quantize_transformer, dtype)
    try:
        return FluxTransformer2DModel.from_single_file(
            str(path),
            config=str(config_folder),
            subfolder="transformer",
            torch_dtype=dtype,
            local_files_only=True,
            **kwargs,
        )
    except Exception as exc:  # noqa: BLE001
        raise _load_error(f"transformer_file {path}", exc) from exc


def _check_safetensors_header(path: Path) -> None:
    """A truncated download is the usual failure: check that the header's tensors fit the file."""
    try:
        check_safetensors_header(path)
    except TruncatedSafetensors as exc:
        raise ModelLoadError(
            f"transformer_file {path} is truncated: {exc.size} bytes on disk, {exc.expected} expected; "
            "download it again"
        ) from None
    except NotSafetensors as exc:
        raise ModelLoadError(f"transformer_file {path} is not a valid safetensors file ({exc})") from None


def _quiet_libraries() -> None:
    """No loading bars or dtype chatter in worker logs; our own log line says what loaded."""
    import logging
    import warnings

    # torchao (go_fast's fp8) warns at import about kernels built for other GPUs and Pythons.
    logging.getLogger("torchao").setLevel(logging.ERROR)
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

    import transformers

    # transformers before diffusers: importing diffusers makes transformers warn (a missing
    # torchvision) unless its verbosity is already down.
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    import diffusers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    # diffusers >= 0.36 renamed torch_dtype to dtype; older releases only know torch_dtype.
    warnings.filterwarnings("ignore", message=".*torch_dtype.*is deprecated", category=FutureWarning)


def _place(pipe, spec: ModelSpec, device: str) -> None:
    """Put the modules where the memory mode says."""
    import torch

    if spec.offload == "none":
        pipe.to(device)
    elif spec.offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif spec.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    elif spec.offload == "group":
        onload = torch.device(device)
        # Leaf-level group offload with a CUDA stream overlaps transfers with compute.
        for name in ("transformer", "text_encoder", "text_encoder_2", "vae"):
            module = getattr(pipe, name)
            if hasattr(module, "enable_group_offload"):
                module.enable_group_offload(onload_device=onload, offload_type="leaf_level", use_stream=True)
            else:
                from diffusers.hooks import apply_group_offloading

                apply_group_offloading(
                    module, onload_device=onload, offload_type="leaf_level", use_stream=True
                )


def _run_modes(spec: ModelSpec, pipe, img2img, fast_quantization: Any = None) -> RunModes:
    """The standard mode and, where go_fast differs from it, the go_fast mode (pipelines/fast.py).
    Compiling here only wraps the blocks; tracing happens at the first call (the warm-up).
    ``fast_quantization``: the torchao config of the go_fast copy (default fp8; tests on the CPU
    pass int8, which the CPU runs)."""
    if spec.compiles_standard_transformer:
        compile_transformer(pipe.transformer)
    cache_spec = spec.step_cache
    separate = spec.go_fast_transformer_separate
    # A step cache sits on each transformer some request may run with it: the standard one unless
    # only go_fast uses the cache and go_fast has its own (fp8) transformer. On a shared transformer
    # one StepCache is switched per request (StepCache.wanted).
    standard_cache = None
    if cache_spec is not None and (cache_spec.applies_to == "all" or not separate):
        standard_cache = StepCache(pipe.transformer, cache_spec)
    standard = RunMode(
        STANDARD,
        pipe,
        img2img,
        compiled=spec.compile,
        force_eager=spec.compiles_standard_transformer and not spec.compile,
        step_cache=standard_cache,
    )
    if separate:
        fast_transformer = quantized_copy(pipe.transformer, fast_quantization or fp8_config())
        if spec.go_fast.compile:
            compile_transformer(fast_transformer)
        fast = separate_mode(pipe, fast_transformer, compiled=spec.go_fast.compile)
        fast.step_cache = StepCache(fast_transformer, cache_spec) if cache_spec is not None else None
        return RunModes(standard, fast)
    if spec.go_fast.compile and not spec.compile:
        return RunModes(standard, RunMode(GO_FAST, pipe, img2img, compiled=True, step_cache=standard_cache))
    if standard_cache is not None and cache_spec.applies_to == "go_fast":
        # go_fast differs from standard by the step cache alone.
        return RunModes(
            standard, RunMode(GO_FAST, pipe, img2img, compiled=spec.compile, step_cache=standard_cache)
        )
    if spec.go_fast.enabled or spec.compile or spec.quantize_transformer in ("fp8", "int8"):
        return RunModes(standard, standard)  # the standard mode already is what go_fast asks for
    return RunModes(standard)


def compile_transformer(transformer) -> None:
    """Compile the transformer's repeated blocks: one graph reused by every block, so the first
    call is minutes on FLUX.1-dev rather than tens of minutes. Dynamic shapes: the image's token
    count is symbolic, so the 22 output sizes and any img2img size share that one graph."""
    transformer.compile_repeated_blocks(fullgraph=True, dynamic=True)
