"""Errors and lenient parsing: auth, ownership, bad bodies and inputs, slash forms, headers.

Every refusal has the contract's shape ``{"error", "status", "details"?}`` and is a 4xx: nothing
a client sends may produce a 500. The shared server caps bodies at 200 kB.
"""

from __future__ import annotations

import io
import json
import re

import pytest
from PIL import Image

from tests.server.helpers import FAST, STATIC_KEYS

GOOD = {"model": "flux-dev", "input": {"prompt": "a lighthouse", **FAST}}


@pytest.fixture(scope="module")
def server(live_server):
    return live_server


@pytest.fixture(scope="module")
def key(server) -> str:
    return server.new_key()


@pytest.fixture(scope="module")
def qkey(queued_server) -> str:
    """A key of the server without workers (nothing created there ever runs)."""
    return queued_server.new_key()


@pytest.fixture(scope="module")
def queued_id(queued_server) -> tuple[str, str]:
    """A prediction that stays queued (no worker), and the key that owns it."""
    key = queued_server.new_key()
    return key, queued_server.create(key)


def _post(server, body, key, **headers):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return server.client.post(
        "/v1/prediction",
        content=content,
        headers={"X-API-Key": key, "Content-Type": "application/json", **headers},
    )


def _assert_error(r, status: int, error: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["status"] == status
    assert isinstance(body["error"], str) and body["error"]
    if error is not None:
        assert body["error"] == error
    return body


# -- auth ---------------------------------------------------------------------------------------


def test_missing_key_is_401(queued_server):
    r = queued_server.client.post("/v1/prediction", json=GOOD)

    _assert_error(r, 401, "Invalid or missing API key")


def test_wrong_key_is_401(queued_server):
    r = queued_server.client.post("/v1/prediction", json=GOOD, headers={"X-API-Key": "not-a-key"})

    _assert_error(r, 401, "Invalid or missing API key")


def test_wrong_bearer_key_is_401(queued_server, qkey):
    r = queued_server.client.get("/v1/executions", headers={"Authorization": "Bearer not-a-key"})

    _assert_error(r, 401, "Invalid or missing API key")


def test_x_api_key_header_is_accepted(queued_server, qkey):
    r = queued_server.client.post("/v1/prediction", json=GOOD, headers={"X-API-Key": qkey})

    assert r.status_code == 200, r.text


def test_authorization_bearer_header_is_accepted(queued_server, qkey):
    r = queued_server.client.post("/v1/prediction", json=GOOD, headers={"Authorization": f"Bearer {qkey}"})

    assert r.status_code == 200, r.text
    pid = r.json()["predictionID"]
    got = queued_server.client.get(f"/v1/prediction/{pid}", headers={"Authorization": f"Bearer {qkey}"})
    assert got.status_code == 200


def test_static_config_key_is_accepted(queued_server):
    r = queued_server.client.get("/v1/executions", headers={"X-API-Key": STATIC_KEYS[0]})

    assert r.status_code == 200


def test_another_keys_prediction_is_404(queued_server, queued_id):
    key, pid = queued_id
    r = queued_server.client.get(f"/v1/prediction/{pid}", headers={"X-API-Key": queued_server.new_key()})

    _assert_error(r, 404, "Prediction not found")


def test_another_keys_cancel_is_404_and_changes_nothing(queued_server, queued_id):
    key, pid = queued_id
    r = queued_server.client.post(
        f"/v1/prediction/{pid}/cancel", headers={"X-API-Key": queued_server.new_key()}
    )

    _assert_error(r, 404, "Prediction not found")
    assert queued_server.store.get(pid).status == "starting"


def test_unknown_id_is_404(queued_server, qkey):
    r = queued_server.client.get(
        "/v1/prediction/00000000-0000-4000-8000-000000000000", headers={"X-API-Key": qkey}
    )

    _assert_error(r, 404, "Prediction not found")


def test_unknown_id_cancel_is_404(queued_server, qkey):
    r = queued_server.client.post(
        "/v1/prediction/00000000-0000-4000-8000-000000000000/cancel", headers={"X-API-Key": qkey}
    )

    _assert_error(r, 404, "Prediction not found")


def test_overlong_id_is_404(queued_server, qkey):
    r = queued_server.client.get("/v1/prediction/" + "a" * 500, headers={"X-API-Key": qkey})

    _assert_error(r, 404, "Prediction not found")


# -- bad bodies ---------------------------------------------------------------------------------


def test_missing_model_is_400_model_field_is_required(queued_server, qkey):
    body = _assert_error(_post(queued_server, {"input": GOOD["input"]}, qkey), 400, "model field is required")

    assert "model" in body["details"]


def test_unknown_model_is_400_naming_model(queued_server, qkey):
    body = _assert_error(
        _post(queued_server, {**GOOD, "model": "sdxl"}, qkey), 400, "Invalid input for model"
    )

    assert "model" in body["details"]


def test_missing_input_is_400_naming_input(queued_server, qkey):
    body = _assert_error(_post(queued_server, {"model": "flux-dev"}, qkey), 400, "Invalid input for model")

    assert "input" in body["details"]


def test_invalid_inputs_are_400_naming_each_bad_field(queued_server, qkey):
    bad = {
        "prompt": "",
        "aspect_ratio": "2:1",
        "num_outputs": 9,
        "num_inference_steps": "lots",
        "guidance": 11,
        "output_format": "gif",
        "output_quality": 101,
        "prompt_strength": -0.5,
        "megapixels": "2",
        "image": "file:///etc/passwd",
        "seed": -1,
        "disable_safety_checker": "maybe",
    }
    body = _assert_error(
        _post(queued_server, {"model": "flux-dev", "input": bad}, qkey), 400, "Invalid input for model"
    )

    assert set(body["details"]) == set(bad)
    assert all(isinstance(reason, str) and reason for reason in body["details"].values())


def test_missing_prompt_is_400_naming_prompt(queued_server, qkey):
    body = _assert_error(
        _post(queued_server, {"model": "flux-dev", "input": {}}, qkey), 400, "Invalid input for model"
    )

    assert set(body["details"]) == {"prompt"}


def test_invalid_json_is_400(queued_server, qkey):
    body = _assert_error(_post(queued_server, b'{"model": "flux-dev", "input": {', qkey), 400)

    assert "body" in body["details"]


def test_empty_body_is_400(queued_server, qkey):
    _assert_error(_post(queued_server, b"", qkey), 400)


@pytest.mark.parametrize("body", [b"[]", b'"flux-dev"', b"null", b"42"])
def test_body_that_is_not_an_object_is_400(queued_server, qkey, body):
    _assert_error(_post(queued_server, body, qkey), 400)


def test_body_over_the_cap_is_413(server, key):
    huge = {"model": "flux-dev", "input": {"prompt": "x", "image": "data:image/png;base64," + "A" * 300_000}}
    body = _assert_error(_post(server, huge, key), 413)

    assert "200000" in body["details"]


def test_body_over_the_cap_creates_nothing(server):
    key = server.new_key()
    _post(server, {**GOOD, "padding": "x" * 250_000}, key)

    assert server.client.get("/v1/executions", headers={"X-API-Key": key}).json()["total"] == 0


def test_100k_character_prompt_is_400_naming_prompt(server, key):
    r = _post(server, {"model": "flux-dev", "input": {**FAST, "prompt": "a" * 100_000}}, key)

    body = _assert_error(r, 400, "Invalid input for model")
    assert set(body["details"]) == {"prompt"}


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "nan", "inf"])
def test_non_finite_number_strings_are_400(queued_server, qkey, value):
    inputs = {"prompt": "x", "guidance": value, "prompt_strength": value, "num_inference_steps": value}
    body = _assert_error(
        _post(queued_server, {"model": "flux-dev", "input": inputs}, qkey), 400, "Invalid input for model"
    )

    assert set(body["details"]) == {"guidance", "prompt_strength", "num_inference_steps"}


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_json_literals_are_400(queued_server, qkey, literal):
    raw = b'{"model": "flux-dev", "input": {"prompt": "x", "guidance": %s}}' % literal.encode()
    body = _assert_error(_post(queued_server, raw, qkey), 400, "Invalid input for model")

    assert set(body["details"]) == {"guidance"}


