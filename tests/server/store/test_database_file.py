"""The database file of a real `fluxserve serve`: what a clean stop leaves in it, backups, a
store that lost predictions, a damaged file, and `fluxserve db check`.

A clean stop folds the WAL into the database file, so the file alone holds every row (a lost
or damaged ``-wal`` loses nothing; a copy of the file is complete). `fluxserve backup` copies
a running server's database through SQLite's backup API into a file a server starts on. A
store that has no record of predictions whose images are in the outputs folder is reported at
start. A damaged database stops `serve` with one line naming the file and what to do.

The servers run no worker (``workers.count: 0``): the predictions stay queued, which is all
these tests need.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.server.helpers import FLUXSERVE, KEY_A, LiveServer, free_port

pytestmark = pytest.mark.slow

NO_WORKER = {"count": 0}


def fluxserve(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """Run the CLI as an operator would, its stdout and stderr together."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLUXSERVE_")}
    return subprocess.run(
        [FLUXSERVE, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**clean, "HF_HUB_OFFLINE": "1", **(env or {})},
        timeout=timeout,
    )


def serve_once(srv: LiveServer) -> subprocess.CompletedProcess:
    """`fluxserve serve` on ``srv``'s config, expected to stop by itself."""
    return fluxserve(
        "serve", "--config", str(srv.config_path), "--port", str(free_port()), env=srv.env_overrides
    )


def queued_server(data_dir: Path, tiny_model_dir: Path, **kwargs) -> LiveServer:
    return LiveServer(data_dir, tiny_model_dir, workers=NO_WORKER, **kwargs)


def fill_with_predictions(db_path: Path, count: int) -> list[str]:
    """A database with ``count`` queued predictions, written by the store itself, checkpointed."""
    from server.predictions.model import Prediction
    from server.store import SQLitePredictionStore

    store = SQLitePredictionStore(db_path)
    ids = [str(uuid.uuid4()) for _ in range(count)]
    for pid in ids:
        store.create(Prediction(id=pid, owner="o", model="flux-dev", input={"prompt": "x" * 2000}))
    store.close()
    with contextlib.closing(sqlite3.connect(db_path)) as conn:  # the rows into the file itself
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return ids


# -- a clean stop --------------------------------------------------------------------------------


def test_after_a_clean_stop_the_database_file_holds_every_row_and_losing_the_wal_loses_nothing(
    tmp_path, tiny_model_dir
):
    with queued_server(tmp_path / "data", tiny_model_dir) as srv:
        srv.start(wait="STARTING")
        ids = [srv.create(KEY_A) for _ in range(6)]
        assert srv.stop() == 0

        wal = srv.db_path.with_name("fluxserve.db-wal")
        assert not wal.exists() or wal.stat().st_size == 0
        for leftover in ("fluxserve.db-wal", "fluxserve.db-shm"):
            srv.db_path.with_name(leftover).unlink(missing_ok=True)

        srv.start(wait="STARTING")
        assert [srv.get(KEY_A, pid)["status"] for pid in ids] == ["starting"] * 6


# -- backup --------------------------------------------------------------------------------------


def test_backup_of_a_running_server_holds_every_prediction_and_a_server_starts_on_it(
    tmp_path, tiny_model_dir
):
    with queued_server(tmp_path / "data", tiny_model_dir) as srv:
        srv.start(wait="STARTING")
        ids = [srv.create(KEY_A) for _ in range(5)]
        backup = tmp_path / "backups" / "fluxserve-backup.db"

        result = fluxserve("backup", str(backup), "--config", str(srv.config_path))

        assert result.returncode == 0, result.stdout
        assert "(5 predictions)" in result.stdout
    assert not backup.with_name(backup.name + "-wal").exists()  # one self-contained file

    restored = tmp_path / "restored"
    restored.mkdir()
    shutil.copy(backup, restored / "fluxserve.db")
    with queued_server(restored, tiny_model_dir) as again:
        again.start(wait="STARTING")
        assert [again.get(KEY_A, pid)["status"] for pid in ids] == ["starting"] * 5


def test_backup_refuses_to_overwrite_a_file(tmp_path, tiny_model_dir):
    srv = queued_server(tmp_path / "data", tiny_model_dir)
    fill_with_predictions(srv.db_path, 1)
    existing = tmp_path / "old.db"
    existing.write_bytes(b"keep me")

    result = fluxserve("backup", str(existing), "--config", str(srv.config_path))

    assert result.returncode == 1
    assert result.stdout.strip() == f"error: {existing} exists already: choose a new file name"
    assert existing.read_bytes() == b"keep me"


# -- a store that lost predictions ---------------------------------------------------------------


def test_a_store_without_the_predictions_the_outputs_folder_holds_is_reported_at_start(
    tmp_path, tiny_model_dir
):
    srv = queued_server(tmp_path / "data", tiny_model_dir)
    known = fill_with_predictions(srv.db_path, 2)
    lost = str(uuid.uuid4())
    for pid in [*known, lost]:
        (srv.data_dir / "outputs" / pid).mkdir(parents=True)
        (srv.data_dir / "outputs" / pid / "out-0.webp").write_bytes(b"RIFF")

    with srv:
        health = srv.start(wait="STARTING")

        assert "has no record of 1 of the 3 predictions" in health["store_warning"]
        assert lost in health["store_warning"]
        assert "restore the latest backup" in health["store_warning"]
        assert "has no record of 1 of the 3 predictions" in srv.log_text()


def test_a_store_that_knows_every_output_has_no_warning(tmp_path, tiny_model_dir):
    srv = queued_server(tmp_path / "data", tiny_model_dir)
    for pid in fill_with_predictions(srv.db_path, 2):
        (srv.data_dir / "outputs" / pid).mkdir(parents=True)

    with srv:
        assert "store_warning" not in srv.start(wait="STARTING")


