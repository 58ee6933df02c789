"""Hostile or broken input sent to a real `fluxserve serve` subprocess over real HTTP (uvicorn).

Bad images as ``data:`` URLs end their prediction in ``error`` with a message naming the
problem, and the worker that met them keeps serving (same PID, next job succeeds). Broken
requests (bodies over the cap sent chunked, bad numbers, deep nesting, invalid UTF-8) get a 4xx
naming what is wrong, never a 5xx. Keys never show up in the server's log or in error bodies.

What the in-process suite already covers is not repeated here (test_api_errors.py: 413 with a
Content-Length, 100 000-character prompts, NaN/Infinity, bodies that are not objects, unknown
fields, another key's predictions; test_outputs_retention.py: output path traversal).
"""

from __future__ import annotations

import base64
import io
import json
import re
import struct
import zlib

import pytest
from PIL import Image

from tests.server.helpers import FAST_MODEL, KEY_A, KEY_B, QUICK, LiveServer, raw_request

pytestmark = pytest.mark.slow

MAX_IMAGE_BYTES = 100_000
MAX_BODY_BYTES = 1_000_000


@pytest.fixture(scope="module")
def srv(tmp_path_factory, tiny_model_dir):
    with LiveServer(
        tmp_path_factory.mktemp("hostile") / "data",
        tiny_model_dir,
        model=FAST_MODEL,
        log_level="debug",  # the strictest setting for "keys never reach the log"
        limits={"max_body_bytes": MAX_BODY_BYTES},
        input_images={"max_bytes": MAX_IMAGE_BYTES},
        workers={"job_timeout_s": 60},
    ) as srv:
        srv.start()
        srv.first_worker = srv.worker_pid()
        yield srv
        # Every bad input of this module was met by the one worker started first.
        assert srv.worker_pids() == [srv.first_worker]