NASTY_BODIES = [
    b"\xff\xfe\x00",
    b'{"model": ["flux-dev"], "input": {"prompt": "x"}}',
    b'{"model": {"a": 1}, "input": {"prompt": "x"}}',
    b'{"model": "flux-dev", "input": "prompt"}',
    b'{"model": "flux-dev", "input": []}',
    b'{"model": "flux-dev", "input": {"prompt": {"nested": true}}}',
    b'{"model": "flux-dev", "input": {"prompt": ["x"]}}',
    b'{"model": "flux-dev", "input": {"prompt": "x", "seed": 1e400}}',
    b'{"model": "flux-dev", "input": {"prompt": "x", "seed": 123456789012345678901234567890}}',
    b'{"model": "flux-dev", "input": {"prompt": "x", "num_outputs": 2.5}}',
    b'{"model": "flux-dev", "input": {"prompt": "x", "num_outputs": true}}',
    b'{"model": "flux-dev", "input": {"prompt": "x", "aspect_ratio": {}}}',
    b'{"model": "flux-dev", "input": {"prompt": "x", "megapixels": []}}',
    b'{"model": "flux-dev", "input": {"prompt": "x", "image": 12}}',
    b'{"model": "flux-dev", "input": {"prompt": "\\u0000"}}',
    b'{"model": "flux-dev", "input": {"prompt": "\\ud800"}}',
    b'{"model": "flux-dev", "input": {"prompt": "x"}, "webhook_url": 5}',
    b'{"model": "flux-dev", "input": {"prompt": "x"}, "webhook_url": "ftp://example.com"}',
    b'{"model": "flux-dev", "input": {"prompt": "x"}, "webhook_secret": {"a": 1}}',
    b'{"model": "flux-dev", "input": {"prompt": "x"}' + b"}" * 5,
    b"[" * 100_000 + b"]" * 100_000,
]


