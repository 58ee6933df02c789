"""Authentication: keys in headers, static and stored keys, open mode."""

from __future__ import annotations

import hashlib
import logging

import pytest

from server.auth.keyring import ANONYMOUS, Identity, KeyRing, extract_key, key_id_for, parse_static_keys
from server.store.sqlite.keys import SQLiteKeyStore

STATIC = "static-key-0123456789abcdef"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "fluxserve.db"


@pytest.fixture
def store(db_path):
    s = SQLiteKeyStore(db_path)
    yield s
    s.close()


# -- key_id_for -------------------------------------------------------------------------


def test_key_id_is_the_first_32_hex_chars_of_the_sha256():
    assert key_id_for("abc") == hashlib.sha256(b"abc").hexdigest()[:32]


def test_key_id_is_stable_and_differs_between_keys():
    assert key_id_for("a") == key_id_for("a")
    assert key_id_for("a") != key_id_for("b")


# -- extract_key ------------------------------------------------------------------------


def test_extract_key_reads_x_api_key():
    assert extract_key({"X-API-Key": "k1"}) == "k1"


def test_extract_key_reads_a_bearer_token():
    assert extract_key({"Authorization": "Bearer k1"}) == "k1"


def test_extract_key_reads_replicates_token_scheme():
    assert extract_key({"Authorization": "Token k1"}) == "k1"


def test_extract_key_scheme_and_header_names_are_case_insensitive():
    assert extract_key({"authorization": "bEaReR k1"}) == "k1"
    assert extract_key({"x-api-key": "k2"}) == "k2"


def test_extract_key_trims_whitespace():
    assert extract_key({"Authorization": "  Bearer   k1  "}) == "k1"
    assert extract_key({"X-API-Key": " k2 "}) == "k2"


def test_extract_key_refuses_other_schemes():
    assert extract_key({"Authorization": "Basic dXNlcjpwYXNz"}) is None


def test_extract_key_refuses_a_scheme_without_a_key():
    assert extract_key({"Authorization": "Bearer"}) is None
    assert extract_key({"Authorization": "Bearer   "}) is None


def test_extract_key_with_no_headers_is_none():
    assert extract_key({}) is None


def test_extract_key_ignores_an_empty_x_api_key():
    assert extract_key({"X-API-Key": "  "}) is None
    assert extract_key({"X-API-Key": "", "Authorization": "Bearer k1"}) == "k1"


def test_extract_key_prefers_x_api_key_over_authorization():
    assert extract_key({"Authorization": "Basic proxy-creds", "X-API-Key": "k1"}) == "k1"


def test_extract_key_reads_starlette_headers():
    from starlette.datastructures import Headers

    assert extract_key(Headers({"x-api-key": "k1"})) == "k1"


# -- parse_static_keys ------------------------------------------------------------------


def test_static_keys_parse_from_a_comma_or_space_separated_env_value():
    assert parse_static_keys(" a, b  c,,a ") == ["a", "b", "c"]


def test_static_keys_parse_from_nothing_is_empty():
    assert parse_static_keys(None) == []
    assert parse_static_keys("") == []


# -- KeyRing ----------------------------------------------------------------------------


def test_a_static_key_authenticates_with_a_config_name():
    ring = KeyRing(["k-one", "k-two"])
    assert ring.authenticate("k-two") == Identity(key_id_for("k-two"), "config-2")


def test_a_wrong_key_is_refused():
    assert KeyRing([STATIC]).authenticate("not-the-key") is None


def test_a_missing_key_is_refused():
    ring = KeyRing([STATIC])
    assert ring.authenticate(None) is None
    assert ring.authenticate("") is None


def test_an_overlong_key_is_refused():
    assert KeyRing([STATIC]).authenticate("x" * 100_000) is None


def test_a_repeated_static_key_counts_once():
    ring = KeyRing(["k", "k", "other"])
    assert ring.authenticate("other").name == "config-2"


def test_an_empty_static_key_is_a_configuration_error():
    with pytest.raises(ValueError):
        KeyRing(["ok", " "])


def test_a_stored_key_authenticates_with_its_name(store):
    key = store.create("alice")
    assert KeyRing(keystore=store).authenticate(key) == Identity(key_id_for(key), "alice")


def test_static_and_stored_keys_work_side_by_side(store):
    stored = store.create("alice")
    ring = KeyRing([STATIC], store)
    assert ring.authenticate(STATIC).name == "config-1"
    assert ring.authenticate(stored).name == "alice"
    assert ring.authenticate("fsk_wrong") is None


def test_authenticating_a_stored_key_records_its_use(store):
    key = store.create("alice")
    KeyRing(keystore=store).authenticate(key)
    assert store.list()[0].last_used_at is not None


