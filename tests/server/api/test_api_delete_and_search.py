"""Deleting a prediction (``DELETE /v1/prediction/{id}``) and searching the key's list by prompt
(``GET /v1/executions?q=``), through HTTP.

Deleting a finished one uses the shared live server (a real run leaves real output files);
the refusals and the search use a server whose workers never start (everything stays queued).
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def server(live_server):
    return live_server


def _delete(server, key: str | None, pid: str):
    return server.client.delete(f"/v1/prediction/{pid}", headers=server.headers(key))


def _prompts(server, key: str, **params) -> tuple[list[str], int]:
    r = server.client.get("/v1/executions", params=params, headers=server.headers(key))
    assert r.status_code == 200, r.text
    body = r.json()
    return [e["input"]["prompt"] for e in body["executions"]], body["total"]


# -- delete -------------------------------------------------------------------------------------


def test_delete_of_a_finished_prediction_removes_it_and_its_images(server):
    key = server.new_key()
    done = server.run(key)
    assert (server.settings.outputs_path / done["id"]).exists()

    r = _delete(server, key, done["id"])

    assert r.status_code == 200, r.text
    assert r.json() == {"status": "deleted", "message": "Prediction deleted", "predictionID": done["id"]}
    assert not (server.settings.outputs_path / done["id"]).exists()
    assert server.client.get(f"/v1/prediction/{done['id']}", headers=server.headers(key)).status_code == 404
    assert _prompts(server, key) == ([], 0)
    assert server.client.get(server.path(done["output"])).status_code == 404


def test_delete_of_a_queued_prediction_is_409_cancel_it_first(queued_server):
    key = queued_server.new_key()
    pid = queued_server.create(key)

    r = _delete(queued_server, key, pid)

    assert r.status_code == 409
    assert r.json()["status"] == 409
    assert "cancel it first" in r.json()["error"]
    assert queued_server.get(key, pid)["status"] == "starting"


def test_delete_after_cancel_removes_it(queued_server):
    key = queued_server.new_key()
    pid = queued_server.create(key)
    queued_server.client.post(f"/v1/prediction/{pid}/cancel", headers=queued_server.headers(key))

    assert _delete(queued_server, key, pid).status_code == 200
    assert queued_server.store.get(pid) is None


def test_delete_of_another_keys_prediction_is_404_and_keeps_it(queued_server):
    owner, other = queued_server.new_key(), queued_server.new_key()
    pid = queued_server.create(owner)
    queued_server.client.post(f"/v1/prediction/{pid}/cancel", headers=queued_server.headers(owner))

    r = _delete(queued_server, other, pid)

    assert r.status_code == 404
    assert queued_server.store.get(pid) is not None


def test_delete_of_an_unknown_prediction_is_404(queued_server):
    key = queued_server.new_key()
    assert _delete(queued_server, key, "00000000-0000-4000-8000-000000000000").status_code == 404


def test_delete_without_a_key_is_401(queued_server):
    assert _delete(queued_server, None, "00000000-0000-4000-8000-000000000000").status_code == 401


# -- search -------------------------------------------------------------------------------------


def test_executions_q_matches_a_substring_of_the_prompt_in_any_case(queued_server):
    key = queued_server.new_key()
    for prompt in ("A Red Fox in the snow", "a blue whale", "red-eyed tree frog", "Ärger im Öl"):
        queued_server.create(key, {"prompt": prompt})

    assert _prompts(queued_server, key, q="RED") == (["red-eyed tree frog", "A Red Fox in the snow"], 2)
    assert _prompts(queued_server, key, q="äRGER") == (["Ärger im Öl"], 1)
    assert _prompts(queued_server, key, q="nothing like it") == ([], 0)
    assert _prompts(queued_server, key, q="")[1] == 4  # empty: no filter


def test_executions_q_pages_through_the_matches_only(queued_server):
    key = queued_server.new_key()
    for i in range(5):
        queued_server.create(key, {"prompt": f"match {i}"})
        queued_server.create(key, {"prompt": f"other {i}"})

    prompts, total = _prompts(queued_server, key, q="match", limit=2, offset=2)

    assert (prompts, total) == (["match 2", "match 1"], 5)


def test_executions_q_treats_like_wildcards_as_text(queued_server):
    key = queued_server.new_key()
    queued_server.create(key, {"prompt": "100% cotton"})
    queued_server.create(key, {"prompt": "a_b"})
    queued_server.create(key, {"prompt": "plain"})

    assert _prompts(queued_server, key, q="%")[0] == ["100% cotton"]
    assert _prompts(queued_server, key, q="_")[0] == ["a_b"]
