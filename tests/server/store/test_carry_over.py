"""Stored keys, webhook signing secrets and webhook deliveries that earlier versions kept in
``<data_dir>/fluxserve.db`` while ``store_url`` named another file are carried into the store's
file once, so an upgraded server keeps its keys (and does not start open). The server side of it,
a real `fluxserve serve`, is in test_database_file.py."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from server.store.carryover import carry_over
from server.store.keys import hash_key
from server.store.sqlite.db import DatabaseUnusable
from server.store.sqlite.deliveries import SQLiteDeliveryStore
from server.store.sqlite.keys import SQLiteKeyStore


@pytest.fixture
def old(tmp_path: Path) -> Path:
    """The data folder's database, where earlier versions kept keys and webhooks."""
    return tmp_path / "data" / "fluxserve.db"


def earlier_version_rows(path: Path) -> tuple[str, str, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = SQLiteKeyStore(path)
    key = keys.create("alice")
    key_id = keys.list()[0].key_id
    keys.close()
    deliveries = SQLiteDeliveryStore(path)
    secret = deliveries.signing_secret(key_id)
    delivery = deliveries.enqueue(
        "pred-1", "completed", "replicate", "https://hooks.example/x", {"id": "pred-1"}
    )
    deliveries.close()
    assert delivery is not None
    return key, secret, delivery


def test_keys_secrets_and_deliveries_are_carried_into_the_stores_file(old, tmp_path):
    key, secret, delivery = earlier_version_rows(old)
    new = tmp_path / "fast" / "preds.db"
    new.parent.mkdir()

    carried = carry_over(old, new)

    assert carried is not None and carried.copied == {
        "api_keys": 1,
        "webhook_signing_keys": 1,
        "webhook_deliveries": 1,
    }
    message = carried.message()
    assert message is not None
    assert message.startswith(
        "carried 1 stored API key(s), 1 webhook signing secret(s), 1 webhook deliveries over from "
        f"{old} into {new}"
    )
    keys, deliveries = SQLiteKeyStore(new), SQLiteDeliveryStore(new)
    try:
        identity = keys.lookup(hash_key(key))
        assert identity is not None and identity.name == "alice"
        assert deliveries.signing_secret(identity.key_id) == secret
        copied = deliveries.get(delivery)
        assert copied is not None and (copied.state, copied.url) == ("pending", "https://hooks.example/x")
    finally:
        keys.close()
        deliveries.close()


def test_a_file_is_carried_over_once_even_after_its_deliveries_were_sent_and_pruned(old, tmp_path):
    earlier_version_rows(old)
    new = tmp_path / "preds.db"
    assert carry_over(old, new) is not None
    with contextlib.closing(sqlite3.connect(new)) as conn, conn:
        conn.execute("DELETE FROM webhook_deliveries")

    assert carry_over(old, new) is None

    with contextlib.closing(sqlite3.connect(new)) as conn:
        assert conn.execute("SELECT count(*) FROM webhook_deliveries").fetchone()[0] == 0


def test_a_stored_key_whose_name_is_taken_in_the_stores_file_is_not_copied_and_is_named(old, tmp_path):
    old_key, _, _ = earlier_version_rows(old)
    new = tmp_path / "preds.db"
    keys = SQLiteKeyStore(new)
    new_key = keys.create("alice")
    keys.close()

    carried = carry_over(old, new)

    assert carried is not None and carried.skipped_keys == ["alice"]
    assert "not the stored key(s) 'alice'" in (carried.message() or "")
    keys = SQLiteKeyStore(new)
    try:
        assert keys.lookup(hash_key(new_key)) is not None
        assert keys.lookup(hash_key(old_key)) is None
    finally:
        keys.close()


def test_nothing_is_carried_when_the_store_is_the_data_folders_file_or_there_is_none(old, tmp_path):
    earlier_version_rows(old)

    assert carry_over(old, old) is None
    assert carry_over(tmp_path / "nothing.db", tmp_path / "preds.db") is None
    assert not (tmp_path / "preds.db").exists()


def test_an_unreadable_old_file_stops_with_one_line_naming_it_and_what_to_do(old, tmp_path):
    old.parent.mkdir(parents=True)
    old.write_bytes(b"not a database" * 1000)

    with pytest.raises(DatabaseUnusable) as caught:
        carry_over(old, tmp_path / "preds.db")

    assert str(caught.value).startswith(
        f"cannot carry the stored API keys and webhooks that earlier versions kept in {old}"
    )
    assert "move it away to start without them" in str(caught.value)
    assert "\n" not in str(caught.value)
