"""The Replicate-compatible routes (CONTRACT.md section 4): shapes, statuses, errors, Prefer: wait,
pagination. The app runs without workers; where a prediction must move, the test plays the worker
through the store, as the supervisor would."""

from __future__ import annotations

import base64
import threading
import time

import pytest
from fastapi.testclient import TestClient

from server.api.replicate import routes as replicate_routes
from server.app import create_app
from server.auth.keyring import key_id_for
from server.config import Settings
from server.predictions.model import ERROR, SUCCESS
from server.predictions.models import replicate_version_id

KEY = "test-key-replicate"
OTHER_KEY = "test-key-someone-else"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODEL_ROUTE = "/v1/models/black-forest-labs/flux-dev/predictions"
FLUX_VERSION = replicate_version_id("black-forest-labs/flux-dev")


@pytest.fixture
def client(tmp_path):
    settings = Settings(
        data_dir=str(tmp_path / "data"),
        api_keys=[KEY, OTHER_KEY],
        limits={"requests_per_minute": 0, "max_in_flight": 0},
    )
    with TestClient(create_app(settings, start_workers=False)) as c:
        yield c


def store_of(client: TestClient):
    return client.app.state.fluxserve.store


def create(
    client: TestClient, body: dict | None = None, headers: dict | None = None, path: str = MODEL_ROUTE
):
    return client.post(
        path, json=body or {"input": {"prompt": "a red fox"}}, headers={**AUTH, **(headers or {})}
    )


def play_worker(client: TestClient, status: str, *, after: float = 0.0, **finish_kwargs) -> threading.Thread:
    """In the background: wait ``after`` s, take the queued prediction, end it with ``status``
    (or leave it processing when ``status`` is None)."""
    store = store_of(client)

    def run() -> None:
        deadline = time.monotonic() + 10
        claimed = None
        while claimed is None and time.monotonic() < deadline:
            time.sleep(0.02)
            claimed = store.claim_next("test-worker")
        time.sleep(after)
        if claimed is not None and status is not None:
            store.finish(claimed.id, status, **finish_kwargs)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def finish_now(client: TestClient, prediction_id: str, status: str, **kwargs) -> None:
    store = store_of(client)
    assert store.claim_next("test-worker").id == prediction_id
    assert store.finish(prediction_id, status, **kwargs)


# -- create ---------------------------------------------------------------------------------


def test_create_on_the_model_route_answers_201_with_a_starting_prediction(client):
    response = create(client)
    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "starting"
    assert body["model"] == "black-forest-labs/flux-dev"
    assert body["version"] == FLUX_VERSION
    assert body["input"] == {"prompt": "a red fox"}
    assert body["output"] is None and body["error"] is None and body["logs"] == ""
    assert body["urls"] == {
        "get": f"http://127.0.0.1:8000/v1/predictions/{body['id']}",
        "cancel": f"http://127.0.0.1:8000/v1/predictions/{body['id']}/cancel",
    }
    assert body["created_at"].endswith("Z") and body["started_at"] is None and body["completed_at"] is None


def test_create_with_version_accepts_any_version_string_and_echoes_it(client):
    response = create(client, {"version": "abc123", "input": {"prompt": "x"}}, path="/v1/predictions")
    assert response.status_code == 201
    body = response.json()
    assert body["version"] == "abc123"
    assert client.get(f"/v1/predictions/{body['id']}", headers=AUTH).json()["version"] == "abc123"


def test_create_with_version_naming_the_model_uses_its_version(client):
    response = create(
        client, {"version": "black-forest-labs/flux-dev", "input": {"prompt": "x"}}, path="/v1/predictions"
    )
    assert response.status_code == 201
    assert response.json()["version"] == FLUX_VERSION


def test_create_with_version_naming_another_model_is_422(client):
    response = create(
        client, {"version": "stability-ai/sdxl:1234", "input": {"prompt": "x"}}, path="/v1/predictions"
    )
    assert response.status_code == 422
    body = response.json()
    assert body["status"] == 422 and body["title"] == "Invalid version or not permitted"
    assert "black-forest-labs/flux-dev" in body["detail"]


def test_create_without_version_is_422(client):
    response = create(client, {"input": {"prompt": "x"}}, path="/v1/predictions")
    assert response.status_code == 422
    assert response.json()["invalid_fields"] == [
        {"type": "required", "field": "version", "description": "version is required"}
    ]


