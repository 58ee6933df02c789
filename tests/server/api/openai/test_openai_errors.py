"""OpenAI's error shape where no worker runs the prediction: the wait limit, bodies the routes
refuse before creating anything, the domain's errors in OpenAI's status codes, and the OpenAPI
document that describes them."""

from __future__ import annotations

from server.api.openai.errors import render_error
from server.predictions.errors import InFlightLimitExceeded, InvalidInput, ModelNotServed
from tests.server.helpers import STATIC_KEYS, png_data_url

KEY = STATIC_KEYS[0]
BEARER = {"Authorization": f"Bearer {KEY}"}


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_a_prediction_past_the_wait_limit_is_cancelled_and_answered_504(queued_openai_server):
    r = queued_openai_server.http.post(
        "/openai/v1/images/generations", json={"prompt": "slow", "size": "512x512"}, headers=BEARER
    )

    assert r.status_code == 504 and error_of(r)["code"] == "timeout"
    assert queued_openai_server.get(KEY, r.headers["X-Prediction-Id"])["status"] == "cancelled"


def test_the_contracts_own_path_answers_the_same(queued_openai_server):
    r = queued_openai_server.http.post("/v1/images/generations", json={"size": "512x512"}, headers=BEARER)

    assert r.status_code == 400 and error_of(r)["param"] == "prompt"


def test_a_body_over_the_limit_is_413_in_openais_shape(queued_openai_server):
    r = queued_openai_server.http.post(
        "/openai/v1/images/generations", json={"prompt": "x" * 30_000}, headers=BEARER
    )

    assert r.status_code == 413 and error_of(r)["code"] == "request_too_large"


def test_an_unknown_argument_is_refused_naming_it(queued_openai_server):
    r = queued_openai_server.http.post(
        "/openai/v1/images/generations", json={"prompt": "a cat", "aspect_ratio": "16:9"}, headers=BEARER
    )

    assert r.status_code == 400
    assert error_of(r)["param"] == "aspect_ratio" and "size" in error_of(r)["message"]


def test_an_edit_of_a_file_that_is_no_image_is_refused_naming_image(queued_openai_server):
    r = queued_openai_server.http.post(
        "/openai/v1/images/edits",
        files={"image": ("a.png", b"not an image", "image/png")},
        data={"prompt": "x"},
        headers=BEARER,
    )

    assert r.status_code == 400 and error_of(r)["param"] == "image"


def test_an_edit_takes_image_brackets_as_newer_sdks_send_it(queued_openai_server):
    import base64

    png = base64.b64decode(png_data_url(64, 48).split(",", 1)[1])
    r = queued_openai_server.http.post(
        "/openai/v1/images/edits", files={"image[]": ("a.png", png, "image/png")}, data={"prompt": "x"},
        headers=BEARER,
    )  # fmt: skip

    assert r.status_code == 504  # made and queued (no worker here), not refused
    assert queued_openai_server.get(KEY, r.headers["X-Prediction-Id"])["input"]["image"].startswith(
        "data:image/png;base64,"
    )


def test_a_model_with_no_live_worker_is_503():
    answer = render_error(ModelNotServed("flux-schnell", "no worker serves it"))

    assert answer.status_code == 503
    assert b'"code":"service_unavailable"' in answer.body and b"flux-schnell" in answer.body


def test_the_in_flight_limit_is_429_rate_limit_exceeded_with_retry_after():
    answer = render_error(InFlightLimitExceeded(10, 10))

    assert answer.status_code == 429 and b'"code":"rate_limit_exceeded"' in answer.body
    assert int(answer.headers["Retry-After"]) >= 1


def test_invalid_inputs_name_openais_parameter():
    answer = render_error(InvalidInput({"num_outputs": "must be at most 4", "guidance": "too high"}))

    assert answer.status_code == 400 and b'"param":"n"' in answer.body


def test_the_openapi_document_has_the_openai_routes_with_their_bodies(queued_openai_server):
    document = queued_openai_server.http.get("/openapi.json").json()
    paths, schemas = document["paths"], document["components"]["schemas"]

    for base in ("/openai/v1", "/v1"):
        generate = paths[f"{base}/images/generations"]["post"]
        assert generate["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
            "/ImageGenerationRequest"
        )
        edit = paths[f"{base}/images/edits"]["post"]["requestBody"]["content"]
        assert edit["multipart/form-data"]["schema"]["$ref"].endswith("/ImageEditRequest")
    assert {"/openai/v1/models", "/openai/v1/models/{model_id}"} <= set(paths)
    assert "prompt" in schemas["ImageGenerationRequest"]["required"]
    assert schemas["ImageEditRequest"]["properties"]["image"]["format"] == "binary"
