"""The models this server serves, and every name a client may call one by.

Each contract addresses a model its own way: Eachlabs by slug (``flux-dev``), Replicate by
``owner/name`` and by version id. The registry answers all of them, so "is this our model" is
decided here once. Each configured model (``ModelSpec``) gives one entry per face: a flux-dev
model gives ``flux-dev`` and, from the same loaded weights, its LoRA face
(``black-forest-labs-flux-dev-lora``); a flux-schnell model gives one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pipelines.inputs import INPUT_SCHEMAS, InvalidInputs, parse_inputs
from pipelines.spec import ModelSpec

# Replicate's owner of the FLUX.1 models: a Replicate client names ours black-forest-labs/<slug>.
FLUX_OWNER = "black-forest-labs"
FLUX_DEV_NAME = "FLUX.1 [dev]"
FLUX_SCHNELL_NAME = "FLUX.1 [schnell]"
LORA_SUFFIX = " LoRA"
FLUX_DEV_DESCRIPTION = (
    "12B rectified-flow transformer for text-to-image and img2img (Black Forest Labs), served locally."
)
FLUX_LORA_DESCRIPTION = (
    "FLUX.1 [dev] with up to two LoRA adapters (lora_weights, extra_lora), applied to the same "
    "loaded weights; text-to-image and img2img, served locally."
)
FLUX_SCHNELL_DESCRIPTION = (
    "12B timestep-distilled rectified-flow transformer: text-to-image and img2img in 1 to 4 steps "
    "(Black Forest Labs), served locally."
)
# The Eachlabs contract's model version (accepted and ignored on create; shown in /v1/models).
EACHLABS_VERSION = "0.0.1"

# Why LoRA inputs cannot run on a model (its quantization, say), or None when they can.
LoraProblem = Callable[[ModelSpec], str | None]


@dataclass(frozen=True)
class ModelEntry:
    """One face of a served model and its names."""

    slug: str  # what Eachlabs clients send in `model`; what a prediction records
    owner: str  # Replicate's owner
    name: str  # Replicate's model name
    display_name: str
    description: str
    version: str  # the Eachlabs version
    defaults: dict[str, Any] = field(default_factory=dict)  # the config's input defaults
    schema_name: str = "flux-dev"  # its key in pipelines.inputs.INPUT_SCHEMAS
    spec_name: str = ""  # the ModelSpec whose workers run it (the LoRA face: its flux-dev spec)
    lora: bool = False  # the LoRA face: takes lora_weights and extra_lora
    allow_http_adapters: bool = False  # LoRA sources may be plain http:// URLs
    lora_problem: str | None = None  # set: LoRA inputs are refused with this reason

    def __post_init__(self) -> None:
        if not self.spec_name:
            object.__setattr__(self, "spec_name", self.slug)

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> ModelEntry:
        """The model's own face (its LoRA face, if any, is in ``faces``)."""
        return cls.faces(spec)[0]

    @classmethod
    def faces(
        cls, spec: ModelSpec, *, allow_http_adapters: bool = False, lora_problem: str | None = None
    ) -> list[ModelEntry]:
        """Every face of one configured model: itself, then its LoRA face when it has one."""
        schnell = spec.family == "flux-schnell"
        own = cls(
            slug=spec.name,
            owner=FLUX_OWNER,
            name=spec.name,
            display_name=_display_name(spec),
            description=FLUX_SCHNELL_DESCRIPTION if schnell else FLUX_DEV_DESCRIPTION,
            version=EACHLABS_VERSION,
            defaults=dict(spec.defaults or {}),
            schema_name=spec.family,
            spec_name=spec.name,
        )
        if not spec.serves_lora:
            return [own]
        lora = cls(
            slug=spec.lora_slug,
            owner=FLUX_OWNER,
            name=spec.lora_name,
            display_name=own.display_name + LORA_SUFFIX,
            description=FLUX_LORA_DESCRIPTION,
            version=EACHLABS_VERSION,
            defaults=dict(spec.defaults or {}),
            schema_name="flux-dev-lora",
            spec_name=spec.name,
            lora=True,
            allow_http_adapters=allow_http_adapters,
            lora_problem=lora_problem,
        )
        return [own, lora]

    @property
    def ref(self) -> str:
        """``owner/name``, as Replicate's clients name it."""
        return f"{self.owner}/{self.name}"

    @property
    def version_id(self) -> str:
        """The id of its one Replicate version: 64 hex characters, like Replicate's, derived from
        the name so it stays the same across restarts."""
        return replicate_version_id(self.ref)

    @property
    def inputs_schema(self) -> type:
        """The pydantic class of its inputs."""
        return INPUT_SCHEMAS[self.schema_name]

    def input_schema(self) -> dict[str, Any]:
        return self.inputs_schema.model_json_schema()

    def resolve_inputs(self, raw: Any) -> Any:
        """The client's ``input`` validated, this model's defaults filling what it left out.
        Raises pipelines.inputs.InvalidInputs naming each bad field."""
        inputs = parse_inputs(
            raw, self.defaults, self.inputs_schema, allow_http_adapters=self.allow_http_adapters
        )
        if self.lora_problem and inputs.adapters:
            raise InvalidInputs({"lora_weights": self.lora_problem})
        return inputs