@pytest.mark.parametrize("raw", NASTY_BODIES, ids=range(len(NASTY_BODIES)))
def test_odd_create_bodies_never_give_a_500(queued_server, qkey, raw):
    r = _post(queued_server, raw, qkey)

    assert r.status_code < 500, r.text
    if r.status_code != 200:
        assert r.json()["status"] == r.status_code


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "flux-dev", "input": {"prompt": "x", "extra_field": "\\ud800"}}',
        b'{"model": "flux-dev", "input": {"prompt": "x", "\\udfff": 1}}',
        b'{"model": "flux-dev", "input": {"prompt": "x"}, "webhook_secret": "\\ud800"}',
        b'{"model": "flux-dev", "input": {"prompt": "x", "image": "https://example.com/\\udc00.png"}}',
    ],
)
def test_unpaired_surrogate_escape_is_400_invalid_json(queued_server, qkey, raw):
    body = _assert_error(_post(queued_server, raw, qkey), 400, "Invalid JSON body")

    assert "surrogate" in body["details"]["body"]


def test_surrogate_pair_escape_is_accepted_and_echoed(queued_server, qkey):
    raw = b'{"model": "flux-dev", "input": {"prompt": "a cat \\ud83d\\ude00", "tag": "\\ud83d\\ude00"}}'
    r = _post(queued_server, raw, qkey)

    assert r.status_code == 200, r.text
    body = queued_server.get(qkey, r.json()["predictionID"])
    assert body["input"]["prompt"] == "a cat \U0001f600"


# -- lenient parsing ----------------------------------------------------------------------------