def test_a_revoked_key_is_refused_on_the_next_call_without_restart(db_path):
    api_side = SQLiteKeyStore(db_path)
    cli_side = SQLiteKeyStore(db_path)
    try:
        key = cli_side.create("alice")
        ring = KeyRing(keystore=api_side)
        assert ring.authenticate(key) is not None
        cli_side.revoke("alice")
        assert ring.authenticate(key) is None
    finally:
        api_side.close()
        cli_side.close()


# -- open mode --------------------------------------------------------------------------


def test_with_no_keys_at_all_the_ring_is_open():
    ring = KeyRing()
    assert ring.open is True
    assert ring.authenticate(None) == ANONYMOUS
    assert ring.authenticate("anything") == Identity("anonymous", "anonymous")


def test_an_empty_store_and_no_static_keys_is_open(store):
    assert KeyRing(keystore=store).open is True


def test_a_static_key_closes_the_ring(store):
    assert KeyRing([STATIC], store).open is False


def test_a_stored_key_closes_the_ring(store):
    store.create("alice")
    ring = KeyRing(keystore=store)
    assert ring.open is False
    assert ring.authenticate(None) is None


def test_a_key_created_while_running_closes_an_open_ring_within_a_second(store):
    clock = Clock()
    ring = KeyRing(keystore=store, clock=clock)
    assert ring.open is True
    store.create("alice")
    clock.now += 1.0
    assert ring.open is False
    assert ring.authenticate(None) is None


def test_a_key_just_created_is_its_own_identity_before_the_ring_rechecks(store):
    clock = Clock()
    ring = KeyRing(keystore=store, clock=clock)
    assert ring.open is True
    key = store.create("alice")  # no time passes: the periodic re-read is not due

    assert ring.authenticate(key) == Identity(key_id_for(key), "alice")  # not ANONYMOUS
    assert ring.open is False
    assert ring.authenticate(None) is None


def test_a_key_created_while_running_is_logged_once_and_its_time_kept(store, caplog):
    clock = Clock()
    ring = KeyRing(keystore=store, clock=clock)
    assert ring.open is True and ring.mode_changed_at is None
    store.create("alice")
    with caplog.at_level(logging.WARNING, logger="fluxserve"):
        for _ in range(3):
            clock.now += 1.0
            assert ring.open is False

    warnings = [r for r in caplog.records if "a stored API key now exists" in r.getMessage()]
    assert len(warnings) == 1
    assert ring.mode_changed_at is not None and ring.known_closed


def test_a_ring_that_starts_with_a_stored_key_reports_no_switch(store, caplog):
    store.create("alice")
    with caplog.at_level(logging.WARNING, logger="fluxserve"):
        ring = KeyRing(keystore=store)
        assert ring.open is False

    assert ring.mode_changed_at is None
    assert "a stored API key now exists" not in caplog.text


def test_revoking_every_stored_key_does_not_reopen_the_server(store):
    store.create("alice")
    store.revoke("alice")
    ring = KeyRing(keystore=store)
    assert ring.open is False
    assert ring.authenticate(None) is None


# -- the key never shows ----------------------------------------------------------------


def test_identity_repr_and_str_never_hold_the_key():
    key = "fsk_super-secret-value"
    identity = KeyRing([key]).authenticate(key)
    assert key not in repr(identity)
    assert key not in str(identity)


def test_keyring_repr_and_str_never_hold_the_keys(store):
    stored = store.create("alice")
    ring = KeyRing([STATIC], store)
    ring.authenticate(stored)
    for text in (repr(ring), str(ring)):
        assert STATIC not in text
        assert stored not in text


def test_the_ring_keeps_no_static_key_in_its_attributes():
    ring = KeyRing([STATIC])
    assert STATIC not in repr(vars(ring))


def test_authentication_logs_no_key(store, caplog):
    stored = store.create("alice")
    ring = KeyRing([STATIC], store)
    with caplog.at_level(logging.DEBUG):
        for key in (STATIC, stored, "fsk_wrong-guess"):
            ring.authenticate(key)
    for key in (STATIC, stored, "fsk_wrong-guess"):
        assert key not in caplog.text


def test_static_identity_matches_only_static_keys_without_the_store(tmp_path):
    store = SQLiteKeyStore(tmp_path / "keys.db")
    stored = store.create("alice")
    ring = KeyRing(["static-key"], store)
    assert ring.static_identity("static-key") == Identity(key_id_for("static-key"), "config-1")
    assert ring.static_identity(stored) is None  # a stored key is for authenticate(), not refused here
    assert ring.authenticate(stored) == Identity(key_id_for(stored), "alice")
    assert ring.static_identity("wrong") is None
    assert KeyRing([], store).static_identity("static-key") is None
