"""`/v1/executions` (this key's predictions, newest first, paged and filtered) and `/v1/models`.

The list runs on a server without workers: five predictions are created through HTTP, then one is
cancelled through HTTP and two are ended in the store as a worker would (success, error), so
every status filter has something to find. The models routes run on the shared live server,
whose worker serves the tiny model (hence the warning).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

import pytest

from server.api.notices import TINY_MODEL_NOTICE


@dataclass
class History:
    key: str
    ids: list[str]  # oldest first
    created: list[str]  # created_at as the API wrote it (ISO, milliseconds)
    between: list[float]  # unix times between consecutive creates: between[i] is after ids[i]


@pytest.fixture(scope="module")
def server(queued_server):
    return queued_server


@pytest.fixture(scope="module")
def history(server) -> History:
    key = server.new_key()
    ids, between = [], []
    for i in range(5):
        ids.append(server.create(key, {"prompt": f"picture {i}"}))
        time.sleep(0.02)
        between.append(time.time())
        time.sleep(0.02)
    server.client.post(f"/v1/prediction/{ids[1]}/cancel", headers=server.headers(key))
    server.store.finish(ids[2], "success", output=[], predict_time=0.5)
    server.store.finish(ids[3], "error", error="test: it failed")
    created = [server.get(key, pid)["created_at"] for pid in ids]
    return History(key, ids, created, between)


def _list(server, key: str, **params) -> dict:
    r = server.client.get("/v1/executions", params=params, headers=server.headers(key))
    assert r.status_code == 200, r.text
    return r.json()


def _ids(body: dict) -> list[str]:
    return [p["id"] for p in body["executions"]]


# -- listing ------------------------------------------------------------------------------------


def test_lists_this_keys_predictions_newest_first(server, history):
    body = _list(server, history.key)

    assert _ids(body) == history.ids[::-1]
    assert body["total"] == 5
    assert body["limit"] == 20
    assert body["offset"] == 0


def test_each_item_is_a_full_prediction(server, history):
    item = _list(server, history.key)["executions"][-1]

    assert item["id"] == history.ids[0]
    assert item["input"]["prompt"] == "picture 0"
    assert set(item) >= {"status", "output", "logs", "error", "metrics", "created_at", "urls"}


def test_another_key_sees_none_of_them(server, history):
    body = _list(server, server.new_key())

    assert body["executions"] == []
    assert body["total"] == 0


def test_limit_and_offset_page_through(server, history):
    pages = [_list(server, history.key, limit=2, offset=offset) for offset in (0, 2, 4)]

    assert [_ids(p) for p in pages] == [history.ids[4:2:-1], history.ids[2:0:-1], history.ids[0:1]]
    assert all(p["total"] == 5 for p in pages)
    assert pages[1]["limit"] == 2 and pages[1]["offset"] == 2


def test_offset_past_the_end_is_empty(server, history):
    body = _list(server, history.key, offset=50)

    assert body["executions"] == []
    assert body["total"] == 5


@pytest.mark.parametrize(
    ("status", "indexes"),
    [("starting", [4, 0]), ("cancelled", [1]), ("success", [2]), ("error", [3]), ("processing", [])],
)
def test_status_filter(server, history, status, indexes):
    body = _list(server, history.key, status=status)

    assert _ids(body) == [history.ids[i] for i in indexes]
    assert body["total"] == len(indexes)
    assert all(p["status"] == status for p in body["executions"])


def test_model_filter(server, history):
    assert _list(server, history.key, model="flux-dev")["total"] == 5
    assert _list(server, history.key, model="flux-schnell")["total"] == 0


def test_from_and_to_in_unix_seconds(server, history):
    body = _list(server, history.key, **{"from": history.between[0], "to": history.between[3]})

    assert _ids(body) == [history.ids[3], history.ids[2], history.ids[1]]


def test_from_and_to_in_iso_8601(server, history):
    def iso(ts: float) -> str:
        return datetime.fromtimestamp(ts).astimezone().isoformat()  # local offset, to be sure zones count

    body = _list(server, history.key, **{"from": iso(history.between[1]), "to": iso(history.between[2])})

    assert _ids(body) == [history.ids[2]]


def test_created_at_as_from_and_to_includes_that_prediction(server, history):
    stamp = history.created[2]

    body = _list(server, history.key, **{"from": stamp, "to": stamp})

    assert _ids(body) == [history.ids[2]]


def test_date_alone_as_to_covers_that_whole_day(server, history):
    today = history.created[0][:10]

    assert _list(server, history.key, to=today)["total"] == 5


def test_filters_combine(server, history):
    body = _list(server, history.key, status="starting", **{"from": history.between[0]})

    assert _ids(body) == [history.ids[4]]


def test_the_contracts_template_with_every_parameter_blank_lists_with_the_defaults(server, history):
    # Sent as the contract writes the route: /v1/executions?limit=&offset=&model=&status=&from=&to=
    url = "/v1/executions?limit=&offset=&model=&status=&from=&to="
    r = server.client.get(url, headers=server.headers(history.key))

    assert r.status_code == 200, r.text
    body = r.json()
    assert _ids(body) == history.ids[::-1]
    assert (body["limit"], body["offset"]) == (20, 0)


def test_blank_parameters_beside_set_ones_are_ignored(server, history):
    url = "/v1/executions?limit=2&offset=&status=+&model=flux-dev"
    body = server.client.get(url, headers=server.headers(history.key)).json()

    assert _ids(body) == history.ids[::-1][:2]


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"status": "done"}, "status"),
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"offset": -1}, "offset"),
        ({"from": "last tuesday"}, "from"),
        ({"to": "2026-13-45"}, "to"),
        ({"from": "nan"}, "from"),
    ],
)
def test_bad_parameter_is_400_naming_it(server, history, params, named):
    r = server.client.get("/v1/executions", params=params, headers=server.headers(history.key))

    assert r.status_code == 400, r.text
    body = r.json()
    assert body["status"] == 400
    assert named in body["details"]


def test_list_without_key_is_401(server):
    assert server.client.get("/v1/executions").status_code == 401


# -- models -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live_key(live_server) -> str:
    return live_server.new_key()


def test_models_lists_flux_dev_with_its_input_schema(live_server, live_key):
    r = live_server.client.get("/v1/models", headers=live_server.headers(live_key))

    assert r.status_code == 200
    models = r.json()["models"]
    # A flux-dev model also serves its LoRA face, from the same weights (CONTRACT.md section 5).
    assert [m["slug"] for m in models] == ["flux-dev", "black-forest-labs-flux-dev-lora"]
    model = models[0]
    properties = model["input_schema"]["properties"]
    assert {"prompt", "aspect_ratio", "num_outputs", "num_inference_steps", "output_format", "seed"} <= set(
        properties
    )
    assert model["input_schema"]["required"] == ["prompt"]


def test_models_warn_that_the_tiny_model_is_served(live_server, live_key):
    models = live_server.client.get("/v1/models", headers=live_server.headers(live_key)).json()["models"]

    assert models and all(model["warning"] == TINY_MODEL_NOTICE for model in models)


def test_model_by_slug_includes_schema_and_warning(live_server, live_key):
    r = live_server.client.get(
        "/v1/model", params={"slug": "flux-dev"}, headers=live_server.headers(live_key)
    )

    assert r.status_code == 200
    body = r.json()
    assert body["slug"] == "flux-dev"
    assert body["input_schema"]["properties"]["aspect_ratio"]["default"] == "1:1"
    assert body["warning"] == TINY_MODEL_NOTICE


def test_unknown_model_slug_is_404(live_server, live_key):
    r = live_server.client.get("/v1/model", params={"slug": "sdxl"}, headers=live_server.headers(live_key))

    assert r.status_code == 404
    body = r.json()
    assert body["status"] == 404
    assert "slug" in body["details"]


def test_model_without_slug_is_400_naming_slug(live_server, live_key):
    r = live_server.client.get("/v1/model", headers=live_server.headers(live_key))

    assert r.status_code == 400
    assert "slug" in r.json()["details"]


def test_models_need_a_key(live_server):
    assert live_server.client.get("/v1/models").status_code == 401