def test_numeric_and_boolean_strings_are_accepted_and_coerced(server, key):
    inputs = {
        "prompt": "a lighthouse",
        "megapixels": "0.25",
        "num_inference_steps": "2",
        "num_outputs": "2",
        "guidance": "3.5",
        "seed": "77",
        "output_quality": "90",
        "prompt_strength": "0.8",
        "disable_safety_checker": "false",
        "go_fast": "true",
    }
    body = server.run(key, inputs)

    assert len(body["output"]) == 2  # num_outputs "2"
    assert "Using seed: 77\n" in body["logs"]  # seed "77"
    assert "4/4 steps (100%)" in body["logs"]  # num_inference_steps "2" x 2 images
    assert "go_fast: no faster mode is configured" in body["logs"]  # go_fast "true"
    assert body["input"]["num_outputs"] == "2"  # echoed as sent


def test_numbers_as_numbers_are_accepted(queued_server, qkey):
    r = _post(
        queued_server,
        {
            "model": "flux-dev",
            "input": {"prompt": "x", "megapixels": 0.25, "num_inference_steps": 2, "guidance": 3},
        },
        qkey,
    )

    assert r.status_code == 200, r.text


def test_null_means_default(server, key):
    inputs = {
        "prompt": "a lighthouse",
        **FAST,
        "seed": None,
        "image": None,
        "aspect_ratio": None,
        "num_outputs": None,
        "output_format": None,
        "output_quality": None,
        "guidance": None,
        "go_fast": None,
    }
    body = server.run(key, inputs)

    assert isinstance(body["output"], str) and body["output"].endswith(".webp")  # one output, webp
    image = Image.open(io.BytesIO(server.client.get(server.path(body["output"])).content))
    assert image.size == (512, 512)  # aspect ratio 1:1
    assert re.search(r"Using seed: [1-9]\d*", body["logs"])  # a random seed


def test_unknown_fields_are_ignored(server, key):
    body = {
        **GOOD,
        "input": {**GOOD["input"], "lora_scale": 0.7, "hf_lora": None},
        "version": "0.0.1",
        "extra": {"a": 1},
    }
    r = _post(server, body, key)

    assert r.status_code == 200, r.text
    assert server.wait_for_end(key, r.json()["predictionID"])["status"] == "success"


# -- headers and slash forms --------------------------------------------------------------------


def test_content_type_json_on_get_does_not_fail(queued_server, qkey):
    r = queued_server.client.get(
        "/v1/executions", headers={"X-API-Key": qkey, "Content-Type": "application/json"}
    )

    assert r.status_code == 200


def test_content_type_json_on_get_prediction_does_not_fail(queued_server, queued_id):
    key, pid = queued_id
    r = queued_server.client.get(
        f"/v1/prediction/{pid}", headers={"X-API-Key": key, "Content-Type": "application/json"}
    )

    assert r.status_code == 200
    assert r.json()["id"] == pid


def test_content_type_json_on_bodyless_cancel_does_not_fail(queued_server):
    key = queued_server.new_key()
    pid = queued_server.create(key)
    r = queued_server.client.post(
        f"/v1/prediction/{pid}/cancel", headers={"X-API-Key": key, "Content-Type": "application/json"}
    )

    assert r.status_code == 200
    assert r.json()["status"] == "cancelled"


@pytest.mark.parametrize("path", ["/v1/prediction", "/v1/prediction/"])
def test_create_answers_on_both_slash_forms_without_redirect(queued_server, qkey, path):
    r = queued_server.client.post(path, json=GOOD, headers={"X-API-Key": qkey}, follow_redirects=False)

    assert r.status_code == 200, r.text
    assert "location" not in r.headers
    assert r.json()["status"] == "success"


@pytest.mark.parametrize("suffix", ["", "/"])
def test_get_answers_on_both_slash_forms_without_redirect(queued_server, queued_id, suffix):
    key, pid = queued_id
    r = queued_server.client.get(
        f"/v1/prediction/{pid}{suffix}", headers={"X-API-Key": key}, follow_redirects=False
    )

    assert r.status_code == 200
    assert "location" not in r.headers
    assert r.json()["id"] == pid


