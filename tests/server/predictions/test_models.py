"""The model registry: every name a contract may call a model by, answered in one place."""

from __future__ import annotations

import pytest

from pipelines.spec import ModelSpec
from server.predictions.models import ModelEntry, ModelRegistry

# Two flux-dev models without their LoRA faces (the faces are tested further down).
DEV = ModelSpec(lora=False)
FINE_TUNE = ModelSpec(name="flux-dev-portraits", defaults={"guidance": 2.0}, lora=False)


@pytest.fixture
def registry() -> ModelRegistry:
    return ModelRegistry.from_specs([DEV, FINE_TUNE])


def test_the_configured_model_is_found_by_its_slug_and_unknown_slugs_are_not(registry):
    assert registry.by_slug("flux-dev").slug == "flux-dev"
    assert registry.by_slug("flux-dev-portraits").defaults == {"guidance": 2.0}
    assert registry.by_slug("flux-schnell") is None
    assert registry.by_slug(["flux-dev"]) is None  # a body's `model` may be any JSON value


def test_replicate_names_each_model_owner_slash_name(registry):
    assert registry.by_ref("black-forest-labs", "flux-dev").slug == "flux-dev"
    assert registry.by_ref("black-forest-labs", "flux-dev-portraits").slug == "flux-dev-portraits"
    assert registry.by_ref("someone-else", "flux-dev") is None
    assert registry.served_refs() == "black-forest-labs/flux-dev, black-forest-labs/flux-dev-portraits"


def test_each_model_has_its_own_stable_version_id(registry):
    dev, portraits = registry.entries
    assert len(dev.version_id) == 64 and dev.version_id != portraits.version_id
    assert ModelEntry.from_spec(ModelSpec()).version_id == dev.version_id  # the same after a restart
    assert registry.by_version_id(portraits.version_id) is portraits
    assert registry.by_version_id("0" * 64) is None


def test_the_first_configured_model_is_the_default(registry):
    assert registry.default.slug == "flux-dev"
    assert registry.served() == "'flux-dev', 'flux-dev-portraits'"


def test_a_prediction_of_a_model_no_longer_configured_still_has_a_replicate_name(registry):
    assert registry.ref_of("flux-dev") == "black-forest-labs/flux-dev"
    assert registry.ref_of("retired-model") == "black-forest-labs/retired-model"


def test_the_display_name_of_flux_dev_is_its_product_name():
    assert ModelEntry.from_spec(DEV).display_name == "FLUX.1 [dev]"
    assert ModelEntry.from_spec(FINE_TUNE).display_name == "flux-dev-portraits"


def test_two_models_may_not_share_a_slug():
    with pytest.raises(ValueError, match="share a slug"):
        ModelRegistry.from_specs([DEV, ModelSpec()])
