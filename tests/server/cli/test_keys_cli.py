"""`fluxserve keys create|list|revoke` against the database of a running `fluxserve serve`.

The CLI and the server are separate processes sharing the SQLite file, as on a real host: a
key created on the command line works on the next request, a revoked one gets 401 on the next
request, without a restart. The key is printed once and only its hash is stored. Static keys
(here from ``FLUXSERVE_API_KEYS``) keep working beside stored ones.

The servers run no worker (``workers.count: 0``): only authentication is exercised.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import time

import pytest

from tests.server.helpers import FLUXSERVE, LiveServer

pytestmark = pytest.mark.slow

ENV_KEY = "env-static-key-5c1d"
NO_WORKER = {"count": 0}


def keys_cli(srv: LiveServer, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXSERVE_")} | (env or {})
    return subprocess.run(
        [FLUXSERVE, "keys", "--config", str(srv.config_path), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def status(srv: LiveServer, key: str | None) -> int:
    return srv.http.get("/v1/executions", headers={"X-API-Key": key} if key else {}).status_code


@pytest.fixture(scope="module")
def srv(tmp_path_factory, tiny_model_dir):
    with LiveServer(
        tmp_path_factory.mktemp("keys") / "data",
        tiny_model_dir,
        api_keys=[],
        env={"FLUXSERVE_API_KEYS": ENV_KEY},
        workers=NO_WORKER,
    ) as srv:
        srv.start(wait="STARTING")
        yield srv


@pytest.fixture(scope="module")
def created(srv) -> tuple[str, subprocess.CompletedProcess]:
    result = keys_cli(srv, "create", "ci-runner")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip(), result


def test_create_prints_the_key_once_on_stdout(created):
    key, result = created

    assert re.fullmatch(r"fsk_[A-Za-z0-9_-]{43}", key)
    assert result.stdout == key + "\n"
    assert key not in result.stderr
    assert "store it now, it is not shown again" in result.stderr


def test_only_the_hash_of_a_created_key_is_in_the_database(srv, created):
    key, _ = created
    files = [p for p in srv.data_dir.glob("fluxserve.db*")]
    content = b"".join(p.read_bytes() for p in files)

    assert any(p.name == "fluxserve.db" for p in files)
    assert key.encode() not in content
    assert hashlib.sha256(key.encode()).hexdigest().encode() in content


def test_a_created_key_works_on_the_running_server_beside_the_env_key(srv, created):
    key, _ = created

    assert status(srv, key) == 200
    assert status(srv, ENV_KEY) == 200
    assert status(srv, "fsk_not-a-key") == 401
    assert status(srv, None) == 401


def test_list_shows_name_creation_and_last_use(srv, created):
    key, _ = created
    assert status(srv, key) == 200  # used at least once

    result = keys_cli(srv, "list")

    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["NAME", "CREATED", "LAST", "USED", "STATE"]
    row = next(r for r in rows if r.startswith("ci-runner "))
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert row.count(today) == 2  # created and last used, both today (UTC)
    assert row.rstrip().endswith("active")
    assert key not in result.stdout


def test_list_shows_a_never_used_key_with_no_last_use(srv):
    assert keys_cli(srv, "create", "unused").returncode == 0

    row = next(r for r in keys_cli(srv, "list").stdout.splitlines() if r.startswith("unused "))

    assert re.search(r"UTC\s+-\s+active$", row), row


def test_revoke_gives_401_on_the_next_request_without_restart(srv):
    key = keys_cli(srv, "create", "to-revoke").stdout.strip()
    other = keys_cli(srv, "create", "stays").stdout.strip()
    assert status(srv, key) == 200
    pid_before = srv.pid

    result = keys_cli(srv, "revoke", "to-revoke")

    assert result.returncode == 0 and "revoked key 'to-revoke'" in result.stdout
    r = srv.http.get("/v1/executions", headers={"X-API-Key": key})
    assert r.status_code == 401
    assert r.json() == {"error": "Invalid or missing API key", "status": 401}
    assert status(srv, other) == 200  # other stored keys and the env key are untouched
    assert status(srv, ENV_KEY) == 200
    assert srv.pid == pid_before and srv.proc.poll() is None
    listed = next(r for r in keys_cli(srv, "list").stdout.splitlines() if r.startswith("to-revoke "))
    assert "revoked" in listed


def test_revoking_an_unknown_name_fails_with_a_message(srv):
    result = keys_cli(srv, "revoke", "nobody")

    assert result.returncode == 1
    assert "no active key named 'nobody'" in result.stderr


def test_revoking_a_static_key_by_its_config_name_says_it_is_not_stored(srv):
    result = keys_cli(srv, "revoke", "config-1", env={"FLUXSERVE_API_KEYS": ENV_KEY})

    assert result.returncode == 1
    assert "'config-1' is not a stored key: only those can be revoked" in result.stderr
    assert status(srv, ENV_KEY) == 200


def test_creating_a_duplicate_active_name_fails_and_prints_no_key(srv):
    assert keys_cli(srv, "create", "twice").returncode == 0

    result = keys_cli(srv, "create", "twice")

    assert result.returncode == 2
    assert result.stdout == ""
    assert "already exists" in result.stderr


def webhook_secret(srv: LiveServer, key: str) -> str:
    response = srv.http.get("/v1/webhooks/default/secret", headers={"X-API-Key": key})
    assert response.status_code == 200, response.text
    return response.json()["key"]


def test_rotate_webhook_secret_prints_the_new_secret_the_running_server_now_gives_that_key(srv):
    key = keys_cli(srv, "create", "hooks").stdout.strip()
    old, others = webhook_secret(srv, key), webhook_secret(srv, ENV_KEY)

    result = keys_cli(srv, "rotate-webhook-secret", "hooks")

    assert result.returncode == 0, result.stderr
    new = result.stdout.strip()
    assert re.fullmatch(r"whsec_[A-Za-z0-9+/]{43}=", new) and new != old
    assert webhook_secret(srv, key) == new
    assert webhook_secret(srv, ENV_KEY) == others


def test_rotate_webhook_secret_of_a_static_key_by_its_config_name(srv):
    old = webhook_secret(srv, ENV_KEY)

    result = keys_cli(srv, "rotate-webhook-secret", "config-1", env={"FLUXSERVE_API_KEYS": ENV_KEY})

    assert result.returncode == 0, result.stderr
    assert webhook_secret(srv, ENV_KEY) == result.stdout.strip() != old


def test_rotate_webhook_secret_of_an_unknown_name_fails_with_a_message(srv):
    result = keys_cli(srv, "rotate-webhook-secret", "nobody")

    assert result.returncode == 1
    assert result.stdout == ""
    assert "no active key named 'nobody'" in result.stderr


def test_first_created_key_closes_an_open_server_within_seconds(tmp_path, tiny_model_dir):
    with LiveServer(tmp_path / "data", tiny_model_dir, api_keys=[], workers=NO_WORKER) as open_srv:
        open_srv.start(wait="STARTING")
        assert status(open_srv, None) == 200  # no key anywhere: open (bound to loopback)

        key = keys_cli(open_srv, "create", "first").stdout.strip()

        deadline = time.monotonic() + 10
        while status(open_srv, None) != 401:
            assert time.monotonic() < deadline, "the server stayed open after a key was created"
            time.sleep(0.1)
        assert status(open_srv, key) == 200
        assert "no API key is configured" in open_srv.log_text()


def test_create_before_any_server_ran_makes_the_folder_store_url_names(tmp_path):
    from server.store.keys import hash_key
    from server.store.sqlite.keys import SQLiteKeyStore

    store = tmp_path / "new" / "folder" / "preds.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXSERVE_")}
    env |= {"FLUXSERVE_DATA_DIR": str(tmp_path / "data"), "FLUXSERVE_STORE_URL": str(store)}

    result = subprocess.run(
        [FLUXSERVE, "keys", "create", "alice"], capture_output=True, text=True, env=env, timeout=60
    )

    assert result.returncode == 0, result.stderr
    keys = SQLiteKeyStore(store)
    try:
        info = keys.lookup(hash_key(result.stdout.strip()))
    finally:
        keys.close()
    assert info is not None and info.name == "alice"
