"""In-process notifications that a prediction changed, for run-and-wait and long-polling.

Waiters hold no thread and no database connection: they await an asyncio.Event that the
supervisor sets when the prediction's row changes. Waiters still re-read the store after
waking (the store is the truth) and re-check on a short fallback interval, so a change made
by another process (several API hosts) is seen too.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` is set or ``timeout`` seconds pass; True when set.

    Not ``asyncio.wait_for``: on Python 3.11 it swallows a cancellation that arrives in the same
    loop turn as the event, so a loop cancelled at shutdown could go on forever.
    ``asyncio.timeout`` lets the cancellation through.
    """
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
        return True
    except TimeoutError:
        return False


class PredictionEvents:
    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)

    def notify(self, prediction_id: str) -> None:
        """Wake everyone waiting on this prediction. Call from the event loop's thread."""
        for event in self._waiters.pop(prediction_id, ()):
            event.set()

    async def wait(self, prediction_id: str, timeout: float) -> bool:
        """Wait until notified or ``timeout`` seconds pass; True when notified."""
        event = asyncio.Event()
        self._waiters[prediction_id].add(event)
        try:
            return await wait_event(event, timeout)
        finally:
            waiters = self._waiters.get(prediction_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    self._waiters.pop(prediction_id, None)

    @property
    def waiting(self) -> int:
        return sum(len(v) for v in self._waiters.values())
