"""The LoRA adapters loaded into one pipeline (one manager per worker).

``activate(requests)`` makes exactly the requested adapters, at their scales, active for the next
generation, loading any file not loaded yet through diffusers' Flux LoRA loader (diffusers/PEFT,
kohya and XLabs files all go through ``FluxPipeline.lora_state_dict``'s converters). Only the
transformer's weights are applied: text-encoder weights in a file are dropped with a warning.

Two ways of holding adapters:

- **named adapters** (an eager model): each file is a peft adapter named after its key; at most
  ``max_loaded`` stay loaded (least recently used ones go). ``activate([])`` disables LoRA layers,
  so a request without LoRA gives the bytes of a pipeline that never loaded one.
- **hotswap slots** (a compiled model, or one about to be): changing the set of adapters would
  recompile, so two fixed slots (main and extra) are injected before compiling, rank
  ``hotswap_max_rank``, covering every Linear of the transformer, all zero. A file is copied into a
  slot with ``hotswap=True`` (scale folded into its up weights, padded to the slot's rank), scales
  are written into the slots' scaling tensors in place, and a request without LoRA sets both to 0.
  The price: the slots' low-rank products run on every request (zeros when unused).

A file that cannot be applied raises ``AdapterLoadError`` saying why and leaves no half-loaded
adapter behind, so the next request still works and still gives the same bytes.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
import warnings as pywarnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.errors import AdapterLoadError
from pipelines.loras.support import lora_support_problem

log = logging.getLogger(__name__)

SLOTS = ("fluxserve_slot_main", "fluxserve_slot_extra")
_LORA_WEIGHT = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")
_TEXT_ENCODER_PREFIXES = ("text_encoder.", "text_encoder_2.")
_TRANSFORMER = "transformer."


@dataclass(frozen=True)
class LoraRequest:
    """One adapter a prediction asks for: its identity (``AdapterSource.key``), the local checked
    file, its strength, and how to name it in messages (``AdapterSource.display``)."""

    key: str
    path: Path
    scale: float
    display: str


@dataclass(frozen=True)
class LoraOptions:
    """How a worker holds adapters. ``max_loaded``: named adapters kept loaded (eager models);
    ``hotswap_max_rank``: the rank of the compiled model's slots, the highest rank it accepts."""

    max_loaded: int = 4
    hotswap_max_rank: int = 64

    def __post_init__(self) -> None:
        if self.max_loaded < 2:
            raise ValueError("max_loaded must be at least 2 (a request may name two adapters)")
        if self.hotswap_max_rank < 1:
            raise ValueError("hotswap_max_rank must be at least 1")


def adapter_name(key: str) -> str:
    """A peft adapter name for a source key: a Python identifier without dots, stable across runs."""
    return "lora_" + hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass
class _Adapter:
    """A file's transformer weights, converted to diffusers/PEFT keys and checked against the model."""

    state_dict: dict[str, Any]  # "transformer.<module>.lora_A.weight" -> tensor
    alphas: dict[str, Any]  # "transformer.<module>.alpha" -> alpha (old diffusers files)
    metadata: dict[str, Any] | None  # the file's LoraConfig, "transformer."-prefixed keys
    modules: dict[str, int]  # module -> rank
    warnings: list[str]


