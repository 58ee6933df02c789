"""The official ``openai`` Python client (PyPI) against a live ``fluxserve serve`` on a loopback port,
one real worker process running the tiny random FLUX pipeline on CPU.

One server for the module (its start is the expensive part). Each test takes a fresh API key, so
its predictions and its per-minute create budget (1 here, for the 429 test) are its own. Images are
512x512 (0.25 megapixels) in 2 steps: fast on CPU.
"""

from __future__ import annotations

import base64
import io
import time

import httpx
import openai
import pytest
from openai import OpenAI

from tests.server.helpers import FAST_MODEL, LiveServer

pytestmark = pytest.mark.slow

FAST = {"num_inference_steps": 2}


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("openai-live")
    with LiveServer(
        folder / "data",
        tiny_model_dir,
        model={"dtype": "float32", **FAST_MODEL},
        workers={"count": 1, "shutdown_grace_s": 5},
        limits={"requests_per_minute": 1},
        openai={"model_aliases": {"dall-e-3": "flux-dev"}},
    ) as srv:
        srv.start(timeout=240)
        yield srv


def client_for(server: LiveServer, key: str, **options) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/openai/v1", api_key=key, max_retries=0, **options)


@pytest.fixture
def key(server) -> str:
    return server.new_key()


@pytest.fixture
def client(server, key):
    client = client_for(server, key)
    yield client
    client.close()


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


def test_generate_two_images_returns_two_urls_serving_images_of_the_requested_size(server, client):
    result = client.images.generate(
        prompt="a lighthouse at dawn", n=2, size="512x512", output_format="webp", extra_body=FAST
    )

    assert isinstance(result.created, int) and len(result.data) == 2
    for item in result.data:
        image = decode(httpx.get(item.url, timeout=30).content)
        assert (image.format, image.size) == ("WEBP", (512, 512))


def test_b64_json_answers_the_png_itself(client):
    result = client.images.generate(
        prompt="a red fox", size="512x512", response_format="b64_json", extra_body=FAST
    )

    image = decode(base64.b64decode(result.data[0].b64_json))
    assert (image.format, image.size) == ("PNG", (512, 512))


def test_edit_redraws_the_image_at_the_img2img_size(client):
    result = client.images.edit(
        image=("source.png", png(200, 120), "image/png"),
        prompt="the same scene at night",
        response_format="b64_json",
        extra_body={**FAST, "prompt_strength": 0.6},
    )

    assert decode(base64.b64decode(result.data[0].b64_json)).size == (208, 128)  # sides rounded to 16


def test_the_prediction_is_listed_in_the_keys_executions(server, key, client):
    client.images.generate(prompt="a quiet harbour", size="512x512", extra_body={**FAST, "seed": 11})

    [listed] = executions(server, key)
    assert listed["status"] == "success"
    assert listed["input"]["prompt"] == "a quiet harbour" and listed["input"]["seed"] == 11


def test_a_model_alias_runs_the_model_it_stands_for(server, key, client):
    result = client.images.generate(model="dall-e-3", prompt="a kite", size="512x512", extra_body=FAST)

    assert len(result.data) == 1
    assert executions(server, key)[0]["model"] == "flux-dev"


# -- errors -------------------------------------------------------------------------------------


def assert_openai_shape(exc: openai.APIStatusError, param: str | None, code: str | None) -> None:
    error = exc.response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["param"], error["code"]) == (param, code)
    assert error["message"]


def test_a_size_with_no_table_ratio_is_a_bad_request_naming_size(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.generate(prompt="a cat", size="1000x300")

    assert_openai_shape(refused.value, "size", "unsupported_size")
    assert "1024x1024" in refused.value.message


def test_a_missing_prompt_is_a_bad_request_naming_prompt(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.generate(prompt=openai.NOT_GIVEN, size="512x512")

    assert_openai_shape(refused.value, "prompt", "missing_required_parameter")


def test_a_mask_is_refused_since_inpainting_is_not_offered(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.edit(image=("a.png", png(64, 64), "image/png"), mask=("m.png", png(64, 64)), prompt="x")

    assert_openai_shape(refused.value, "mask", "invalid_value")


def test_a_wrong_key_is_an_authentication_error(server):
    with client_for(server, "not-a-key") as client, pytest.raises(openai.AuthenticationError) as refused:
        client.images.generate(prompt="a cat", size="512x512")

    assert_openai_shape(refused.value, None, "invalid_api_key")


def test_an_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as refused:
        client.images.generate(model="gpt-image-1", prompt="a cat", size="512x512")

    assert_openai_shape(refused.value, "model", "model_not_found")


def test_past_the_create_limit_is_a_rate_limit_error_with_retry_after(client):
    client.images.generate(prompt="one", size="512x512", extra_body=FAST)

    with pytest.raises(openai.RateLimitError) as refused:
        client.images.generate(prompt="two", size="512x512", extra_body=FAST)

    assert_openai_shape(refused.value, None, "rate_limit_exceeded")
    assert int(refused.value.response.headers["Retry-After"]) >= 1


# -- models -------------------------------------------------------------------------------------


def test_models_list_names_the_configured_models(client):
    models = client.models.list()

    assert [m.id for m in models.data] == ["flux-dev", "black-forest-labs-flux-dev-lora"]
    assert {m.object for m in models.data} == {"model"}
    assert client.models.retrieve("dall-e-3").id == "dall-e-3"


# -- disconnect -----------------------------------------------------------------------------------


def test_a_client_gone_before_its_prediction_started_has_it_cancelled(server, key):
    blocker_key = server.new_key()
    # 1024x1024 in 50 steps keeps the one worker busy for many seconds on this CPU
    blocker = server.create(blocker_key, {"megapixels": "1", "num_inference_steps": "50"})
    server.wait_until(blocker_key, blocker, lambda body: body["status"] == "processing")
    try:
        with client_for(server, key, timeout=1.5) as client, pytest.raises(openai.APITimeoutError):
            client.images.generate(prompt="never drawn", size="512x512", extra_body=FAST)

        deadline = time.monotonic() + 15
        while not executions(server, key, status="cancelled") and time.monotonic() < deadline:
            time.sleep(0.2)
        [cancelled] = executions(server, key, status="cancelled")
        assert cancelled["input"]["prompt"] == "never drawn" and cancelled["started_at"] is None
    finally:
        server.http.post(f"/v1/prediction/{blocker}/cancel", headers=server.headers(blocker_key))