def _display_name(spec: ModelSpec) -> str:
    if spec.name == "flux-dev":
        return FLUX_DEV_NAME
    if spec.name == "flux-schnell" and spec.family == "flux-schnell":
        return FLUX_SCHNELL_NAME
    return spec.name


def replicate_version_id(ref: str) -> str:
    return hashlib.sha256(f"fluxserve:{ref}".encode()).hexdigest()


class ModelRegistry:
    """The configured models' faces; the first is the default (the playground's, /health-check's)."""

    def __init__(self, entries: Iterable[ModelEntry]) -> None:
        self.entries = list(entries)
        if not self.entries:
            raise ValueError("a server serves at least one model")
        slugs = [e.slug for e in self.entries]
        if len(set(slugs)) != len(slugs):
            raise ValueError(f"two models share a slug: {slugs}")

    @classmethod
    def from_specs(
        cls,
        specs: Iterable[ModelSpec],
        allow_http_adapters: bool = False,
        lora_problem: LoraProblem | None = None,
    ) -> ModelRegistry:
        """Every face of every spec. ``allow_http_adapters``: LoRA sources may be plain http://
        URLs (``loras.allow_http``); ``lora_problem(spec)``: why a model's LoRA face must refuse
        LoRA inputs (None: it takes them)."""
        return cls(
            entry
            for spec in specs
            for entry in ModelEntry.faces(
                spec,
                allow_http_adapters=allow_http_adapters,
                lora_problem=lora_problem(spec) if lora_problem is not None else None,
            )
        )

    @classmethod
    def from_settings(cls, settings: Any) -> ModelRegistry:
        """The configured models (``server.config.Settings``: ``model``/``models``); LoRA inputs
        are refused at create where a model cannot apply them (a quantization diffusers cannot put
        LoRA layers on), and plain http:// LoRA URLs are taken only with ``loras.allow_http``."""
        from pipelines.loras.support import lora_support_problem

        return cls.from_specs(
            settings.model_specs,
            allow_http_adapters=settings.loras.allow_http,
            lora_problem=lora_support_problem,
        )

    @property
    def default(self) -> ModelEntry:
        return self.entries[0]

    def by_slug(self, slug: Any) -> ModelEntry | None:
        return next((e for e in self.entries if isinstance(slug, str) and e.slug == slug), None)

    def by_ref(self, owner: str, name: str) -> ModelEntry | None:
        """Replicate's ``owner/name``."""
        return next((e for e in self.entries if e.owner == owner and e.name == name), None)

    def by_version_id(self, version_id: str) -> ModelEntry | None:
        return next((e for e in self.entries if e.version_id == version_id), None)

    def of_spec(self, spec_name: str) -> list[ModelEntry]:
        """The faces that the workers of one configured model serve."""
        return [e for e in self.entries if e.spec_name == spec_name]

    def served(self) -> str:
        """The slugs served, for a message: ``'flux-dev'``."""
        return ", ".join(repr(e.slug) for e in self.entries)

    def served_refs(self) -> str:
        """The ``owner/name`` of each model served, for a message."""
        return ", ".join(e.ref for e in self.entries)

    def ref_of(self, slug: str) -> str:
        """``owner/name`` of a prediction's model; a slug no longer configured keeps the owner of
        the FLUX models (its predictions still read back)."""
        entry = self.by_slug(slug)
        return entry.ref if entry is not None else f"{FLUX_OWNER}/{slug}"

    def version_id_of(self, slug: str) -> str:
        return replicate_version_id(self.ref_of(slug))

    def schema_of(self, slug: str) -> str:
        """The INPUT_SCHEMAS key of a prediction's model (flux-dev for a slug no longer configured)."""
        entry = self.by_slug(slug)
        return entry.schema_name if entry is not None else "flux-dev"
