"""The wake-up primitives of the background loops: a waiter must wake on its event, time out, and,
above all, stay cancellable when the event fires in the same loop turn as the cancellation (the
race that left the webhook loop running after shutdown with ``asyncio.wait_for`` on Python 3.11).
"""

from __future__ import annotations

import asyncio

from server.events import PredictionEvents, wait_event
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


def test_prediction_events_notify_wakes_every_waiter_and_forgets_them() -> None:
    async def main() -> None:
        events = PredictionEvents()
        waiters = [asyncio.create_task(events.wait("p1", 5)) for _ in range(3)]
        await asyncio.sleep(0)
        assert events.waiting == 3
        events.notify("p1")
        assert await asyncio.gather(*waiters) == [True, True, True]
        assert events.waiting == 0
        assert await events.wait("p2", 0.01) is False
        assert events.waiting == 0

    run_in_own_loop(main())
