"""The change feed and the wake-up primitive of the background loops.

A waiter must wake on its event, time out, and, above all, stay cancellable when the event fires
in the same loop turn as the cancellation (the race that left the webhook loop running after
shutdown with ``asyncio.wait_for`` on Python 3.11). The feed wakes every waiter on a prediction
and calls the subscribers of each kind, on its loop, whichever thread published.
"""

from __future__ import annotations

import asyncio
import threading

from server.predictions.feed import Change, ChangeKind, InProcessChangeFeed, wait_event
from tests.server.helpers import run_in_own_loop


def test_wait_event_wakes_when_set_and_times_out_otherwise() -> None:
    async def main() -> tuple[bool, bool]:
        event = asyncio.Event()
        asyncio.get_running_loop().call_later(0.01, event.set)
        woke = await wait_event(event, 5)
        timed_out = await wait_event(asyncio.Event(), 0.01)
        return woke, timed_out

    assert run_in_own_loop(main()) == (True, False)


def _loop_until_cancelled(event: asyncio.Event, turns: list[int]):
    async def loop() -> None:
        while True:  # like a background loop: only a cancellation ends it
            turns.append(1)
            await wait_event(event, 10)
            event.clear()

    return loop


def test_a_cancellation_arriving_with_the_event_is_not_lost() -> None:
    async def main() -> None:
        event = asyncio.Event()
        turns: list[int] = []
        task = asyncio.create_task(_loop_until_cancelled(event, turns)())
        await asyncio.sleep(0)  # the loop is now waiting on the event
        event.set()  # the event's waiter completes in the next turn...
        task.cancel()  # ...and the cancellation lands in that same turn
        done, _ = await asyncio.wait([task], timeout=2)
        assert done, "the cancelled loop kept running"
        assert task.cancelled()

    run_in_own_loop(main())


def test_a_change_wakes_every_waiter_on_that_prediction_and_forgets_them() -> None:
    async def main() -> None:
        feed = InProcessChangeFeed()
        await feed.start()
        waiters = [asyncio.create_task(feed.wait("p1", 5)) for _ in range(3)]
        await asyncio.sleep(0)
        assert feed.waiting == 3
        feed.changed("p1")
        assert await asyncio.gather(*waiters) == [True, True, True]
        assert feed.waiting == 0
        assert await feed.wait("p2", 0.01) is False
        assert feed.waiting == 0

    run_in_own_loop(main())


def test_a_change_published_from_another_thread_wakes_the_waiter() -> None:
    async def main() -> bool:
        feed = InProcessChangeFeed()
        await feed.start()
        waiter = asyncio.create_task(feed.wait("p1", 5))
        await asyncio.sleep(0)
        threading.Thread(target=feed.ended, args=("p1",)).start()
        return await waiter

    assert run_in_own_loop(main()) is True


def test_subscribers_get_the_kinds_they_asked_for_on_the_feeds_loop() -> None:
    async def main() -> tuple[list[Change], list[Change], bool]:
        feed = InProcessChangeFeed()
        await feed.start()
        loop = asyncio.get_running_loop()
        plain: list[Change] = []
        awaited: list[Change] = []
        on_loop: list[bool] = []

        def wake(change: Change) -> None:
            on_loop.append(asyncio.get_running_loop() is loop)
            plain.append(change)

        async def ended(change: Change) -> None:
            await asyncio.sleep(0)
            awaited.append(change)

        feed.subscribe([ChangeKind.CREATED], wake)
        feed.subscribe([ChangeKind.ENDED], ended)
        publisher = threading.Thread(
            target=lambda: (feed.created("p1"), feed.changed("p1"), feed.ended("p1"))
        )
        publisher.start()
        await asyncio.to_thread(publisher.join)
        await asyncio.sleep(0.05)
        await feed.stop()  # waits for the coroutine subscribers
        return plain, awaited, all(on_loop)

    plain, awaited, on_loop = run_in_own_loop(main())
    assert plain == [Change(ChangeKind.CREATED, "p1")]
    assert awaited == [Change(ChangeKind.ENDED, "p1")]
    assert on_loop


def test_a_failing_subscriber_neither_raises_to_the_publisher_nor_stops_the_others() -> None:
    async def main() -> list[str]:
        feed = InProcessChangeFeed()
        await feed.start()
        seen: list[str] = []

        def broken(change: Change) -> None:
            raise RuntimeError("boom")

        feed.subscribe([ChangeKind.CANCEL_REQUESTED], broken)
        feed.subscribe([ChangeKind.CANCEL_REQUESTED], lambda change: seen.append(change.prediction_id))
        feed.cancel_requested("p1")
        unsubscribe = feed.subscribe([ChangeKind.CANCEL_REQUESTED], lambda change: seen.append("again"))
        unsubscribe()
        feed.cancel_requested("p2")
        return seen

    assert run_in_own_loop(main()) == ["p1", "p2"]
