"""The LISTEN/NOTIFY change feed between two processes' backends on one database: a change made
by one is told to the other, and a listener whose connection drops listens again by itself."""

from __future__ import annotations

import asyncio
import time

import psycopg

from server.predictions.feed import Change, ChangeKind
from server.predictions.model import Prediction
from server.store import open_backend
from tests.server.helpers import run_in_own_loop


def _created_elsewhere_is_heard(url: str, *, drop_listener_first: bool) -> list[Change]:
    """Backend B creates a prediction; what backend A's feed hears (after its listening
    connection was killed, when asked)."""

    async def scenario() -> list[Change]:
        here, there = open_backend(url), open_backend(url)
        heard: list[Change] = []
        here.feed.subscribe([ChangeKind.CREATED], heard.append)
        await here.feed.start()
        try:
            assert await asyncio.to_thread(here.feed.listening.wait, 10)
            if drop_listener_first:
                with psycopg.connect(url, autocommit=True) as admin:
                    killed = admin.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE query LIKE 'LISTEN%%' AND datname = current_database() "
                        "AND pid <> pg_backend_pid()"
                    ).fetchall()
                assert killed == [(True,)]
                deadline = time.monotonic() + 10
                while here.feed.listening.is_set() and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                assert not here.feed.listening.is_set(), "the listener never saw its connection drop"
                assert await asyncio.to_thread(here.feed.listening.wait, 10)  # listening again
            await asyncio.to_thread(
                there.predictions.create, Prediction(id="p1", owner="o", model="m", input={})
            )
            deadline = time.monotonic() + 5
            while not heard and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return heard
        finally:
            await here.feed.stop()
            here.close()
            there.close()

    return run_in_own_loop(scenario())


def test_a_create_in_another_process_is_heard(postgres_server):
    heard = _created_elsewhere_is_heard(postgres_server.new_database(), drop_listener_first=False)
    assert heard == [Change(ChangeKind.CREATED, "p1")]


def test_a_listener_whose_connection_drops_listens_again_by_itself(postgres_server):
    heard = _created_elsewhere_is_heard(postgres_server.new_database(), drop_listener_first=True)
    assert heard == [Change(ChangeKind.CREATED, "p1")]