class LoadedAdapters:
    """The adapters loaded into one ``LoadedModel``'s transformer. Not thread-safe (nor is the model)."""

    def __init__(self, model: Any, options: LoraOptions | None = None) -> None:
        self.model = model  # pipelines.loading.LoadedModel
        self.options = options or LoraOptions()
        self._named: OrderedDict[str, str] = OrderedDict()  # key -> adapter name, oldest first
        self._slot_keys: list[str | None] = [None] * len(SLOTS)  # what each hotswap slot holds
        self._hotswap = False
        self._lora_enabled = False
        self.last_load_seconds = 0.0  # time the last activate() spent loading files (0: none loaded)
        if model.compiled:
            # Compiled at load: compile_repeated_blocks traces on the first call, so slots
            # injected now are part of the first (and only) graph.
            self.prepare_for_compile()

    # -- public ---------------------------------------------------------------------------
    @property
    def hotswap(self) -> bool:
        return self._hotswap

    @property
    def loaded_keys(self) -> list[str]:
        """Keys of the adapters held now, least recently used first (hotswap: slot order)."""
        if self._hotswap:
            return [k for k in self._slot_keys if k is not None]
        return list(self._named)

    def activate(self, requests: Sequence[LoraRequest]) -> list[str]:
        """Make exactly ``requests`` active for the next generation; warnings for the prediction's logs."""
        self.last_load_seconds = 0.0
        requests = _merged(requests)
        if requests:
            problem = lora_support_problem(self.model.spec)
            if problem:
                raise AdapterLoadError(problem)
        if self._hotswap:
            return self._activate_slots(requests)
        return self._activate_named(requests)

    def prepare_for_compile(self) -> None:
        """Switch to hotswap slots; call before the transformer is compiled (or first run compiled).
        A model that cannot take LoRA at all (lora_support_problem) gets no slots."""
        if self._hotswap or lora_support_problem(self.model.spec):
            return
        from peft.utils.hotswap import prepare_model_for_compiled_hotswap

        transformer = self.model.pipe.transformer
        if self._named:
            transformer.delete_adapters(list(self._named.values()))
            self._named.clear()
        rank = self.options.hotswap_max_rank
        for slot in SLOTS:
            with _quiet_peft():
                transformer.load_lora_adapter(
                    self._placeholder(rank), prefix=None, adapter_name=slot, _pipeline=self.model.pipe
                )
        transformer.enable_lora()
        transformer.set_adapter(list(SLOTS))
        # Scalings become tensors (changed in place later: no recompile); ranks are already the target.
        prepare_model_for_compiled_hotswap(transformer, target_rank=rank, check_compiled="error")
        self._set_slot_scales([0.0] * len(SLOTS))
        self._hotswap = True
        log.info("LoRA hotswap slots ready: %d slots of rank %d", len(SLOTS), rank)

    # -- named adapters (eager) -----------------------------------------------------------
    def _activate_named(self, requests: list[LoraRequest]) -> list[str]:
        if not requests:
            if self._lora_enabled:
                self.model.pipe.transformer.disable_lora()
                self._lora_enabled = False
            return []
        transformer = self.model.pipe.transformer
        warnings: list[str] = []
        wanted = {r.key for r in requests}
        started = time.perf_counter()
        loaded_any = False
        for request in requests:
            if request.key in self._named:
                self._named.move_to_end(request.key)
                continue
            self._evict(keep=wanted)
            name = adapter_name(request.key)
            adapter = self._read(request)
            self._load_named(request, name, adapter)
            self._named[request.key] = name
            warnings += adapter.warnings
            loaded_any = True
        if loaded_any:
            self.last_load_seconds = time.perf_counter() - started
        transformer.enable_lora()
        transformer.set_adapters([self._named[r.key] for r in requests], [r.scale for r in requests])
        self._lora_enabled = True
        return warnings

    def _evict(self, keep: set[str]) -> None:
        """Delete the least recently used adapters not wanted now until one more fits."""
        while len(self._named) >= self.options.max_loaded:
            victim = next((k for k in self._named if k not in keep), None)
            if victim is None:
                return  # everything loaded is in use: hold one more for now
            name = self._named.pop(victim)
            with _quiet_peft():
                self.model.pipe.transformer.delete_adapters(name)
            log.info("unloaded LoRA adapter %s (least recently used)", victim)

    def _load_named(self, request: LoraRequest, name: str, adapter: _Adapter) -> None:
        pipe = self.model.pipe
        try:
            with _quiet_peft():
                type(pipe).load_lora_into_transformer(
                    adapter.state_dict,
                    network_alphas=adapter.alphas or None,
                    transformer=pipe.transformer,
                    adapter_name=name,
                    metadata=adapter.metadata,
                    _pipeline=pipe,
                    hotswap=False,
                )
        except Exception as exc:  # noqa: BLE001 - whatever peft raised, the pipeline must stay clean
            self._purge(name)
            raise AdapterLoadError(f"LoRA {request.display} could not be loaded: {_first_line(exc)}") from exc

    def _purge(self, name: str) -> None:
        """Remove every trace of a half-loaded adapter (peft's own clean-up misses inactive layers)."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        transformer = self.model.pipe.transformer
        for module in transformer.modules():
            if isinstance(module, BaseTunerLayer) and name in getattr(module, "lora_A", {}):
                module.delete_adapter(name)
        getattr(transformer, "peft_config", {}).pop(name, None)

    # -- hotswap slots (compiled) ---------------------------------------------------------
    def _activate_slots(self, requests: list[LoraRequest]) -> list[str]:
        warnings: list[str] = []
        scales = [0.0] * len(SLOTS)
        started = time.perf_counter()
        loaded_any = False
        for request, slot in self._slot_plan(requests):
            if self._slot_keys[slot] != request.key:
                adapter = self._read(request)
                self._load_slot(request, slot, adapter)
                warnings += adapter.warnings
                loaded_any = True
            scales[slot] = request.scale
        if loaded_any:
            self.last_load_seconds = time.perf_counter() - started
        self._set_slot_scales(scales)
        return warnings

    def _slot_plan(self, requests: list[LoraRequest]) -> list[tuple[LoraRequest, int]]:
        """Which slot each request uses. Two adapters: by key order, so main/extra order never
        changes the sum's order (nor the bytes). One: the slot already holding it, if any."""
        if len(requests) == 1 and requests[0].key in self._slot_keys:
            return [(requests[0], self._slot_keys.index(requests[0].key))]
        return [(request, slot) for slot, request in enumerate(requests)]

    def _load_slot(self, request: LoraRequest, slot: int, adapter: _Adapter) -> None:
        pipe = self.model.pipe
        rank = self.options.hotswap_max_rank
        too_high = {m: r for m, r in adapter.modules.items() if r > rank}
        if too_high:
            module, r = next(iter(too_high.items()))
            raise AdapterLoadError(
                f"LoRA {request.display} has rank {r} (at {module}), above this server's "
                f"hotswap_max_rank of {rank} for the compiled model; ask the operator to raise it"
            )
        slot_modules = self._slot_modules()
        outside = sorted(set(adapter.modules) - slot_modules)
        if outside:
            raise AdapterLoadError(
                f"LoRA {request.display} targets {outside[0]}, which the compiled model's adapter slots "
                "do not cover"
            )
        state_dict = _normalized(adapter, rank, request.display)
        self._slot_keys[slot] = None  # whatever happens next, the slot no longer holds the old file
        try:
            with _quiet_peft():
                type(pipe).load_lora_into_transformer(
                    state_dict,
                    network_alphas=None,
                    transformer=pipe.transformer,
                    adapter_name=SLOTS[slot],
                    metadata=None,
                    _pipeline=pipe,
                    hotswap=True,
                )
        except Exception as exc:  # noqa: BLE001
            self._reset_slot(slot)
            raise AdapterLoadError(f"LoRA {request.display} could not be loaded: {_first_line(exc)}") from exc
        self._slot_keys[slot] = request.key

    def _reset_slot(self, slot: int) -> None:
        """Zero a slot after a failed swap (or put it back if peft's clean-up removed it: the next
        compiled call then recompiles once, which beats a broken model)."""
        transformer = self.model.pipe.transformer
        if SLOTS[slot] not in getattr(transformer, "peft_config", {}):
            from peft.utils.hotswap import prepare_model_for_compiled_hotswap

            self._purge(SLOTS[slot])
            with _quiet_peft():
                transformer.load_lora_adapter(
                    self._placeholder(self.options.hotswap_max_rank),
                    prefix=None,
                    adapter_name=SLOTS[slot],
                    _pipeline=self.model.pipe,
                )
            transformer.set_adapter(list(SLOTS))
            prepare_model_for_compiled_hotswap(transformer, check_compiled="ignore")
        for module in self._lora_layers():
            if SLOTS[slot] in module.lora_A:
                module.lora_A[SLOTS[slot]].weight.data.zero_()
                module.lora_B[SLOTS[slot]].weight.data.zero_()
        self._set_slot_scales([0.0] * len(SLOTS))

    def _placeholder(self, rank: int) -> dict[str, Any]:
        """Zero LoRA weights of ``rank`` for every Linear of the transformer."""
        import torch
        from peft.tuners.tuners_utils import BaseTunerLayer

        state_dict = {}
        for name, module in self.model.pipe.transformer.named_modules():
            if isinstance(module, BaseTunerLayer):  # a Linear already wrapped by the other slot
                module = module.get_base_layer()
            elif ".lora_" in name or name.endswith(".base_layer"):
                continue  # the parts of a wrapped Linear
            if isinstance(module, torch.nn.Linear):
                state_dict[f"{name}.lora_A.weight"] = torch.zeros(rank, module.in_features)
                state_dict[f"{name}.lora_B.weight"] = torch.zeros(module.out_features, rank)
        return state_dict

    def _slot_modules(self) -> set[str]:
        transformer = self.model.pipe.transformer
        return {name for name, module in transformer.named_modules() if SLOTS[0] in getattr(module, "r", {})}

    def _lora_layers(self):
        from peft.tuners.lora import LoraLayer

        return [m for m in self.model.pipe.transformer.modules() if isinstance(m, LoraLayer)]

    def _set_slot_scales(self, scales: list[float]) -> None:
        # In place, into the tensors prepare_model_for_compiled_hotswap made: set_adapters would put
        # floats back, and a changed float is a recompile. Slot weights carry their own alpha/rank.
        for module in self._lora_layers():
            for slot, scale in zip(SLOTS, scales, strict=True):
                if slot in module.scaling:
                    module.scaling[slot].fill_(scale)

    # -- reading a file ---------------------------------------------------------------------
    def _read(self, request: LoraRequest) -> _Adapter:
        """The file's transformer LoRA weights in diffusers/PEFT form, checked against the model."""
        pipe = self.model.pipe
        try:
            state_dict, alphas, metadata = pipe.lora_state_dict(
                str(request.path), return_alphas=True, return_lora_metadata=True
            )
        except Exception as exc:  # noqa: BLE001 - unreadable, or a layout no converter knows
            raise AdapterLoadError(
                f"LoRA {request.display} is not a Flux LoRA diffusers can read: {_first_line(exc)}"
            ) from exc
        state_dict = _with_transformer_prefix(state_dict, pipe.transformer)
        warnings: list[str] = []
        te_keys = [k for k in state_dict if k.startswith(_TEXT_ENCODER_PREFIXES)]
        if te_keys:
            warnings.append(
                f"LoRA {request.display}: its {len(te_keys)} text-encoder weights were ignored "
                "(only the transformer's weights are applied)."
            )
        transformer_sd = {k: v for k, v in state_dict.items() if k.startswith(_TRANSFORMER)}
        other = [k for k in state_dict if k not in transformer_sd and k not in te_keys]
        if not transformer_sd:
            sample = f" (its weights are named like {other[0]!r})" if other else ""
            raise AdapterLoadError(
                f"LoRA {request.display} is not a Flux LoRA: it holds no weights for the FLUX transformer"
                f"{sample}"
            )
        if other:
            warnings.append(f"LoRA {request.display}: {len(other)} weights of no known part were ignored.")
        modules = _check_fits(transformer_sd, pipe.transformer, request.display)
        alphas = {k: v for k, v in (alphas or {}).items() if k.startswith(_TRANSFORMER)}
        if metadata:
            metadata = {k: v for k, v in metadata.items() if k.startswith(_TRANSFORMER)} or None
        return _Adapter(transformer_sd, alphas, metadata, modules, warnings)


