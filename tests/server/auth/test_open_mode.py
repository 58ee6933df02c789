"""A server without API keys (open mode): which Host names it serves, which sites may write to it,
and what happens when the first stored key is created while it runs.

Open, it serves only loopback Host names (plus ``server.allowed_hosts`` and ``public_url``'s
host) and refuses POST/PUT/PATCH/DELETE from a foreign ``Origin``: 403 in the contract's error
shape. With keys configured, any Host and Origin is served (the key is the protection) unless
``server.allowed_hosts`` is set. The open servers here talk to TestClient through
``http://127.0.0.1:8000`` (a loopback Host); TestClient's own ``testserver`` is a foreign name.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import time

import pytest

from server.auth import keyring as auth_module
from server.predictions.model import SUCCESS, ListFilter
from tests.server.helpers import FLUXSERVE, running_server
from tests.server.webhooks.test_webhooks import Receiver, signed_with, whsec_key

LOCAL = "http://127.0.0.1:8000"
PROMPT = {"model": "flux-dev", "input": {"prompt": "a lighthouse at dawn"}}
SWITCH_WARNING = "a stored API key now exists"


def open_app(make_server, **overrides):
    """An open server (no key anywhere) whose queue never runs, reached through a loopback Host."""
    return make_server(api_keys=[], start_workers=False, **overrides)


@pytest.fixture
def open_server(make_server):
    with open_app(make_server) as server:
        server.client.base_url = LOCAL
        yield server


@pytest.fixture(scope="module")
def keyed_server(make_server):
    with make_server(start_workers=False) as server:
        yield server


def executions_total(server, headers=None) -> int:
    r = server.client.get("/v1/executions", headers=headers or {})
    assert r.status_code == 200, r.text
    return r.json()["total"]


# -- Host -------------------------------------------------------------------------------------------


def test_open_server_refuses_a_foreign_host_with_403_naming_it(open_server):
    r = open_server.client.get("/v1/executions", headers={"Host": "evil.example"})

    assert r.status_code == 403
    body = r.json()
    assert body["error"] == "Host not allowed" and body["status"] == 403
    assert "'evil.example'" in body["details"] and "server.allowed_hosts" in body["details"]


def test_open_server_creates_nothing_for_a_foreign_host(open_server):
    r = open_server.client.post("/v1/prediction", json=PROMPT, headers={"Host": "evil.example:8000"})

    assert r.status_code == 403
    assert executions_total(open_server) == 0


@pytest.mark.parametrize("host", ["localhost:8000", "127.0.0.1:8000", "[::1]:8000", "127.9.9.9", "localhost"])
def test_open_server_serves_loopback_host_names(open_server, host):
    assert open_server.client.get("/health-check", headers={"Host": host}).status_code == 200
    assert open_server.client.post("/v1/prediction", json=PROMPT, headers={"Host": host}).status_code == 200


def test_allowed_hosts_adds_a_name_to_an_open_server(make_server):
    with open_app(make_server, server={"allowed_hosts": ["flux.lan", "*.example.org"]}) as server:
        client = server.client

        assert client.get("/v1/executions", headers={"Host": "flux.lan:8000"}).status_code == 200
        assert client.get("/v1/executions", headers={"Host": "a.example.org"}).status_code == 200
        assert client.get("/v1/executions", headers={"Host": "evil.example"}).status_code == 403


def test_an_internationalised_allowed_host_is_served_under_the_name_browsers_send(make_server):
    with open_app(make_server, server={"allowed_hosts": ["bücher.example"]}) as server:
        r = server.client.get("/v1/executions", headers={"Host": "xn--bcher-kva.example"})

        assert r.status_code == 200


def test_public_url_host_is_served_by_an_open_server(make_server):
    with open_app(make_server, public_url="https://flux.example.com") as server:
        assert server.client.get("/v1/executions", headers={"Host": "flux.example.com"}).status_code == 200


def test_keyed_server_serves_any_host(keyed_server):
    key = keyed_server.new_key()

    r = keyed_server.client.get("/v1/executions", headers={"Host": "evil.example", "X-API-Key": key})

    assert r.status_code == 200


def test_allowed_hosts_limits_a_keyed_server_too(make_server):
    with make_server(start_workers=False, server={"allowed_hosts": ["flux.lan"]}) as server:
        key = server.new_key()

        assert (
            server.client.get("/v1/executions", headers={"Host": "flux.lan", "X-API-Key": key}).status_code
            == 200
        )
        r = server.client.get("/v1/executions", headers={"Host": "evil.example", "X-API-Key": key})
        assert r.status_code == 403
        assert r.json()["details"] == "Host 'evil.example' is not served: add it to server.allowed_hosts"


# -- Origin -----------------------------------------------------------------------------------------


def test_cross_site_text_plain_post_is_refused_by_an_open_server_and_creates_nothing(open_server):
    import json

    r = open_server.client.post(
        "/v1/prediction",
        content=json.dumps(PROMPT),
        headers={"Content-Type": "text/plain", "Origin": "https://evil.example"},
    )

    assert r.status_code == 403
    body = r.json()
    assert body["error"] == "Cross-site request refused" and body["status"] == 403
    assert "'https://evil.example'" in body["details"]
    assert executions_total(open_server) == 0


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "null",
        "http://localhost:3000",
        "http://127.0.0.1:9000",
        "http://localhost:8000",
    ],
)
def test_open_server_refuses_writes_from_a_foreign_origin(open_server, origin):
    assert (
        open_server.client.post("/v1/prediction", json=PROMPT, headers={"Origin": origin}).status_code == 403
    )


def test_open_server_refuses_a_cross_site_write_that_sends_no_origin(open_server):
    r = open_server.client.post("/v1/prediction", json=PROMPT, headers={"Sec-Fetch-Site": "cross-site"})

    assert r.status_code == 403


def test_open_server_serves_writes_from_its_own_origin_and_without_origin(open_server):
    own = open_server.client.post("/v1/prediction", json=PROMPT, headers={"Origin": LOCAL})
    curl = open_server.client.post("/v1/prediction", json=PROMPT)

    assert (own.status_code, curl.status_code) == (200, 200)
    assert executions_total(open_server) == 2


def test_open_server_serves_writes_from_the_public_url_origin(make_server):
    with open_app(make_server, public_url="https://flux.example.com") as server:
        headers = {"Host": "127.0.0.1:8000", "Origin": "https://flux.example.com"}

        assert server.client.post("/v1/prediction", json=PROMPT, headers=headers).status_code == 200


def test_open_server_refuses_a_write_from_its_host_name_on_another_scheme(open_server):
    # Host: localhost over http is port 80; https://localhost is port 443: another local server
    headers = {"Host": "localhost", "Origin": "https://localhost"}

    r = open_server.client.post("/v1/prediction", json=PROMPT, headers=headers)

    assert r.status_code == 403
    assert r.json()["error"] == "Cross-site request refused"


def test_open_server_serves_writes_from_its_own_https_origin(open_server):
    r = open_server.client.post(
        "https://localhost/v1/prediction", json=PROMPT, headers={"Origin": "https://localhost"}
    )

    assert r.status_code == 200


def test_behind_a_tls_proxy_an_allowed_names_https_origin_is_its_own(make_server):
    # public_url https with no TLS here: TLS ends at a proxy, which may pass the request on as http
    with open_app(
        make_server, public_url="https://flux.example.com", server={"allowed_hosts": ["alt.example.com"]}
    ) as server:
        headers = {"Host": "alt.example.com", "Origin": "https://alt.example.com"}

        assert server.client.post("/v1/prediction", json=PROMPT, headers=headers).status_code == 200


def test_cross_site_post_with_a_key_is_served_by_a_keyed_server(keyed_server):
    key = keyed_server.new_key()

    r = keyed_server.client.post(
        "/v1/prediction", json=PROMPT, headers={"Origin": "https://evil.example", "X-API-Key": key}
    )

    assert r.status_code == 200


# -- metrics.require_key ----------------------------------------------------------------------------


def test_metrics_require_key_refuses_a_request_without_a_valid_key(make_server):
    with make_server(start_workers=False, metrics={"require_key": True}) as server:
        assert server.client.get("/metrics").json() == {"error": "Invalid or missing API key", "status": 401}
        assert server.client.get("/metrics", headers={"X-API-Key": "wrong"}).status_code == 401
        r = server.client.get("/metrics", headers={"X-API-Key": server.new_key()})
        assert r.status_code == 200 and "fluxserve_queue_depth" in r.text


def test_metrics_need_no_key_by_default(keyed_server):
    assert keyed_server.client.get("/metrics").status_code == 200


# -- the first stored key -----------------------------------------------------------------------------


def wait_for_keys_mode(server, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = server.client.get("/health-check").json()
        if body["auth"] == "keys":
            return body
        assert time.monotonic() < deadline, f"the server still says {body['auth']!r}"
        time.sleep(0.1)


def test_health_says_open_while_no_key_exists(open_server):
    body = open_server.client.get("/health-check").json()

    assert body["auth"] == "open"
    assert "auth_changed_at" not in body


def test_health_says_keys_on_a_keyed_server_with_no_change(keyed_server):
    body = keyed_server.client.get("/health-check").json()

    assert body["auth"] == "keys"
    assert "auth_changed_at" not in body


def test_first_stored_key_switches_to_keys_with_one_warning_and_health_shows_when(open_server, caplog):
    assert open_server.client.get("/v1/executions").status_code == 200
    caplog.set_level(logging.WARNING, logger="fluxserve")

    open_server.new_key()
    body = wait_for_keys_mode(open_server)
    time.sleep(1.2)  # past the ring's re-check interval: more requests must not warn again
    for _ in range(3):
        open_server.client.get("/health-check")
        assert open_server.client.get("/v1/executions").status_code == 401

    assert body["auth_changed_at"].endswith("Z")
    warnings = [r for r in caplog.records if SWITCH_WARNING in r.getMessage()]
    assert len(warnings) == 1
    assert "fluxserve keys adopt-open NAME" in warnings[0].getMessage()


def keys_cli(server, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    config = server.settings.data_path / "cli.yaml"
    config.write_text(f"data_dir: {server.settings.data_path}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXSERVE_")} | (env or {})
    return subprocess.run(
        [FLUXSERVE, "keys", "--config", str(config), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_adopt_open_hands_open_mode_predictions_to_the_key(open_server):
    made_open = {
        open_server.client.post("/v1/prediction", json=PROMPT).json()["predictionID"] for _ in range(2)
    }
    key = keys_cli(open_server, "create", "alice").stdout.strip()
    wait_for_keys_mode(open_server)
    assert executions_total(open_server, {"X-API-Key": key}) == 0  # invisible to every key so far

    result = keys_cli(open_server, "adopt-open", "alice")

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "handed 2 prediction(s) made in open mode to key 'alice'"
    listed = open_server.client.get("/v1/executions", headers={"X-API-Key": key}).json()
    assert {p["id"] for p in listed["executions"]} == made_open
    for prediction_id in made_open:
        assert open_server.get(key, prediction_id)["status"] == "starting"


def test_adopt_open_to_an_unknown_key_fails_and_moves_nothing(open_server):
    open_server.client.post("/v1/prediction", json=PROMPT)
    key = keys_cli(open_server, "create", "bob").stdout.strip()

    result = keys_cli(open_server, "adopt-open", "nobody")

    assert result.returncode == 1
    assert "no active key named 'nobody'" in result.stderr
    assert open_server.store.list(ListFilter(owner="anonymous"))[1] == 1  # still owned by no key
    assert executions_total(open_server, {"X-API-Key": key}) == 0


def test_adopt_open_to_a_static_key_by_its_config_name(make_server, tiny_model_dir):
    static = "static-key-after-open-mode"
    with open_app(make_server) as server:
        server.client.base_url = LOCAL
        made_open = {
            server.client.post("/v1/prediction", json=PROMPT).json()["predictionID"] for _ in range(2)
        }
    # The operator stops the open server, gives it a key in the environment, adopts, restarts.

    result = keys_cli(server, "adopt-open", "config-1", env={"FLUXSERVE_API_KEYS": static})

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "handed 2 prediction(s) made in open mode to key 'config-1'"
    with running_server(
        server.settings.data_path, tiny_model_dir, start_workers=False, api_keys=[static]
    ) as keyed:
        listed = keyed.client.get("/v1/executions", headers={"X-API-Key": static}).json()
    assert {p["id"] for p in listed["executions"]} == made_open


def test_adopt_open_to_anonymous_is_refused_and_moves_nothing(open_server):
    open_server.client.post("/v1/prediction", json=PROMPT)
    open_server.new_key()

    result = keys_cli(open_server, "adopt-open", "anonymous")

    assert result.returncode == 2
    assert "error: 'anonymous' owns the predictions made in open mode already: name a key" in result.stderr
    assert result.stdout == ""
    assert open_server.store.list(ListFilter(owner="anonymous"))[1] == 1


@pytest.fixture
def open_server_with_hooks(make_server):
    """An open server that may post webhooks to a receiver on loopback."""
    with open_app(make_server, input_images={"allowed_hosts": ["127.0.0.1"]}) as server:
        server.client.base_url = LOCAL
        yield server


@pytest.mark.parametrize("row", ["recorded", "from an earlier version"])
def test_webhooks_of_adopted_predictions_stay_signed_with_the_open_mode_secret(open_server_with_hooks, row):
    server = open_server_with_hooks
    receiver = Receiver()
    try:
        r = server.client.post(
            "/v1/models/black-forest-labs/flux-dev/predictions",
            json={
                "input": {"prompt": "a lighthouse"},
                "webhook": receiver.url,
                "webhook_events_filter": ["completed"],
            },
        )
        assert r.status_code == 201, r.text
        prediction_id = r.json()["id"]
        open_secret = whsec_key(server.client.get("/v1/webhooks/default/secret").json()["key"])
        if row != "recorded":  # a row made before the signer was recorded: only its owner says it
            with sqlite3.connect(server.settings.db_path) as conn:
                conn.execute("UPDATE predictions SET extra = json_remove(extra, '$.webhook_signer')")
        key = keys_cli(server, "create", "alice").stdout.strip()
        wait_for_keys_mode(server)
        assert keys_cli(server, "adopt-open", "alice").returncode == 0
        # Still running when adopted: it ends now, and its webhook is signed.
        store = server.store
        store.claim_next("test-worker")
        assert store.finish(prediction_id, SUCCESS, output=["out-0.webp"])
        server.state.feed.ended(prediction_id)
        [request] = receiver.wait_for(1)
    finally:
        receiver.close()

    alice_secret = server.client.get("/v1/webhooks/default/secret", headers={"X-API-Key": key}).json()["key"]
    assert signed_with(request, open_secret)
    assert not signed_with(request, whsec_key(alice_secret))


def unreadable_key_store(server, monkeypatch) -> None:
    """The key store's reads fail the way SQLite fails on a bad disk; the ring re-reads on every look."""
    keystore = server.app.state.fluxserve.keyring._keystore

    def unreadable() -> bool:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(keystore, "has_keys", unreadable)
    monkeypatch.setattr(auth_module, "OPEN_RECHECK_S", 0.0)


