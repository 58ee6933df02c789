"""The PostgreSQL harness: a throwaway cluster that takes psycopg 3 connections and restarts."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from tests.services.base import ServiceUnavailable
from tests.services.postgres import PostgresServer


def test_the_cluster_accepts_a_psycopg_connection(postgres_server):
    with psycopg.connect(postgres_server.dsn) as conn:
        assert conn.execute("SELECT current_setting('server_version_num')::int").fetchone()[0] >= 150000


def test_a_new_database_is_empty_and_writable(postgres_server):
    with psycopg.connect(postgres_server.new_database()) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)
        conn.execute("CREATE TABLE t (x int)")


def test_data_survives_a_fast_restart_and_old_connections_are_closed(postgres_server):
    dsn = postgres_server.new_database()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (x int)")
        conn.execute("INSERT INTO kept VALUES (42)")
    survivor = psycopg.connect(dsn, autocommit=True)
    postgres_server.restart(mode="fast")
    with pytest.raises(psycopg.OperationalError):
        survivor.execute("SELECT 1")
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT x FROM kept").fetchall() == [(42,)]


def test_a_missing_installation_says_what_to_install(tmp_path: Path):
    with pytest.raises(ServiceUnavailable, match="apt-get install -y postgresql"):
        PostgresServer(bin_dir=tmp_path).start()
