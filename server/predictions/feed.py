"""The change feed: who must know that a prediction was created, asked to cancel, changed or ended.

- **created**: a worker host wakes and claims it;
- **cancel requested**: the host running it stops it at its next step;
- **changed** (picked up, new logs) and **ended**: long-poll waiters re-read the row, webhooks
  send their events.

Notifications are hints, never the data: whoever is told re-reads the row (the store is the
truth), and whoever waits keeps a polling backstop, because a notification can be lost (another
process made the change, a listener dropped its connection). So nothing here may assume that the
publisher lives in this process: the in-process feed below serves one server; a feed over the
database (PostgreSQL's LISTEN/NOTIFY) implements the same interface for several hosts.
"""

from __future__ import annotations

import abc
import asyncio
import enum
import inspect
import logging
import threading
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

log = logging.getLogger("fluxserve.feed")


class ChangeKind(enum.StrEnum):
    CREATED = "created"
    CANCEL_REQUESTED = "cancel_requested"
    CHANGED = "changed"
    ENDED = "ended"


@dataclass(frozen=True)
class Change:
    kind: ChangeKind
    prediction_id: str


# A subscriber: a plain function, or a coroutine function (run as a task on the feed's loop).
Subscriber = Callable[[Change], None] | Callable[[Change], Awaitable[None]]


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


class ChangeFeed(abc.ABC):
    """Publish from any thread; subscribers are called on the feed's event loop."""

    @abc.abstractmethod
    def publish(self, change: Change) -> None:
        """Tell every waiter on the prediction and every subscriber to the kind. Never raises."""

    @abc.abstractmethod
    async def wait(self, prediction_id: str, timeout: float) -> bool:
        """Wait until the prediction's next change of any kind or ``timeout`` seconds; True when
        told. A hint only: the caller re-reads the row either way."""

    @abc.abstractmethod
    def subscribe(self, kinds: Iterable[ChangeKind], subscriber: Subscriber) -> Callable[[], None]:
        """Call ``subscriber(change)`` for each change of these kinds; returns the unsubscribe."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Begin delivering (called on the app's loop before anything publishes)."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Stop delivering, once what was delivered has been handled."""

    # -- the four kinds, by name ---------------------------------------------------------------
    def created(self, prediction_id: str) -> None:
        self.publish(Change(ChangeKind.CREATED, prediction_id))

    def cancel_requested(self, prediction_id: str) -> None:
        self.publish(Change(ChangeKind.CANCEL_REQUESTED, prediction_id))

    def changed(self, prediction_id: str) -> None:
        self.publish(Change(ChangeKind.CHANGED, prediction_id))

    def ended(self, prediction_id: str) -> None:
        self.publish(Change(ChangeKind.ENDED, prediction_id))


class InProcessChangeFeed(ChangeFeed):
    """One process's feed: waiters hold no thread and no connection, only an asyncio.Event.

    Changes published from another thread hop onto the feed's loop. Before ``start`` (and after
    ``stop``) there is no loop to hop to: changes are then handled in the publisher's thread,
    and coroutine subscribers are skipped (nothing of theirs runs without the loop).
    """

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._subscribers: list[tuple[frozenset[ChangeKind], Subscriber]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()

    async def stop(self) -> None:
        """Wait for the subscribers' tasks still running (an end's webhook being queued), then
        detach from the loop."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        self._loop = self._loop_thread = None

    def publish(self, change: Change) -> None:
        loop = self._loop
        if loop is None or threading.get_ident() == self._loop_thread:
            self._deliver(change)
            return
        try:
            loop.call_soon_threadsafe(self._deliver, change)
        except RuntimeError:  # the loop closed meanwhile
            self._deliver(change)

    def subscribe(self, kinds: Iterable[ChangeKind], subscriber: Subscriber) -> Callable[[], None]:
        entry = (frozenset(kinds), subscriber)
        self._subscribers.append(entry)

        def unsubscribe() -> None:
            if entry in self._subscribers:
                self._subscribers.remove(entry)

        return unsubscribe

    async def wait(self, prediction_id: str, timeout: float) -> bool:
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
        """How many waits are in progress (all predictions)."""
        return sum(len(v) for v in self._waiters.values())

    def _deliver(self, change: Change) -> None:
        for event in self._waiters.pop(change.prediction_id, ()):
            event.set()
        for kinds, subscriber in list(self._subscribers):
            if change.kind not in kinds:
                continue
            try:
                result = subscriber(change)
                if inspect.isawaitable(result):
                    self._run(result, change)
            except Exception:  # noqa: BLE001 - one subscriber's fault must not stop the others
                log.exception("%s of prediction %s: a subscriber failed", change.kind, change.prediction_id)

    def _run(self, awaitable: Awaitable[None], change: Change) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or loop is not self._loop:
            if inspect.iscoroutine(awaitable):
                awaitable.close()  # no loop to run it on (before start, after stop)
            return
        task = loop.create_task(self._guarded(awaitable, change))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _guarded(awaitable: Awaitable[None], change: Change) -> None:
        try:
            await awaitable
        except Exception:  # noqa: BLE001 - logged, like a plain subscriber's
            log.exception("%s of prediction %s: a subscriber failed", change.kind, change.prediction_id)
