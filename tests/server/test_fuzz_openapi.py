"""Property-based fuzzing of the HTTP API against its own OpenAPI document (schemathesis).

Every operation of ``/openapi.json`` gets a fixed number of generated requests (Hypothesis,
derandomized: the same requests on every run), sent in-process to the ASGI app. Its workers are
not started (``create_app(settings, start_workers=False)``): the API layer is the target, so
created predictions simply stay queued. Each answer must

- not be a 5xx,
- have a status code the document lists for that operation,
- have a documented content type, documented headers and a body matching the documented schema.

Requests are sent with a valid key (the authenticated paths) and, in a second, smaller run,
without one (the 401 paths). The generated bodies, queries and ids are arbitrary: lists of
other keys' predictions, ids that do not exist, numbers out of range.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.server.helpers import STATIC_KEYS, server_settings


def not_a_server_error_but_the_documented_wait_timeout(ctx, response, case):
    """``not_a_server_error``, but for the 504 of an OpenAI image route: it waits for its prediction,
    and with no worker here every valid request ends in that documented answer (cancelled)."""
    waited_out = (
        response.status_code == 504
        and case.path.endswith(("/images/generations", "/images/edits"))
        and response.json()["error"]["code"] == "timeout"
    )
    return None if waited_out else not_a_server_error(ctx, response, case)


CHECKS = [
    not_a_server_error_but_the_documented_wait_timeout,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
FUZZ = settings(
    max_examples=25,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def _app():
    """The app under test, built at collection (schemathesis parametrizes by operation then), in a
    temporary data folder removed at exit."""
    import atexit
    import shutil
    import tempfile
    from pathlib import Path

    from server.app import create_app

    data = Path(tempfile.mkdtemp(prefix="fluxserve-fuzz-"))
    atexit.register(shutil.rmtree, data, ignore_errors=True)
    return create_app(
        server_settings(
            data,
            data / "no-model-needed",  # workers are not started: nothing loads it
            run_wait_timeout_s=0.05,  # /v1/prediction/run answers at once with the queued state
            openai={"wait_timeout_s": 0.05},  # the OpenAI image routes answer 504 at once (cancelled)
            limits={"max_body_bytes": 64 * 1024},
        ),
        start_workers=False,
    )


APP = _app()
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@FUZZ
def test_authenticated_requests_get_documented_answers_and_no_5xx(case):
    case.call_and_validate(headers={"X-API-Key": STATIC_KEYS[0]}, checks=CHECKS)


@schema.parametrize()
@settings(FUZZ, max_examples=5)
def test_requests_without_a_key_get_documented_answers_and_no_5xx(case):
    case.call_and_validate(checks=CHECKS)


# -- the document itself ----------------------------------------------------------------------------


def _refs(node):
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_every_reference_in_the_document_resolves():
    document = APP.openapi()
    components = document["components"]["schemas"]

    dangling = {ref for ref in _refs(document) if ref.removeprefix("#/components/schemas/") not in components}
    assert dangling == set()
    create = document["paths"]["/v1/prediction"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]
    assert create == {"$ref": "#/components/schemas/CreateRequest"}
    assert "prompt" in components["FluxInputs"]["properties"]


def test_bad_parameters_are_documented_as_the_400_the_server_sends_not_fastapis_422():
    document = APP.openapi()

    assert "HTTPValidationError" not in document["components"]["schemas"]
    get = document["paths"]["/v1/prediction/{prediction_id}"]["get"]["responses"]
    assert "422" not in get and get["400"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ErrorResponse"
    )
    replicate = document["paths"]["/v1/predictions"]["post"]["responses"]
    assert replicate["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ReplicateError")