def test_invalid_input_is_422_with_invalid_fields(client):
    response = create(client, {"input": {"prompt": "x", "num_outputs": 9, "aspect_ratio": "7:5"}})
    assert response.status_code == 422
    body = response.json()
    assert body["status"] == 422 and body["title"] == "Input validation failed"
    fields = {f["field"]: f for f in body["invalid_fields"]}
    assert set(fields) == {"input.num_outputs", "input.aspect_ratio"}
    assert fields["input.num_outputs"]["type"] == "invalid"
    assert "- input.num_outputs:" in body["detail"]
    assert store_of(client).counts_by_status()["starting"] == 0  # nothing was created


def test_missing_prompt_is_422_naming_the_field(client):
    response = create(client, {"input": {}})
    assert response.status_code == 422
    assert response.json()["invalid_fields"] == [
        {"type": "required", "field": "input.prompt", "description": "prompt is required"}
    ]


def test_unknown_top_level_field_is_422(client):
    response = create(client, {"inptu": {"prompt": "x"}})
    assert response.status_code == 422
    types = {(f["type"], f["description"]) for f in response.json()["invalid_fields"]}
    assert types == {
        ("additional_property_not_allowed", "Additional property inptu is not allowed"),
        ("required", "input is required"),
    }


def test_invalid_json_is_400_in_replicate_shape(client):
    response = client.post(
        MODEL_ROUTE, content=b"{nope", headers={**AUTH, "Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert set(response.json()) == {"detail", "status", "title"}


def test_invalid_webhook_events_filter_is_422(client):
    response = create(
        client,
        {"input": {"prompt": "x"}, "webhook": "https://example.com/h", "webhook_events_filter": ["done"]},
    )
    assert response.status_code == 422
    assert response.json()["invalid_fields"][0]["field"] == "webhook_events_filter"


def test_missing_key_is_401_in_replicate_shape(client):
    response = client.post(MODEL_ROUTE, json={"input": {"prompt": "x"}})
    assert response.status_code == 401
    assert response.json() == {
        "detail": "You did not pass a valid authentication token",
        "status": 401,
        "title": "Unauthenticated",
    }


def test_token_scheme_is_accepted(client):
    response = client.post(
        MODEL_ROUTE, json={"input": {"prompt": "x"}}, headers={"Authorization": f"Token {KEY}"}
    )
    assert response.status_code == 201


def test_another_model_on_the_model_route_is_404(client):
    response = client.post(
        "/v1/models/stability-ai/sdxl/predictions", json={"input": {"prompt": "x"}}, headers=AUTH
    )
    assert response.status_code == 404
    assert response.json()["status"] == 404


def test_the_replicate_flavour_is_marked_in_the_prediction(client):
    pid = create(
        client,
        {
            "input": {"prompt": "x"},
            "webhook": "https://example.com/h",
            "webhook_events_filter": ["completed", "start"],
        },
    ).json()["id"]
    pred = store_of(client).get(pid)
    assert pred.extra == {
        "api": "replicate",
        "webhook_events_filter": ["start", "completed"],
        "webhook_signer": key_id_for(KEY),  # whose secret signs its webhooks, even once adopted
    }
    assert pred.webhook_url == "https://example.com/h"


# -- Prefer: wait ---------------------------------------------------------------------------


def test_prefer_wait_answers_201_with_the_final_prediction_when_it_ends_in_time(client):
    play_worker(client, SUCCESS, after=0.2, output=["out-0.webp"], predict_time=0.2)
    started = time.monotonic()
    response = create(client, headers={"Prefer": "wait=10"})
    assert time.monotonic() - started < 5
    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "succeeded"
    assert body["output"] == [f"http://127.0.0.1:8000/v1/outputs/{body['id']}/out-0.webp"]


def test_prefer_wait_that_runs_out_answers_202_with_status_starting(client):
    play_worker(client, None)  # picked up, never finishes
    started = time.monotonic()
    response = create(client, headers={"Prefer": "wait=1"})
    elapsed = time.monotonic() - started
    assert response.status_code == 202
    assert 0.9 <= elapsed < 5
    body = response.json()
    # Processing already, but a blocking create that runs out says "starting", as Replicate does:
    # the official client takes any other status as final.
    assert body["status"] == "starting"
    assert client.get(f"/v1/predictions/{body['id']}", headers=AUTH).json()["status"] == "processing"


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("wait", 60),
        ("wait=5", 5),
        ("Wait = 7", 7),
        ("wait=600", 60),
        ("wait=0", 1),
        ("respond-async, wait=3", 3),
        ('wait="4"', 4),
        ("wait=5; strict", 5),  # RFC 7240 preference parameters are ignored
        ("", 0),
    ],
)
def test_prefer_wait_header_parsing(header, seconds):
    class FakeRequest:
        headers = {"prefer": header}

    assert replicate_routes.requested_wait(FakeRequest()) == seconds


