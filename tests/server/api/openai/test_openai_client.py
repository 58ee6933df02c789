"""The official ``openai`` Python client (PyPI) against a live ``fluxserve serve`` on a loopback port,
one real worker process running the tiny random FLUX pipeline on CPU.

One server for the module (``openai_server``, conftest.py); each test takes a fresh API key, so its
predictions and its per-minute create budget (1, for the 429 test) are its own. Images are 512x512
(0.25 megapixels) in 2 steps: fast on CPU.
"""

from __future__ import annotations

import base64
import io
import time

import httpx
import openai
import pytest

from tests.server.api.openai.conftest import openai_client_for
from tests.server.helpers import LiveServer

pytestmark = pytest.mark.slow

FAST = {"num_inference_steps": 2}


def decode(data: bytes):
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def png(width: int, height: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (30, 120, 200)).save(buf, "PNG")
    return buf.getvalue()


def executions(server: LiveServer, key: str, **params) -> list[dict]:
    r = server.http.get("/v1/executions", params=params, headers=server.headers(key))
    assert r.status_code == 200, r.text
    return r.json()["executions"]


# -- images -------------------------------------------------------------------------------------


def test_generate_two_images_returns_two_urls_serving_images_of_the_requested_size(
    openai_server, openai_client
):
    result = openai_client.images.generate(
        prompt="a lighthouse at dawn", n=2, size="512x512", output_format="webp", extra_body=FAST
    )

    assert isinstance(result.created, int) and len(result.data) == 2
    for item in result.data:
        image = decode(httpx.get(item.url, timeout=30).content)
        assert (image.format, image.size) == ("WEBP", (512, 512))


def test_b64_json_answers_the_png_itself(openai_client):
    result = openai_client.images.generate(
        prompt="a red fox", size="512x512", response_format="b64_json", extra_body=FAST
    )

    image = decode(base64.b64decode(result.data[0].b64_json))
    assert (image.format, image.size) == ("PNG", (512, 512))


def test_edit_redraws_the_image_at_the_img2img_size(openai_client):
    result = openai_client.images.edit(
        image=("source.png", png(200, 120), "image/png"),
        prompt="the same scene at night",
        response_format="b64_json",
        extra_body={**FAST, "prompt_strength": 0.6},
    )

    assert decode(base64.b64decode(result.data[0].b64_json)).size == (208, 128)  # sides rounded to 16


def test_the_prediction_is_listed_in_the_keys_executions(openai_server, openai_key, openai_client):
    openai_client.images.generate(prompt="a quiet harbour", size="512x512", extra_body={**FAST, "seed": 11})

    [listed] = executions(openai_server, openai_key)
    assert listed["status"] == "success"
    assert listed["input"]["prompt"] == "a quiet harbour" and listed["input"]["seed"] == 11


def test_a_model_alias_runs_the_model_it_stands_for(openai_server, openai_key, openai_client):
    result = openai_client.images.generate(model="dall-e-3", prompt="a kite", size="512x512", extra_body=FAST)

    assert len(result.data) == 1
    assert executions(openai_server, openai_key)[0]["model"] == "flux-dev"


# -- errors -------------------------------------------------------------------------------------


def assert_openai_shape(exc: openai.APIStatusError, param: str | None, code: str | None) -> None:
    error = exc.response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["param"], error["code"]) == (param, code)
    assert error["message"]


def test_a_size_with_no_table_ratio_is_a_bad_request_naming_size(openai_client):
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client.images.generate(prompt="a cat", size="1000x300")

    assert_openai_shape(refused.value, "size", "unsupported_size")
    assert "1024x1024" in refused.value.message


def test_a_missing_prompt_is_a_bad_request_naming_prompt(openai_client):
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client.images.generate(prompt=openai.NOT_GIVEN, size="512x512")

    assert_openai_shape(refused.value, "prompt", "missing_required_parameter")


def test_a_mask_is_refused_since_inpainting_is_not_offered(openai_client):
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client.images.edit(
            image=("a.png", png(64, 64), "image/png"), mask=("m.png", png(64, 64)), prompt="x"
        )

    assert_openai_shape(refused.value, "mask", "invalid_value")


def test_a_wrong_key_is_an_authentication_error(openai_server):
    with (
        openai_client_for(openai_server, "not-a-key") as client,
        pytest.raises(openai.AuthenticationError) as refused,
    ):
        client.images.generate(prompt="a cat", size="512x512")

    assert_openai_shape(refused.value, None, "invalid_api_key")


def test_an_unknown_model_is_not_found(openai_client):
    with pytest.raises(openai.NotFoundError) as refused:
        openai_client.images.generate(model="gpt-image-1", prompt="a cat", size="512x512")

    assert_openai_shape(refused.value, "model", "model_not_found")


def test_past_the_create_limit_is_a_rate_limit_error_with_retry_after(openai_client):
    openai_client.images.generate(prompt="one", size="512x512", extra_body=FAST)

    with pytest.raises(openai.RateLimitError) as refused:
        openai_client.images.generate(prompt="two", size="512x512", extra_body=FAST)

    assert_openai_shape(refused.value, None, "rate_limit_exceeded")
    assert int(refused.value.response.headers["Retry-After"]) >= 1


def test_an_edit_whose_image_url_is_no_image_is_a_bad_request_naming_image(openai_server, openai_key):
    not_an_image = "data:image/png;base64," + base64.b64encode(b"plain text, no pixels").decode()
    r = openai_server.http.post(
        "/openai/v1/images/edits",
        json={"image": not_an_image, "prompt": "x"},
        headers={"Authorization": f"Bearer {openai_key}"},
    )

    assert r.status_code == 400, r.text
    assert (r.json()["error"]["param"], r.json()["error"]["code"]) == ("image", "invalid_image")


# -- models -------------------------------------------------------------------------------------


def test_models_list_names_the_configured_models(openai_client):
    models = openai_client.models.list()

    assert [m.id for m in models.data] == ["flux-dev", "black-forest-labs-flux-dev-lora"]
    assert {m.object for m in models.data} == {"model"}
    assert openai_client.models.retrieve("dall-e-3").id == "dall-e-3"


# -- disconnect -----------------------------------------------------------------------------------


def test_a_client_gone_before_its_prediction_started_has_it_cancelled(openai_server, openai_key):
    blocker_key = openai_server.new_key()
    # 1024x1024 in 50 steps keeps the one worker busy for many seconds on this CPU
    blocker = openai_server.create(blocker_key, {"megapixels": "1", "num_inference_steps": "50"})
    openai_server.wait_until(blocker_key, blocker, lambda body: body["status"] == "processing")
    try:
        with (
            openai_client_for(openai_server, openai_key, timeout=1.5) as client,
            pytest.raises(openai.APITimeoutError),
        ):
            client.images.generate(prompt="never drawn", size="512x512", extra_body=FAST)

        deadline = time.monotonic() + 15
        while not executions(openai_server, openai_key, status="cancelled") and time.monotonic() < deadline:
            time.sleep(0.2)
        [cancelled] = executions(openai_server, openai_key, status="cancelled")
        assert cancelled["input"]["prompt"] == "never drawn" and cancelled["started_at"] is None
    finally:
        openai_server.http.post(
            f"/v1/prediction/{blocker}/cancel", headers=openai_server.headers(blocker_key)
        )