def _merged(requests: Sequence[LoraRequest]) -> list[LoraRequest]:
    """One entry per key (the same adapter twice adds its scales), sorted by key: the order of
    main and extra never changes which adapter is summed first, so never the bytes."""
    by_key: dict[str, LoraRequest] = {}
    for r in requests:
        if r.key in by_key:
            first = by_key[r.key]
            by_key[r.key] = LoraRequest(first.key, first.path, first.scale + r.scale, first.display)
        else:
            by_key[r.key] = r
    return [by_key[k] for k in sorted(by_key)]


def _with_transformer_prefix(state_dict: dict, transformer) -> dict:
    """PEFT files saved from the transformer alone have no ``transformer.`` prefix: add it when
    every key names a module of the transformer (diffusers would silently load nothing)."""
    if any(k.startswith((_TRANSFORMER, *_TEXT_ENCODER_PREFIXES)) for k in state_dict):
        return state_dict
    names = {name for name, _ in transformer.named_modules()}
    matches = [_LORA_WEIGHT.match(k) for k in state_dict]
    if state_dict and all(m and m["module"] in names for m in matches):
        return {_TRANSFORMER + k: v for k, v in state_dict.items()}
    return state_dict


def _check_fits(state_dict: dict, transformer, display: str) -> dict[str, int]:
    """Every weight a LoRA A or B of a Linear of this transformer, with shapes that fit: {module: rank}.

    Checked before peft touches the model, so a bad file changes nothing."""
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    parts: dict[str, dict[str, Any]] = {}
    for key, tensor in state_dict.items():
        m = _LORA_WEIGHT.match(key[len(_TRANSFORMER) :])
        if m is None:
            raise AdapterLoadError(
                f"LoRA {display} holds {key!r}, which is not a LoRA weight (lora_A/lora_B): "
                "only plain LoRA adapters are supported (not Control LoRAs, DoRA, LoKr or full weights)"
            )
        parts.setdefault(m["module"], {})[m["part"]] = tensor
    ranks: dict[str, int] = {}
    for module_name, ab in sorted(parts.items()):
        if set(ab) != {"A", "B"}:
            raise AdapterLoadError(f"LoRA {display} has only half of the LoRA pair for {module_name}")
        try:
            module = transformer.get_submodule(module_name)
        except AttributeError:
            raise AdapterLoadError(
                f"LoRA {display} targets {module_name}, which the FLUX transformer does not have: "
                "it is not a Flux LoRA (or not for this model)"
            ) from None
        if isinstance(module, BaseTunerLayer):
            module = module.get_base_layer()
        if not isinstance(module, torch.nn.Linear):
            raise AdapterLoadError(f"LoRA {display} targets {module_name}, which is not a Linear layer")
        a, b = ab["A"], ab["B"]
        if a.ndim != 2 or b.ndim != 2 or not (a.is_floating_point() and b.is_floating_point()):
            raise AdapterLoadError(
                f"LoRA {display}: the weights for {module_name} are not 2-D float matrices"
            )
        rank = a.shape[0]
        if (a.shape[1], b.shape[0], b.shape[1]) != (module.in_features, module.out_features, rank):
            raise AdapterLoadError(
                f"LoRA {display} does not fit this model: for {module_name} it has "
                f"{tuple(a.shape)} and {tuple(b.shape)}, the layer takes {module.in_features} "
                f"inputs to {module.out_features} outputs (a LoRA for another model?)"
            )
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise AdapterLoadError(f"LoRA {display} has NaN or infinite weights at {module_name}")
        ranks[module_name] = rank
    return ranks