# -- get ------------------------------------------------------------------------------------


def test_get_a_succeeded_prediction_has_a_list_of_output_urls_and_metrics(client):
    pid = create(client, {"input": {"prompt": "x", "num_outputs": 2}}).json()["id"]
    finish_now(client, pid, SUCCESS, output=["out-0.webp", "out-1.webp"], predict_time=1.25)
    body = client.get(f"/v1/predictions/{pid}", headers=AUTH).json()
    assert body["status"] == "succeeded"
    assert body["output"] == [f"http://127.0.0.1:8000/v1/outputs/{pid}/out-{i}.webp" for i in range(2)]
    assert body["metrics"]["predict_time"] == 1.25 and body["metrics"]["total_time"] >= 0
    assert body["error"] is None and body["completed_at"] is not None


def test_one_image_is_still_a_list(client):
    pid = create(client).json()["id"]
    finish_now(client, pid, SUCCESS, output=["out-0.png"])
    assert client.get(f"/v1/predictions/{pid}", headers=AUTH).json()["output"] == [
        f"http://127.0.0.1:8000/v1/outputs/{pid}/out-0.png"
    ]


def test_get_a_failed_prediction_has_status_failed_and_the_error(client):
    pid = create(client).json()["id"]
    finish_now(client, pid, ERROR, error="worker lost")
    body = client.get(f"/v1/predictions/{pid}", headers=AUTH).json()
    assert (body["status"], body["error"], body["output"]) == ("failed", "worker lost", None)


def test_get_another_keys_prediction_is_404(client):
    pid = create(client).json()["id"]
    response = client.get(f"/v1/predictions/{pid}", headers={"Authorization": f"Bearer {OTHER_KEY}"})
    assert response.status_code == 404
    assert set(response.json()) == {"detail", "status", "title"}


def test_a_prediction_made_on_the_eachlabs_route_reads_on_the_replicate_route(client):
    response = client.post(
        "/v1/prediction", json={"model": "flux-dev", "input": {"prompt": "x"}}, headers=AUTH
    )
    pid = response.json()["predictionID"]
    body = client.get(f"/v1/predictions/{pid}", headers=AUTH).json()
    assert (body["id"], body["status"], body["version"]) == (pid, "starting", FLUX_VERSION)


def test_trailing_slash_is_served_without_redirect(client):
    pid = create(client).json()["id"]
    response = client.get(f"/v1/predictions/{pid}/", headers=AUTH, follow_redirects=False)
    assert response.status_code == 200


# -- cancel ---------------------------------------------------------------------------------


def test_cancel_a_queued_prediction_returns_it_canceled(client):
    pid = create(client).json()["id"]
    response = client.post(f"/v1/predictions/{pid}/cancel", headers=AUTH)
    assert response.status_code == 200
    body = response.json()
    assert (body["id"], body["status"]) == (pid, "canceled")
    assert body["completed_at"] is not None


def test_cancel_a_finished_prediction_returns_it_unchanged(client):
    pid = create(client).json()["id"]
    finish_now(client, pid, SUCCESS, output=["out-0.webp"])
    response = client.post(f"/v1/predictions/{pid}/cancel", headers=AUTH)
    assert response.status_code == 200
    assert response.json()["status"] == "succeeded"


def test_cancel_another_keys_prediction_is_404(client):
    pid = create(client).json()["id"]
    response = client.post(f"/v1/predictions/{pid}/cancel", headers={"Authorization": f"Bearer {OTHER_KEY}"})
    assert response.status_code == 404
    assert store_of(client).get(pid).status == "starting"


# -- list -----------------------------------------------------------------------------------


