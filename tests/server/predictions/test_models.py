"""The model registry: every name a contract may call a model by, answered in one place."""

from __future__ import annotations

import pytest

from pipelines.inputs import FluxInputs, FluxLoraInputs, FluxSchnellInputs, InvalidInputs
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


# -- the faces of each configured model ----------------------------------------------------------

SCHNELL = ModelSpec(family="flux-schnell", defaults={"output_format": "png"})


@pytest.fixture
def faces() -> ModelRegistry:
    return ModelRegistry.from_specs([ModelSpec(defaults={"num_inference_steps": 20}), SCHNELL])


def test_a_flux_dev_model_also_serves_its_lora_face_and_schnell_serves_one(faces):
    assert [(e.slug, e.ref, e.display_name, e.spec_name, e.lora) for e in faces.entries] == [
        ("flux-dev", "black-forest-labs/flux-dev", "FLUX.1 [dev]", "flux-dev", False),
        (
            "black-forest-labs-flux-dev-lora",
            "black-forest-labs/flux-dev-lora",
            "FLUX.1 [dev] LoRA",
            "flux-dev",
            True,
        ),
        ("flux-schnell", "black-forest-labs/flux-schnell", "FLUX.1 [schnell]", "flux-schnell", False),
    ]
    assert [e.slug for e in faces.of_spec("flux-dev")] == ["flux-dev", "black-forest-labs-flux-dev-lora"]
    assert faces.served() == "'flux-dev', 'black-forest-labs-flux-dev-lora', 'flux-schnell'"


def test_each_face_takes_its_own_inputs(faces):
    dev, lora, schnell = faces.entries
    assert (dev.inputs_schema, lora.inputs_schema, schnell.inputs_schema) == (
        FluxInputs,
        FluxLoraInputs,
        FluxSchnellInputs,
    )
    assert "lora_weights" in lora.input_schema()["properties"]
    assert "lora_weights" not in dev.input_schema()["properties"]
    assert "guidance" not in schnell.input_schema()["properties"]


def test_the_lora_face_has_its_flux_dev_models_defaults(faces):
    dev, lora, schnell = faces.entries
    assert lora.defaults == dev.defaults == {"num_inference_steps": 20}
    assert lora.resolve_inputs({"prompt": "x", "lora_weights": "owner/repo"}).num_inference_steps == 20
    assert schnell.resolve_inputs({"prompt": "x"}).num_inference_steps == 4


def test_schnell_refuses_more_than_four_steps_naming_the_field(faces):
    with pytest.raises(InvalidInputs) as exc:
        faces.by_slug("flux-schnell").resolve_inputs({"prompt": "x", "num_inference_steps": 5})
    assert list(exc.value.details) == ["num_inference_steps"]


def test_http_adapter_sources_follow_the_registrys_setting():
    raw = {"prompt": "x", "lora_weights": "http://example.com/a.safetensors"}
    strict = ModelRegistry.from_specs([ModelSpec()]).by_slug("black-forest-labs-flux-dev-lora")
    lenient = ModelRegistry.from_specs([ModelSpec()], allow_http_adapters=True).by_slug(
        "black-forest-labs-flux-dev-lora"
    )
    with pytest.raises(InvalidInputs):
        strict.resolve_inputs(raw)
    assert lenient.resolve_inputs(raw).adapters == [("http://example.com/a.safetensors", 1.0)]


def test_a_lora_problem_refuses_lora_inputs_but_not_plain_ones():
    registry = ModelRegistry.from_specs([ModelSpec()], lora_problem=lambda spec: "not with nf4 weights")
    lora = registry.by_slug("black-forest-labs-flux-dev-lora")
    with pytest.raises(InvalidInputs) as exc:
        lora.resolve_inputs({"prompt": "x", "lora_weights": "owner/repo"})
    assert exc.value.details == {"lora_weights": "not with nf4 weights"}
    assert lora.resolve_inputs({"prompt": "x"}).adapters == []
    assert registry.by_slug("flux-dev").lora_problem is None


def test_the_schema_of_a_predictions_model_is_named_for_the_worker(faces):
    assert [faces.schema_of(s) for s in ("flux-dev", "black-forest-labs-flux-dev-lora", "flux-schnell")] == [
        "flux-dev",
        "flux-dev-lora",
        "flux-schnell",
    ]
    assert faces.schema_of("retired-model") == "flux-dev"
