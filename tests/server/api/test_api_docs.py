"""The API's own documentation: /docs and /redoc work without internet, and the OpenAPI document
describes how to authenticate and what the Replicate create routes take."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from tests.server.helpers import server_settings

REF = "#/components/schemas/"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    data = tmp_path_factory.mktemp("docs")
    app = create_app(server_settings(data, data / "no-model-needed"), start_workers=False)
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def document(client):
    return client.get("/openapi.json").json()


def _assets(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_page_loads_only_assets_this_server_serves(client, page):
    response = client.get(page)
    assert response.status_code == 200

    assets = _assets(response.text)
    assert assets, "the page references its script"
    assert [a for a in assets if not a.startswith("/") or a.startswith("//")] == []  # no CDN
    expected = {".js": "javascript", ".css": "text/css", ".png": "image/png"}
    for asset in assets:
        served = client.get(asset)
        assert served.status_code == 200, asset
        kind = next(v for k, v in expected.items() if asset.endswith(k))
        assert kind in served.headers["content-type"], asset
        assert len(served.content) > 1000, asset


def test_swagger_page_loads_swagger_ui_and_redoc_page_loads_redoc(client):
    swagger = [a for a in _assets(client.get("/docs").text) if a.endswith(".js")]
    redoc = [a for a in _assets(client.get("/redoc").text) if a.endswith(".js")]

    assert b"SwaggerUIBundle" in client.get(swagger[0]).content
    assert b"Redoc" in client.get(redoc[0]).content


def test_document_declares_the_api_key_header_and_bearer_schemes(document):
    schemes = document["components"]["securitySchemes"]

    assert {"type": "apiKey", "in": "header", "name": "X-API-Key"}.items() <= schemes["ApiKey"].items()
    assert {"type": "http", "scheme": "bearer"}.items() <= schemes["Bearer"].items()


def test_every_route_that_needs_a_key_accepts_either_scheme(document):
    either = [{"ApiKey": []}, {"Bearer": []}]
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if path.startswith(("/v1/prediction", "/v1/executions", "/v1/model", "/v1/webhooks")):
                assert operation.get("security") == either, (method, path)
    assert document["paths"]["/health-check"]["get"].get("security") is None
    # output URLs work without a key (unless outputs.require_owner_key): the key is optional
    assert document["paths"]["/v1/outputs/{prediction_id}/{name}"]["get"]["security"] == [{}, *either]


@pytest.mark.parametrize(
    ("path", "model", "required"),
    [
        ("/v1/models/{owner}/{name}/predictions", "ReplicateModelCreate", ["input"]),
        ("/v1/predictions", "ReplicateVersionCreate", ["input", "version"]),
    ],
)
def test_replicate_create_documents_its_body_and_the_prefer_header(document, path, model, required):
    operation = document["paths"][path]["post"]
    body = operation["requestBody"]
    schema = document["components"]["schemas"][model]

    assert body["required"] is True
    assert body["content"]["application/json"]["schema"] == {"$ref": REF + model}
    assert sorted(schema["required"]) == required
    assert {"input", "webhook", "webhook_events_filter"} <= set(schema["properties"])
    inputs = [branch["$ref"] for branch in schema["properties"]["input"]["anyOf"]]
    assert inputs == [REF + "FluxInputs", REF + "FluxLoraInputs", REF + "FluxSchnellInputs"]
    events = schema["properties"]["webhook_events_filter"]["anyOf"][0]["items"]["enum"]
    assert events == ["start", "output", "logs", "completed"]
    prefer = [p for p in operation["parameters"] if p["name"] == "Prefer"]
    assert len(prefer) == 1 and prefer[0]["in"] == "header" and "wait" in prefer[0]["description"]


def test_get_prediction_documents_the_prefer_header(document):
    operation = document["paths"]["/v1/prediction/{prediction_id}"]["get"]

    prefer = [p for p in operation["parameters"] if p["name"] == "Prefer"]
    assert len(prefer) == 1 and prefer[0]["in"] == "header" and "wait=n" in prefer[0]["description"]


def test_list_documents_the_bound_of_limit(document):
    limit = next(p for p in document["paths"]["/v1/executions"]["get"]["parameters"] if p["name"] == "limit")

    assert (limit["schema"]["minimum"], limit["schema"]["maximum"], limit["schema"]["default"]) == (
        1,
        100,
        20,
    )
    assert "100" in limit["description"]


def test_model_routes_document_owner_and_name_as_the_models_served(document):
    for path in ("/v1/models/{owner}/{name}/predictions", "/v1/models/{owner}/{name}"):
        operation = next(iter(document["paths"][path].values()))
        enums = {p["name"]: p["schema"]["enum"] for p in operation["parameters"] if p["in"] == "path"}
        # flux-dev and, from the same weights, its LoRA face.
        assert enums == {"owner": ["black-forest-labs"], "name": ["flux-dev", "flux-dev-lora"]}, path


def test_each_models_inputs_are_documented_with_their_ranges(document):
    schemas = document["components"]["schemas"]
    lora = schemas["FluxLoraInputs"]["properties"]
    schnell = schemas["FluxSchnellInputs"]["properties"]

    assert lora["lora_scale"]["minimum"] == -1 and lora["lora_scale"]["maximum"] == 3
    assert lora["extra_lora_scale"]["minimum"] == -1 and lora["extra_lora_scale"]["maximum"] == 3
    assert {"lora_weights", "extra_lora", "guidance"} <= set(lora)
    assert schnell["num_inference_steps"]["maximum"] == 4 and schnell["num_inference_steps"]["default"] == 4
    assert "guidance" not in schnell and "lora_weights" not in schnell
    eachlabs_input = schemas["CreateRequest"]["properties"]["input"]["anyOf"]
    assert {branch["$ref"] for branch in eachlabs_input} == {
        REF + "FluxInputs",
        REF + "FluxLoraInputs",
        REF + "FluxSchnellInputs",
    }