@pytest.mark.parametrize("suffix", ["", "/"])
def test_cancel_answers_on_both_slash_forms_without_redirect(queued_server, suffix):
    key = queued_server.new_key()
    pid = queued_server.create(key)
    r = queued_server.client.post(
        f"/v1/prediction/{pid}/cancel{suffix}", headers={"X-API-Key": key}, follow_redirects=False
    )

    assert r.status_code == 200
    assert "location" not in r.headers


@pytest.mark.parametrize(
    "path", ["/v1/executions/", "/v1/models/", "/v1/model/?slug=flux-dev", "/v1/executions", "/v1/models"]
)
def test_list_routes_answer_on_both_slash_forms_without_redirect(queued_server, path):
    r = queued_server.client.get(path, headers={"X-API-Key": STATIC_KEYS[0]}, follow_redirects=False)

    assert r.status_code == 200
    assert "location" not in r.headers


def test_run_answers_with_trailing_slash_without_redirect(server, key):
    r = server.client.post(
        "/v1/prediction/run/", json=GOOD, headers={"X-API-Key": key}, follow_redirects=False
    )

    assert r.status_code == 200
    assert r.json()["status"] == "success"


def test_bad_wait_value_is_400_naming_wait(queued_server, queued_id):
    key, pid = queued_id
    r = queued_server.client.get(f"/v1/prediction/{pid}?wait=soon", headers={"X-API-Key": key})

    body = _assert_error(r, 400)
    assert "wait" in body["details"]


def test_unknown_route_is_404_in_the_error_shape(queued_server):
    _assert_error(queued_server.client.get("/v1/nothing-here"), 404)


def test_wrong_method_is_405_in_the_error_shape(queued_server, queued_id):
    key, pid = queued_id
    _assert_error(queued_server.client.put(f"/v1/prediction/{pid}", headers={"X-API-Key": key}), 405)


def test_405_allow_names_every_method_routed_on_the_path(queued_server):
    # /v1/predictions is routed for GET (list) and POST (create) by two routes
    r = queued_server.client.delete("/v1/predictions", headers={"X-API-Key": STATIC_KEYS[0]})

    _assert_error(r, 405)
    assert r.headers["Allow"] == "GET, POST"


def test_405_allow_matches_the_methods_the_document_lists_on_every_path(queued_server):
    paths = queued_server.client.get("/openapi.json").json()["paths"]
    templates = {re.compile(re.sub(r"\{[^}]+\}", "[^/]+", p) + "$"): item for p, item in paths.items()}
    for path in paths:
        concrete = re.sub(r"\{[^}]+\}", "x", path)
        # every documented path this one also matches (/v1/prediction/run is /v1/prediction/{id} too)
        documented = {m.upper() for t, item in templates.items() if t.match(concrete) for m in item}
        r = queued_server.client.request("PATCH", concrete)
        assert r.status_code == 405, path
        assert set(r.headers["Allow"].split(", ")) == documented, path


def test_405_on_a_docs_asset_allows_get_and_head_only(queued_server):
    r = queued_server.client.post("/static-offline-docs/swagger-ui.css")

    _assert_error(r, 405)
    assert r.headers["Allow"] == "GET, HEAD"


def test_a_store_that_fails_on_create_gives_the_contracts_500_and_no_prediction(make_server):
    import sqlite3

    with make_server(start_workers=False) as server:
        key = STATIC_KEYS[0]

        def full_disk(*args, **kwargs):
            raise sqlite3.OperationalError("database or disk is full")

        server.store.create = full_disk  # this app's store only
        r = server.post_create(key)
        assert r.status_code == 500
        body = r.json()
        assert body["status"] == 500
        assert body["error"] == "Failed to create prediction"
        assert "disk" not in r.text  # the cause goes to the log, not to the client
        del server.store.create
        listed = server.client.get("/v1/executions", headers=server.headers(key)).json()
        assert listed["total"] == 0