def started_app(settings, store=None):
    from fastapi.testclient import TestClient

    from server.app import create_app

    return TestClient(create_app(settings, store=store, start_workers=False))


@pytest.mark.parametrize(
    "failure",
    [PermissionError(13, "Permission denied"), sqlite3.OperationalError("database is locked")],
    ids=["unreadable outputs folder", "busy store"],
)
def test_a_start_whose_outputs_check_fails_goes_on_with_a_warning(tmp_path, monkeypatch, caplog, failure):
    from server.config import Settings
    from server.store import SQLitePredictionStore

    settings = Settings(data_dir=str(tmp_path / "data"))
    store = SQLitePredictionStore(settings.db_path)
    (settings.outputs_path / str(uuid.uuid4())).mkdir(parents=True)

    def fail(*_args):
        raise failure

    if isinstance(failure, OSError):
        monkeypatch.setattr(os, "scandir", fail)  # the output storage lists its folder
    else:
        monkeypatch.setattr(store, "unknown_ids", fail)

    with caplog.at_level(logging.WARNING), started_app(settings, store) as client:
        health = client.get("/health-check").json()

    assert "store_warning" not in health
    assert f"could not compare the outputs folder {settings.outputs_path}" in caplog.text
    assert str(failure) in caplog.text


# -- keys an earlier version kept in the data folder's database ----------------------------------


def keys_of_an_earlier_version(data_dir: Path) -> str:
    """A key made with `keys create` by a version that kept stored keys in the data folder's
    database even when store_url named another file."""
    from server.store.sqlite.keys import SQLiteKeyStore

    data_dir.mkdir(parents=True, exist_ok=True)
    keys = SQLiteKeyStore(data_dir / "fluxserve.db")
    key = keys.create("alice")
    keys.close()
    return key


def test_stored_keys_an_earlier_version_kept_in_the_data_folder_still_guard_a_server_with_a_store_url(
    tmp_path, tiny_model_dir
):
    key = keys_of_an_earlier_version(tmp_path / "data")
    store = tmp_path / "fast" / "preds.db"

    with queued_server(tmp_path / "data", tiny_model_dir, api_keys=[], store_url=str(store)) as srv:
        srv.start(wait="STARTING")

        assert srv.http.get("/v1/executions").status_code == 401  # not open
        assert srv.http.get("/v1/executions", headers={"X-API-Key": key}).status_code == 200
        assert f"carried 1 stored API key(s) over from {srv.db_path} into {store}" in srv.log_text()
        assert "is open" not in srv.log_text()


def test_serve_stops_with_one_line_when_the_keys_an_earlier_version_kept_cannot_be_read(
    tmp_path, tiny_model_dir
):
    srv = queued_server(tmp_path / "data", tiny_model_dir, api_keys=[], store_url=str(tmp_path / "preds.db"))
    not_a_database(srv.db_path)

    result = serve_once(srv)

    assert result.returncode == 1
    assert result.stdout.count("\n") == 1, result.stdout
    assert result.stdout.startswith(
        f"error: cannot carry the stored API keys and webhooks that earlier versions kept in {srv.db_path}"
    )


# -- a damaged database --------------------------------------------------------------------------


def not_a_database(path: Path) -> None:
    path.write_bytes(os.urandom(16384))


def malformed(path: Path) -> None:
    """A real database with pages in the middle overwritten (a bad disk, a torn copy)."""
    fill_with_predictions(path, 200)
    with open(path, "r+b") as fh:
        fh.seek(4096 * 10)
        fh.write(b"\xa5" * 4096 * 4)


@pytest.mark.parametrize("damage", [not_a_database, malformed], ids=["not a database", "malformed"])
def test_serve_on_a_damaged_database_exits_1_with_one_line_naming_the_file_and_what_to_do(
    tmp_path, tiny_model_dir, damage
):
    srv = queued_server(tmp_path / "data", tiny_model_dir)
    damage(srv.db_path)

    result = serve_once(srv)

    assert result.returncode == 1
    assert result.stdout.count("\n") == 1, result.stdout
    assert result.stdout.startswith(f"error: the database {srv.db_path} is damaged (")
    assert "restore a backup" in result.stdout and "fluxserve db check" in result.stdout


def test_db_check_reports_a_sound_database_and_what_it_holds(tmp_path, tiny_model_dir):
    srv = queued_server(tmp_path / "data", tiny_model_dir)
    fill_with_predictions(srv.db_path, 3)

    result = fluxserve("db", "--config", str(srv.config_path), "check")

    assert result.returncode == 0, result.stdout
    assert "integrity: ok" in result.stdout
    assert "predictions: 3 (starting 3)" in result.stdout


@pytest.mark.parametrize("damage", [not_a_database, malformed], ids=["not a database", "malformed"])
def test_db_check_on_a_damaged_database_exits_1_saying_so(tmp_path, tiny_model_dir, damage):
    srv = queued_server(tmp_path / "data", tiny_model_dir)
    damage(srv.db_path)

    result = fluxserve("db", "--config", str(srv.config_path), "check")

    assert result.returncode == 1
    assert "integrity: FAILED" in result.stdout
    assert "Traceback" not in result.stdout


def test_db_check_without_a_database_exits_1_naming_the_path(tmp_path, tiny_model_dir):
    srv = queued_server(tmp_path / "data", tiny_model_dir)

    result = fluxserve("db", "--config", str(srv.config_path), "check")

    assert result.returncode == 1
    assert f"error: there is no database at {srv.db_path}" in result.stdout
    assert not srv.db_path.exists()
