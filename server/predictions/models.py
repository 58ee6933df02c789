"""The models this server serves, and every name a client may call one by.

Each contract addresses a model its own way: Eachlabs by slug (``flux-dev``), Replicate by
``owner/name`` and by version id. The registry answers all of them, so "is this our model" is
decided here once. Today's config has one ``model:``; it is the registry's one entry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pipelines.inputs import FluxInputs, parse_inputs
from pipelines.spec import ModelSpec

# Replicate's owner of the FLUX.1 models: a Replicate client names ours black-forest-labs/<slug>.
FLUX_OWNER = "black-forest-labs"
FLUX_DEV_NAME = "FLUX.1 [dev]"
FLUX_DEV_DESCRIPTION = (
    "12B rectified-flow transformer for text-to-image and img2img (Black Forest Labs), served locally."
)
# The Eachlabs contract's model version (accepted and ignored on create; shown in /v1/models).
EACHLABS_VERSION = "0.0.1"


@dataclass(frozen=True)
class ModelEntry:
    """One served model and its names."""

    slug: str  # what Eachlabs clients send in `model`; what a prediction records
    owner: str  # Replicate's owner
    name: str  # Replicate's model name
    display_name: str
    description: str
    version: str  # the Eachlabs version
    defaults: dict[str, Any] = field(default_factory=dict)  # the config's input defaults

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> ModelEntry:
        return cls(
            slug=spec.name,
            owner=FLUX_OWNER,
            name=spec.name,
            display_name=FLUX_DEV_NAME if spec.name == "flux-dev" else spec.name,
            description=FLUX_DEV_DESCRIPTION,
            version=EACHLABS_VERSION,
            defaults=dict(spec.defaults or {}),
        )

    @property
    def ref(self) -> str:
        """``owner/name``, as Replicate's clients name it."""
        return f"{self.owner}/{self.name}"

    @property
    def version_id(self) -> str:
        """The id of its one Replicate version: 64 hex characters, like Replicate's, derived from
        the name so it stays the same across restarts."""
        return replicate_version_id(self.ref)

    def input_schema(self) -> dict[str, Any]:
        return FluxInputs.model_json_schema()

    def resolve_inputs(self, raw: Any) -> FluxInputs:
        """The client's ``input`` validated, this model's defaults filling what it left out.
        Raises pipelines.inputs.InvalidInputs naming each bad field."""
        return parse_inputs(raw, self.defaults)


def replicate_version_id(ref: str) -> str:
    return hashlib.sha256(f"fluxserve:{ref}".encode()).hexdigest()


class ModelRegistry:
    """The configured models; the first is the default (the playground's, /health-check's)."""

    def __init__(self, entries: Iterable[ModelEntry]) -> None:
        self.entries = list(entries)
        if not self.entries:
            raise ValueError("a server serves at least one model")
        slugs = [e.slug for e in self.entries]
        if len(set(slugs)) != len(slugs):
            raise ValueError(f"two models share a slug: {slugs}")

    @classmethod
    def from_specs(cls, specs: Iterable[ModelSpec]) -> ModelRegistry:
        return cls(ModelEntry.from_spec(spec) for spec in specs)

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