def _data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _noise_png(size: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((size, size), 64).convert("RGB").save(buf, "PNG")
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (a decompression bomb's first bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def _gif() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (0, 128, 255)).save(buf, "GIF")
    return buf.getvalue()


def _assert_worker_survived(srv: LiveServer) -> None:
    assert srv.run(KEY_A, QUICK)["status"] == "success"
    assert srv.worker_pids() == [srv.first_worker]


def _error_body(r, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["status"] == status and body["error"]
    return body


# -- images as data: URLs ---------------------------------------------------------------------------

BAD_IMAGES = {
    "truncated PNG": (lambda: _data_url(_noise_png()[:3000]), "image data is truncated or corrupt"),
    "not an image": (
        lambda: _data_url(b"GET /etc/passwd HTTP/1.0\r\n\r\n" * 10, "text/plain"),
        "not an image: the data is not a PNG, JPEG or WEBP file",
    ),
    "decompression bomb": (
        lambda: _data_url(_png_header_only(30000, 30000)),
        "image is too large",
    ),
    "GIF": (lambda: _data_url(_gif(), "image/gif"), "unsupported image format GIF; use PNG, JPEG or WEBP"),
    "invalid base64": (lambda: "data:image/png;base64,iVBORw0KGgo!!!!", "data URL contains invalid base64"),
    "not base64": (lambda: "data:image/png,%89PNG", "data URL must be base64-encoded"),
    "empty": (lambda: "data:image/png;base64,", "data URL is empty"),
}


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_bad_image_ends_in_error_naming_the_problem_and_the_worker_survives(srv, case):
    make, problem = BAD_IMAGES[case]
    body = srv.wait_for_end(KEY_A, srv.create(KEY_A, {**QUICK, "image": make()}))

    assert body["status"] == "error"
    assert body["error"].startswith("Invalid input image: "), body["error"]
    assert problem in body["error"]
    assert body["output"] is None
    _assert_worker_survived(srv)


def test_decompression_bomb_is_refused_from_its_header_naming_its_size(srv):
    body = srv.wait_for_end(
        KEY_A, srv.create(KEY_A, {**QUICK, "image": _data_url(_png_header_only(30000, 30000))})
    )

    assert re.search(r"30000x30000|900,?000,?000 pixels", body["error"]), body[
        "error"
    ]  # Pillow's check or ours
    assert srv.worker_pids() == [srv.first_worker]


def test_data_url_over_the_image_cap_is_refused_at_create_naming_image(srv):
    big = _data_url(_noise_png(256) + b"\0" * MAX_IMAGE_BYTES)
    before = srv.http.get("/v1/executions", headers={"X-API-Key": KEY_B}).json()["total"]

    r = srv.post_create(KEY_B, {**QUICK, "image": big})

    body = _error_body(r, 400)
    assert body["error"] == "Invalid input for model"
    assert body["details"] == {"image": "data URL image is larger than 97.7 KiB"}
    assert srv.http.get("/v1/executions", headers={"X-API-Key": KEY_B}).json()["total"] == before


def test_data_url_just_under_the_cap_is_accepted(srv):
    png = _noise_png(128)
    assert len(png) < MAX_IMAGE_BYTES
    body = srv.run(KEY_A, {**QUICK, "image": _data_url(png)})

    assert "img2img from a 128x128 image: output 128x128" in body["logs"]


# -- request bodies ---------------------------------------------------------------------------------


def _post_raw(srv: LiveServer, body: bytes, *, chunked: bool = False, content_length: int | None = None):
    head = [
        b"POST /v1/prediction HTTP/1.1",
        f"Host: 127.0.0.1:{srv.port}".encode(),
        f"X-API-Key: {KEY_B}".encode(),
        b"Content-Type: application/json",
        b"Connection: close",
    ]
    if chunked:
        head.append(b"Transfer-Encoding: chunked")
        size = 64 * 1024
        payload = b"".join(
            f"{len(body[i : i + size]):x}\r\n".encode() + body[i : i + size] + b"\r\n"
            for i in range(0, len(body), size)
        )
        payload += b"0\r\n\r\n"
    else:
        head.append(f"Content-Length: {len(body) if content_length is None else content_length}".encode())
        payload = body
    return raw_request(srv.port, b"\r\n".join(head) + b"\r\n\r\n" + payload)


def test_chunked_body_over_the_cap_is_413_and_creates_nothing(srv):
    before = srv.http.get("/v1/executions", headers={"X-API-Key": KEY_B}).json()["total"]
    body = json.dumps({"model": "flux-dev", "input": {"prompt": "x" * (MAX_BODY_BYTES + 10)}}).encode()

    status, answer = _post_raw(srv, body, chunked=True)

    assert status == 413
    assert json.loads(answer)["details"] == f"the limit is {MAX_BODY_BYTES} bytes"
    assert srv.http.get("/v1/executions", headers={"X-API-Key": KEY_B}).json()["total"] == before


def test_content_length_claiming_more_than_the_cap_is_413_before_the_body_is_read(srv):
    status, answer = _post_raw(srv, b"{}", content_length=10 * MAX_BODY_BYTES)

    assert status == 413
    assert json.loads(answer)["status"] == 413


def test_control_characters_and_emoji_in_the_prompt_are_generated_and_echoed_intact(srv):
    prompt = "tab\there\nnew line \x07bell \x1b[31mred\x1b[0m nul\x00 \u202eRTL\u202c 🦊 👩🏽‍🚀 e\u0301 ﷽"
    r = srv.post_create(KEY_A, {**QUICK, "prompt": prompt})
    assert r.status_code == 200, r.text

    body = srv.wait_for_end(KEY_A, r.json()["predictionID"])

    assert body["status"] == "success", body
    assert body["input"]["prompt"] == prompt
    assert srv.http.get(srv.output_path(body["output"])).status_code == 200


BAD_NUMBERS = [
    ("num_outputs", -1),
    ("num_outputs", {"n": 1}),
    ("num_inference_steps", 0),
    ("num_inference_steps", "-5"),
    ("guidance", -0.1),
    ("guidance", [3.5]),
    ("prompt_strength", 1.5),
    ("prompt_strength", "0.5x"),
    ("output_quality", -1),
    ("seed", "12abc"),
    ("seed", -7),
    ("megapixels", 0),
    ("go_fast", "yes"),
    ("aspect_ratio", 1),
    ("output_format", 5),
    ("prompt", 42),
]


@pytest.mark.parametrize(("field", "value"), BAD_NUMBERS, ids=[f"{f}={v!r}" for f, v in BAD_NUMBERS])
def test_negative_or_wrong_type_values_are_400_naming_the_field(srv, field, value):
    r = srv.post_create(KEY_A, {**QUICK, field: value})

    body = _error_body(r, 400)
    assert body["error"] == "Invalid input for model"
    assert list(body["details"]) == [field]


def test_json_nested_past_the_parser_limit_is_400_and_the_server_keeps_serving(srv):
    deep = b"[" * 200_000 + b"]" * 200_000
    status, answer = _post_raw(srv, b'{"model": "flux-dev", "input": {"prompt": "x", "deep": ' + deep + b"}}")

    assert status == 400, answer[:300]
    assert json.loads(answer)["error"] == "Invalid JSON body"
    assert srv.health()["status"] in ("READY", "BUSY")


def _nested(levels: int) -> object:
    value: object = "leaf"
    for _ in range(levels // 2):
        value = {"n": [value]}
    return value


def test_unknown_nested_field_inside_input_is_ignored(srv):
    body = srv.run(KEY_A, {**QUICK, "extra_settings": _nested(20)})

    assert body["status"] == "success"


def test_input_nested_too_deep_to_echo_back_is_400_at_create(srv):
    # Accepted, it would be stored and break every later read of it (pydantic stops at 255 levels).
    r = srv.post_create(KEY_B, {**QUICK, "extra_settings": _nested(400)})

    body = _error_body(r, 400)
    assert body["details"] == {"input": "nested deeper than 32 levels"}
    assert srv.http.get("/v1/executions", headers={"X-API-Key": KEY_B}).status_code == 200


def test_invalid_utf8_inside_a_string_is_400(srv):
    status, answer = _post_raw(srv, b'{"model": "flux-dev", "input": {"prompt": "caf\xe9 \xff\xfe"}}')

    assert status == 400
    assert json.loads(answer)["error"] == "Invalid JSON body"


# -- keys stay secret -------------------------------------------------------------------------------


def test_keys_never_appear_in_the_log_nor_in_error_bodies(srv):
    from server.store.sqlite.keys import SQLiteKeyStore

    stored = SQLiteKeyStore(srv.db_path).create("hostile-stored")
    wrong = "fsk_wrong-key-that-must-not-be-logged-7f3a"
    bodies = []
    pid = srv.create(KEY_A, QUICK)
    bodies.append(srv.http.get(f"/v1/prediction/{pid}", headers={"X-API-Key": KEY_A}).text)
    bodies.append(
        srv.http.get(f"/v1/prediction/{pid}", headers={"X-API-Key": stored}).text
    )  # another key: 404
    bodies.append(
        srv.http.post(f"/v1/prediction/{pid}/cancel", headers={"Authorization": f"Bearer {stored}"}).text
    )
    bodies.append(srv.http.get("/v1/executions", headers={"X-API-Key": wrong}).text)  # 401
    bodies.append(srv.http.get("/v1/executions", headers={"Authorization": f"Bearer {wrong}"}).text)
    bodies.append(
        srv.http.get("/v1/predictions", headers={"Authorization": f"Token {wrong}"}).text
    )  # Replicate 401
    bodies.append(srv.http.get("/v1/executions", headers={"X-API-Key": wrong * 40}).text)  # overlong
    bodies.append(srv.post_create(stored, {"prompt": ""}).text)  # 400
    bodies.append(srv.http.get(f"/v1/outputs/{pid}/out-0.webp", headers={"X-API-Key": wrong}).text)
    srv.wait_for_end(KEY_A, pid)
    srv.http.get("/health-check")  # one more request, so the log has been flushed past the ones above

    log = srv.log_text()
    assert "GET /v1/executions" in log  # the access log is there, at debug level
    for key in (KEY_A, stored, wrong):
        assert key not in log
        for body in bodies:
            assert key not in body