def _normalized(adapter: _Adapter, rank: int, display: str) -> dict[str, Any]:
    """The adapter as a slot takes it: alpha/rank folded into B, padded with zeros to ``rank``,
    so every module has the slot's rank and alpha (scale 1) and peft's compatibility check passes."""
    import torch

    config = _file_config(adapter)
    state_dict = {}
    for module_name, r in adapter.modules.items():
        a = adapter.state_dict[f"{_TRANSFORMER}{module_name}.lora_A.weight"].float()
        b = adapter.state_dict[f"{_TRANSFORMER}{module_name}.lora_B.weight"].float()
        factor = _module_scaling(adapter, config, module_name, r, display)
        padded_a = torch.zeros(rank, a.shape[1])
        padded_b = torch.zeros(b.shape[0], rank)
        padded_a[:r] = a
        padded_b[:, :r] = b * factor
        state_dict[f"{module_name}.lora_A.weight"] = padded_a
        state_dict[f"{module_name}.lora_B.weight"] = padded_b
    return {_TRANSFORMER + k: v for k, v in state_dict.items()}


def _file_config(adapter: _Adapter):
    if not adapter.metadata:
        return None
    from peft import LoraConfig

    fields = {k[len(_TRANSFORMER) :]: v for k, v in adapter.metadata.items()}
    try:
        return LoraConfig(**fields)
    except (TypeError, ValueError):
        return None


def _module_scaling(adapter: _Adapter, config, module_name: str, r: int, display: str) -> float:
    """peft's alpha/r for one module, from the file's LoraConfig, its alpha keys, or 1 (kohya and
    XLabs weights come out of diffusers' converters already scaled)."""
    if config is not None:
        from peft.utils.other import get_pattern_key

        if config.use_dora:
            raise AdapterLoadError(f"LoRA {display} is a DoRA adapter, which a compiled model cannot swap in")
        alpha_key = get_pattern_key(config.alpha_pattern.keys(), module_name)
        alpha = config.alpha_pattern.get(alpha_key, config.lora_alpha)
        return alpha / (r**0.5 if config.use_rslora else r)
    alpha = adapter.alphas.get(f"{_TRANSFORMER}{module_name}.alpha")
    if alpha is None:
        return 1.0
    return float(alpha) / r


@contextmanager
def _quiet_peft() -> Iterator[None]:
    # peft warns when several adapters share the model and when an active one is deleted: by design here.
    with pywarnings.catch_warnings():
        pywarnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        pywarnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted")
        yield


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