def test_list_is_newest_first_in_cursor_pages(client, monkeypatch):
    monkeypatch.setattr(replicate_routes, "PAGE_SIZE", 2)
    ids = [create(client, {"input": {"prompt": f"p{i}"}}).json()["id"] for i in range(5)]
    client.post(
        "/v1/prediction",
        json={"model": "flux-dev", "input": {"prompt": "x"}},
        headers={"X-API-Key": OTHER_KEY},
    )

    first = client.get("/v1/predictions", headers=AUTH).json()
    assert [p["id"] for p in first["results"]] == ids[::-1][:2]
    assert first["previous"] is None and first["next"].startswith(
        "http://127.0.0.1:8000/v1/predictions?cursor="
    )
    newer = create(client).json()["id"]  # made between pages: must not shift them
    second = client.get(first["next"], headers=AUTH).json()
    assert [p["id"] for p in second["results"]] == ids[::-1][2:4]
    third = client.get(second["next"], headers=AUTH).json()
    assert [p["id"] for p in third["results"]] == ids[:1]
    assert third["next"] is None
    back = client.get(third["previous"], headers=AUTH).json()
    assert back["results"] == second["results"]
    assert newer in [p["id"] for p in client.get("/v1/predictions", headers=AUTH).json()["results"]]


def test_list_with_a_bad_cursor_is_400(client):
    response = client.get("/v1/predictions?cursor=not-a-cursor", headers=AUTH)
    assert response.status_code == 400
    assert response.json()["title"] == "Bad request"


def test_list_when_empty(client):
    assert client.get("/v1/predictions", headers=AUTH).json() == {
        "next": None,
        "previous": None,
        "results": [],
    }


# -- model, versions, webhook secret ---------------------------------------------------------


def test_get_model_has_a_latest_version_with_the_input_schema(client):
    body = client.get("/v1/models/black-forest-labs/flux-dev", headers=AUTH).json()
    assert (body["owner"], body["name"], body["visibility"]) == ("black-forest-labs", "flux-dev", "public")
    version = body["latest_version"]
    assert version["id"] == FLUX_VERSION
    schemas = version["openapi_schema"]["components"]["schemas"]
    assert schemas["Input"]["required"] == ["prompt"]
    assert schemas["Input"]["properties"]["num_outputs"]["maximum"] == 4
    assert schemas["Output"] == {
        "type": "array",
        "items": {"type": "string", "format": "uri"},
        "title": "Output",
    }


def test_get_a_version_by_id(client):
    body = client.get(f"/v1/models/black-forest-labs/flux-dev/versions/{FLUX_VERSION}", headers=AUTH).json()
    assert body["id"] == FLUX_VERSION and "openapi_schema" in body


def test_webhook_secret_is_a_whsec_key(client):
    response = client.get("/v1/webhooks/default/secret", headers=AUTH)
    assert response.status_code == 200
    key = response.json()["key"]
    assert key.startswith("whsec_") and len(key) > 40
    assert client.get("/v1/webhooks/default/secret", headers=AUTH).json()["key"] == key


def test_webhook_secret_needs_a_key(client):
    assert client.get("/v1/webhooks/default/secret").status_code == 401


@pytest.mark.parametrize(
    "payload", ['{"o": 1e400}', '{"o": 1000000000000000000000000000000}', '{"o": 0, "t": Infinity}']
)
def test_list_with_a_crafted_out_of_range_cursor_is_400(client, payload):
    cursor = base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")
    response = client.get(f"/v1/predictions?cursor={cursor}", headers=AUTH)
    assert response.status_code == 400


def test_a_cursor_time_too_large_for_the_database_is_not_a_500(client):
    for payload in ('{"o": 0, "t": 1000000000000000000000000000000}', '{"o": 0, "t": 1' + "0" * 400 + "}"):
        cursor = base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")
        response = client.get(f"/v1/predictions?cursor={cursor}", headers=AUTH)
        assert response.status_code in (200, 400), response.text


def test_a_non_finite_number_in_an_unknown_input_field_is_refused_and_not_stored(client):
    body = '{"input": {"prompt": "x", "extra_field": NaN}}'
    response = client.post(MODEL_ROUTE, content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code in (400, 422)
    assert "extra_field" in response.text
    assert client.get("/v1/predictions", headers=AUTH).json()["results"] == []
