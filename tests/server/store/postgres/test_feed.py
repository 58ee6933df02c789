"""The change feed over PostgreSQL: what one process does to a prediction reaches every other
process sharing the database (created, cancel requested, ended), never per step, and a listener
whose connection is cut reconnects by itself."""

from __future__ import annotations

import asyncio
import logging
import time

import psycopg

from server.predictions.feed import Change, ChangeKind
from server.predictions.model import SUCCESS, Prediction
from server.store import open_backend
from server.store.postgres.feed import CHANNEL
from tests.server.helpers import run_in_own_loop


def pred(pid: str, owner: str = "key-a") -> Prediction:
    return Prediction(id=pid, owner=owner, model="flux-dev", input={"prompt": pid})


async def _heard_until(heard: list[Change], wanted: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while len(heard) < wanted and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


def test_another_process_hears_created_cancel_and_ended_but_not_progress(postgres_server):
    url = postgres_server.new_database()
    here, there = open_backend(url), open_backend(url)  # two processes' backends on one database

    async def main() -> tuple[list[Change], list[Change]]:
        heard_there: list[Change] = []
        heard_here: list[Change] = []
        there.feed.subscribe(list(ChangeKind), heard_there.append)
        here.feed.subscribe(list(ChangeKind), heard_here.append)
        await there.feed.start()
        await here.feed.start()
        try:
            assert there.feed.listening.wait(5) and here.feed.listening.wait(5)
            here.predictions.create(pred("p1"))
            job = here.predictions.claim_next("host-a:1:w0.0")
            here.predictions.append_logs("p1", "1/4 steps\n", lease=job.lease)  # progress: no notification
            assert here.predictions.request_cancel("p1").name == "REQUESTED"
            assert here.predictions.finish("p1", SUCCESS, output=["out-0.webp"], lease=job.lease)
            await _heard_until(heard_there, 3)
            await asyncio.sleep(0.2)  # anything more (or anything heard here) would arrive by now
        finally:
            await here.feed.stop()
            await there.feed.stop()
        return heard_there, heard_here

    try:
        heard_there, heard_here = run_in_own_loop(main())
    finally:
        here.close()
        there.close()
    assert heard_there == [
        Change(ChangeKind.CREATED, "p1"),
        Change(ChangeKind.CANCEL_REQUESTED, "p1"),
        Change(ChangeKind.ENDED, "p1"),
    ]
    assert heard_here == []  # a process does not hear its own notifications back


def test_a_waiter_in_another_process_wakes_when_the_prediction_ends(postgres_server):
    url = postgres_server.new_database()
    worker_host, api = open_backend(url), open_backend(url)
    worker_host.predictions.create(pred("p1"))
    job = worker_host.predictions.claim_next("host-a:1:w0.0")

    async def main() -> tuple[bool, float]:
        await api.feed.start()
        try:
            assert api.feed.listening.wait(5)
            loop = asyncio.get_running_loop()
            loop.call_later(0.2, worker_host.predictions.finish, "p1", SUCCESS)
            started = time.monotonic()
            woke = await api.feed.wait("p1", 5.0)
            return woke, time.monotonic() - started
        finally:
            await api.feed.stop()

    try:
        woke, waited = run_in_own_loop(main())
    finally:
        worker_host.close()
        api.close()
    assert job is not None
    assert woke and waited < 2.0


def test_a_listener_whose_connection_is_cut_reconnects_and_hears_again(postgres_server, caplog):
    url = postgres_server.new_database()
    listener, writer = open_backend(url), open_backend(url)
    heard: list[Change] = []
    listener.feed.subscribe([ChangeKind.CREATED], heard.append)

    async def main() -> None:
        await listener.feed.start()
        try:
            assert listener.feed.listening.wait(5)
            with psycopg.connect(url, autocommit=True) as admin:
                cut = admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE query ILIKE %s AND pid <> pg_backend_pid()",
                    (f"LISTEN {CHANNEL}%",),
                ).fetchall()
            assert cut, "the listening connection was not found"
            deadline = time.monotonic() + 10
            while not (listener.feed.listening.is_set() and _reconnected(caplog)):
                assert time.monotonic() < deadline, "the listener did not reconnect"
                await asyncio.sleep(0.05)
            writer.predictions.create(pred("after"))
            await _heard_until(heard, 1)
        finally:
            await listener.feed.stop()

    with caplog.at_level(logging.WARNING, logger="fluxserve.feed"):
        try:
            run_in_own_loop(main(), timeout=60)
        finally:
            listener.close()
            writer.close()
    assert heard == [Change(ChangeKind.CREATED, "after")]
    lines = [r.getMessage() for r in caplog.records if r.name == "fluxserve.feed"]
    assert len([m for m in lines if "lost the listening connection" in m]) == 1
    assert len([m for m in lines if "listening again" in m]) == 1
    assert all("password" not in m for m in lines)


def _reconnected(caplog) -> bool:
    return any("listening again" in r.getMessage() for r in caplog.records)
