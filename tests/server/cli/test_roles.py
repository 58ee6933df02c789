"""`fluxserve serve --no-workers` and `fluxserve worker`: what they refuse at start, in one line."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.server.helpers import FLUXSERVE, free_port


def fluxserve(tmp_path: Path, *args: str, store_url: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXSERVE_")}
    env.update(FLUXSERVE_DATA_DIR=str(tmp_path / "data"), FLUXSERVE_API_KEYS="key-alpha")
    if store_url:
        env["FLUXSERVE_STORE_URL"] = store_url
    return subprocess.run([FLUXSERVE, *args], env=env, capture_output=True, text=True, timeout=60)


def errors(done: subprocess.CompletedProcess) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.startswith("error:")]


def test_a_worker_host_needs_a_shared_store(tmp_path):
    done = fluxserve(tmp_path, "worker")
    assert done.returncode == 1
    assert errors(done) == [
        "error: a worker host needs a store_url that the API replicas share (postgresql://...); "
        "with SQLite, `fluxserve serve` runs the workers itself"
    ]


def test_an_api_replica_needs_a_shared_store(tmp_path):
    done = fluxserve(tmp_path, "serve", "--no-workers", "--port", str(free_port()))
    assert done.returncode == 1
    [line] = errors(done)
    assert line.startswith("error: --no-workers needs a store that worker hosts share")


def test_a_database_that_cannot_be_reached_is_named_without_its_password(tmp_path):
    port = free_port()  # nothing listens there
    url = f"postgresql://flux:s3cret-pw@127.0.0.1:{port}/fluxserve"
    for args in (["worker"], ["serve", "--no-workers", "--port", str(free_port())]):
        done = fluxserve(tmp_path, *args, store_url=url)
        assert done.returncode == 1, done.stderr
        [line] = errors(done)
        assert line.startswith(
            f"error: cannot reach the database postgresql://flux@127.0.0.1:{port}/fluxserve: "
        )
        assert "s3cret-pw" not in done.stderr + done.stdout


def test_backup_and_db_check_say_they_are_for_sqlite(tmp_path):
    url = "postgresql://flux:pw@127.0.0.1:5432/fluxserve"
    for args in (["backup", str(tmp_path / "copy.db")], ["db", "check"]):
        done = fluxserve(tmp_path, *args, store_url=url)
        assert done.returncode == 1
        assert errors(done) == [
            "error: this command reads a SQLite database file; the store is PostgreSQL "
            "(postgresql://flux@127.0.0.1:5432/fluxserve): use pg_dump to back it up and pg_amcheck "
            "to check it"
        ]
