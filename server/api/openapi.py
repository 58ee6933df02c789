"""Corrections to the OpenAPI document FastAPI generates, so it describes what the server answers.

- **Bodies parsed by hand.** The create routes read their JSON themselves (so every error has the
  contract's shape) and point their ``requestBody`` at ``#/components/schemas/CreateRequest``
  (``ReplicateModelCreate``, ``ReplicateVersionCreate``) through ``openapi_extra``; FastAPI never
  sees those models, so they are added here (with the models they refer to), else the reference
  dangles. The OpenAI image routes do the same (``ImageGenerationRequest``, ``ImageEditRequest``).
- **Validation errors are 400, not 422.** FastAPI documents a 422 ``HTTPValidationError`` on
  every route with parameters, but ``server.api.errors`` answers a bad parameter with a 400 in the
  contract's shape. Those 422s are replaced by that 400; a 422 a route declares itself (the
  Replicate routes' invalid input) is kept.
- **One model.** The Replicate routes' ``{owner}`` and ``{name}`` are documented as the one model
  this server serves (an enum): any other answers 404, and a client (or fuzzer) reading the
  document then calls the routes that create and read predictions.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from server.predictions.models import ModelRegistry

REF = "#/components/schemas/"
_DEFAULT_422 = REF + "HTTPValidationError"


def prefer_header(description: str) -> dict[str, Any]:
    """The ``Prefer`` request header as an OpenAPI parameter (for ``openapi_extra``): the routes
    read it by hand, so FastAPI does not document it. No pattern or example: a fuzzer would
    send ``wait`` and hold each request 60 s."""
    return {
        "name": "Prefer",
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": description,
    }


def _models() -> dict[str, type[BaseModel]]:
    """Models routes refer to by name without FastAPI knowing them."""
    from server.api.eachlabs.schemas import CreateRequest, ErrorResponse
    from server.api.openai.schemas import ImageEditRequest, ImageGenerationRequest
    from server.api.replicate.routes import ReplicateModelCreate, ReplicateVersionCreate

    return {
        model.__name__: model
        for model in (
            CreateRequest,
            ErrorResponse,
            ReplicateModelCreate,
            ReplicateVersionCreate,
            ImageGenerationRequest,
            ImageEditRequest,
        )
    }


def _add_model(components: dict[str, Any], model: type[BaseModel]) -> None:
    schema = model.model_json_schema(ref_template=REF + "{model}")
    for name, sub in schema.pop("$defs", {}).items():
        components.setdefault(name, sub)
    components.setdefault(model.__name__, schema)


def _validation_errors_are_400(schema: dict[str, Any]) -> None:
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.get("responses", {})
            body = responses.get("422", {}).get("content", {}).get("application/json", {}).get("schema", {})
            if body.get("$ref") != _DEFAULT_422:
                continue
            del responses["422"]
            responses.setdefault(
                "400",
                {
                    "description": "Invalid request: `details` names each bad parameter.",
                    "content": {"application/json": {"schema": {"$ref": REF + "ErrorResponse"}}},
                },
            )


def _the_served_models(schema: dict[str, Any], models: ModelRegistry) -> None:
    served = {"owner": sorted({m.owner for m in models.entries}), "name": [m.name for m in models.entries]}
    refs = ", ".join(m.ref for m in models.entries)
    for path, path_item in schema.get("paths", {}).items():
        if not path.startswith("/v1/models/{owner}/{name}"):
            continue
        for operation in path_item.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "path" and parameter.get("name") in served:
                    parameter["schema"]["enum"] = served[parameter["name"]]
                    what = "one model" if len(models.entries) == 1 else "these models"
                    parameter["description"] = f"This server serves {what}: {refs}"


def complete(schema: dict[str, Any], models: ModelRegistry | None = None) -> dict[str, Any]:
    """Apply the corrections to a generated document (in place) and return it."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    _validation_errors_are_400(schema)
    if models is not None:
        _the_served_models(schema, models)
    text = json.dumps(schema)
    for name, model in _models().items():
        if f'"{REF}{name}"' in text and name not in components:
            _add_model(components, model)
    paths = json.dumps(schema.get("paths", {}))
    for unused in ("HTTPValidationError", "ValidationError"):
        if unused in components and f'"{REF}{unused}"' not in paths:
            del components[unused]
    return schema


def install(app: FastAPI) -> None:
    """Make ``app.openapi()`` (and /openapi.json) return the corrected document."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete(build(), app.state.fluxserve.models)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
