"""Per-key limits: creates per minute, predictions in flight, reads per minute.

Past a limit: 429 ``{"status": 429, "error": "too many requests", "details": ...}`` with a
Retry-After header, and a refused create makes no prediction. The servers here start no worker,
so every accepted prediction stays in flight (queued) for the whole module.
"""

from __future__ import annotations

import pytest

from server.predictions.model import ListFilter


@pytest.fixture(scope="module")
def rate_server(make_server):
    """3 creates per minute per key, no in-flight limit."""
    with make_server(start_workers=False, limits={"requests_per_minute": 3, "max_in_flight": 0}) as server:
        yield server


@pytest.fixture(scope="module")
def in_flight_server(make_server):
    """2 predictions in flight per key, no rate limit."""
    with make_server(start_workers=False, limits={"requests_per_minute": 0, "max_in_flight": 2}) as server:
        yield server


@pytest.fixture(scope="module")
def read_server(make_server):
    """5 reads (polls, lists) per minute per key."""
    with make_server(start_workers=False, limits={"reads_per_minute": 5}) as server:
        yield server


def _rows(server, key: str) -> int:
    return server.store.list(ListFilter(owner=server.owner_of(key), limit=100))[1]


def _assert_429(r) -> dict:
    assert r.status_code == 429, r.text
    body = r.json()
    assert body["status"] == 429
    assert body["error"] == "too many requests"
    assert isinstance(body["details"], str) and body["details"]
    retry_after = int(r.headers["retry-after"])
    assert 1 <= retry_after <= 60
    return body


# -- creates per minute -------------------------------------------------------------------------


def test_fourth_create_in_a_minute_is_429_with_retry_after(rate_server):
    key = rate_server.new_key()
    for _ in range(3):
        rate_server.create(key)

    body = _assert_429(rate_server.post_create(key))

    assert "3" in body["details"]


def test_create_refused_by_the_rate_limit_makes_no_prediction(rate_server):
    key = rate_server.new_key()
    for _ in range(3):
        rate_server.create(key)

    rate_server.post_create(key)
    rate_server.post_create(key)

    assert _rows(rate_server, key) == 3
    listed = rate_server.client.get("/v1/executions", headers=rate_server.headers(key)).json()
    assert listed["total"] == 3


def test_rate_limit_is_per_key(rate_server):
    first, second = rate_server.new_key(), rate_server.new_key()
    for _ in range(3):
        rate_server.create(first)
    _assert_429(rate_server.post_create(first))

    r = rate_server.post_create(second)

    assert r.status_code == 200, r.text


def test_invalid_creates_do_not_use_up_the_rate_limit(rate_server):
    key = rate_server.new_key()
    for _ in range(5):
        bad = rate_server.post_create(key, {"num_outputs": 99})
        assert bad.status_code == 400

    assert rate_server.post_create(key).status_code == 200


def test_polls_are_not_counted_as_creates(rate_server):
    key = rate_server.new_key()
    pid = rate_server.create(key)
    for _ in range(5):
        assert (
            rate_server.client.get(f"/v1/prediction/{pid}", headers=rate_server.headers(key)).status_code
            == 200
        )

    assert rate_server.post_create(key).status_code == 200


# -- predictions in flight ----------------------------------------------------------------------


def test_third_create_with_two_in_flight_is_429_with_retry_after(in_flight_server):
    key = in_flight_server.new_key()
    in_flight_server.create(key)
    in_flight_server.create(key)

    body = _assert_429(in_flight_server.post_create(key))

    assert "2" in body["details"]


def test_create_refused_by_the_in_flight_limit_makes_no_prediction(in_flight_server):
    key = in_flight_server.new_key()
    in_flight_server.create(key)
    in_flight_server.create(key)

    in_flight_server.post_create(key)

    assert _rows(in_flight_server, key) == 2
    assert in_flight_server.store.in_flight(in_flight_server.owner_of(key)) == 2


def test_in_flight_limit_is_per_key(in_flight_server):
    first, second = in_flight_server.new_key(), in_flight_server.new_key()
    in_flight_server.create(first)
    in_flight_server.create(first)
    _assert_429(in_flight_server.post_create(first))

    assert in_flight_server.post_create(second).status_code == 200


def test_cancelling_frees_an_in_flight_slot(in_flight_server):
    key = in_flight_server.new_key()
    first = in_flight_server.create(key)
    in_flight_server.create(key)
    _assert_429(in_flight_server.post_create(key))

    in_flight_server.client.post(f"/v1/prediction/{first}/cancel", headers=in_flight_server.headers(key))

    assert in_flight_server.post_create(key).status_code == 200


def test_finished_predictions_do_not_count_in_flight(in_flight_server):
    key = in_flight_server.new_key()
    first = in_flight_server.create(key)
    in_flight_server.create(key)
    in_flight_server.store.finish(first, "error", error="test: ended")  # what a worker would record

    assert in_flight_server.post_create(key).status_code == 200


def test_run_route_obeys_the_in_flight_limit(in_flight_server):
    key = in_flight_server.new_key()
    in_flight_server.create(key)
    in_flight_server.create(key)

    r = in_flight_server.client.post(
        "/v1/prediction/run",
        json={"model": "flux-dev", "input": {"prompt": "x"}},
        headers=in_flight_server.headers(key),
    )

    _assert_429(r)
    assert _rows(in_flight_server, key) == 2


def test_a_create_refused_for_the_in_flight_limit_still_counts_against_the_minute(make_server):
    # As the README says: the request was made; only refusals of the per-minute limit are free.
    with make_server(start_workers=False, limits={"requests_per_minute": 3, "max_in_flight": 1}) as server:
        key = server.new_key()
        server.create(key)
        for _ in range(2):
            assert "in flight" in _assert_429(server.post_create(key))["details"]
        assert "per minute" in _assert_429(server.post_create(key))["details"]
        assert _rows(server, key) == 1


# -- reads per minute ---------------------------------------------------------------------------


def test_reads_past_the_read_limit_are_429(read_server):
    key = read_server.new_key()
    for _ in range(5):
        assert read_server.client.get("/v1/executions", headers=read_server.headers(key)).status_code == 200

    _assert_429(read_server.client.get("/v1/executions", headers=read_server.headers(key)))


def test_read_limit_is_per_key(read_server):
    first, second = read_server.new_key(), read_server.new_key()
    for _ in range(5):
        read_server.client.get("/v1/executions", headers=read_server.headers(first))
    _assert_429(read_server.client.get("/v1/executions", headers=read_server.headers(first)))

    assert read_server.client.get("/v1/executions", headers=read_server.headers(second)).status_code == 200