def test_health_answers_200_with_auth_unknown_while_the_key_store_cannot_be_read(open_server, monkeypatch):
    unreadable_key_store(open_server, monkeypatch)

    r = open_server.client.get("/health-check")

    assert r.status_code == 200
    assert r.json()["auth"] == "unknown"
    assert r.json()["store"]["error"] == "disk I/O error"


def test_a_foreign_host_gets_503_not_500_while_the_key_store_cannot_be_read(open_server, monkeypatch):
    unreadable_key_store(open_server, monkeypatch)

    r = open_server.client.get("/v1/executions", headers={"Host": "evil.example"})

    assert r.status_code == 503
    body = r.json()
    assert body["error"] == "Key store unavailable" and body["status"] == 503
    assert "disk I/O error" in body["details"]
    assert r.headers["Retry-After"]


def test_a_cross_site_write_gets_503_and_creates_nothing_while_the_key_store_cannot_be_read(
    open_server, monkeypatch
):
    unreadable_key_store(open_server, monkeypatch)

    r = open_server.client.post("/v1/prediction", json=PROMPT, headers={"Origin": "https://evil.example"})

    assert r.status_code == 503
    assert open_server.store.counts_by_status()["starting"] == 0


def test_a_stored_key_gets_503_not_500_while_the_key_store_cannot_be_read(make_server, monkeypatch):
    with make_server(start_workers=False) as server:
        key = server.new_key()
        keystore = server.app.state.fluxserve.keyring._keystore

        def unreadable(_key_hash: str):
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(keystore, "lookup", unreadable)
        r = server.client.get("/v1/executions", headers={"X-API-Key": key})
        health = server.client.get("/health-check").json()

    assert r.status_code == 503
    assert r.json()["error"] == "Key store unavailable" and r.json()["status"] == 503
    assert "disk I/O error" in r.json()["details"]
    assert r.headers["Retry-After"]
    assert health["store"]["error"] == "disk I/O error"
