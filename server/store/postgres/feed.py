"""The change feed over PostgreSQL: LISTEN/NOTIFY carries created, cancel-requested and ended to
every API replica and worker host.

The store sends the notification inside the transaction that makes the change
(``pg_notify`` is delivered at commit, and never for a rolled-back change), only for those three
kinds, never per step. Each process listens on one dedicated connection (session mode: a pooled
connection cannot hold a LISTEN) in a thread, and hands what it hears to the in-process feed, so
waiters and subscribers see a change made on another host as if it were made here. A process
skips its own notifications: it already told itself when it published.

Notifications are hints. A listener that loses its connection (PostgreSQL restarting) logs it
once, reconnects with a growing pause, and logs when it listens again; what was missed meanwhile is
found by the pollers' backstop (dispatch, cancel checks and long polls re-read the store).
"""

from __future__ import annotations

import logging
import threading
import uuid

import psycopg

from server.predictions.feed import Change, ChangeKind, InProcessChangeFeed
from server.store.postgres.db import redact

log = logging.getLogger("fluxserve.feed")

CHANNEL = "fluxserve_predictions"
# The kinds worth a notification: a worker must wake, a running job must stop, a waiter must
# answer. Progress ("changed") stays in the process that made it; other replicas poll for it.
NOTIFIED_KINDS = (ChangeKind.CREATED, ChangeKind.CANCEL_REQUESTED, ChangeKind.ENDED)
RECONNECT_FIRST_S, RECONNECT_MAX_S = 0.25, 5.0


def new_origin() -> str:
    """A token naming this process in its notifications."""
    return uuid.uuid4().hex[:12]


def payload(kind: ChangeKind, prediction_id: str, origin: str) -> str:
    return f"{kind.value}:{prediction_id}:{origin}"


def parse_payload(text: str) -> tuple[Change, str] | None:
    kind, _, rest = text.partition(":")
    prediction_id, _, origin = rest.rpartition(":")
    try:
        return Change(ChangeKind(kind), prediction_id), origin
    except ValueError:
        return None


class PostgresChangeFeed(InProcessChangeFeed):
    def __init__(self, url: str, origin: str) -> None:
        super().__init__()
        self.url = url
        self.origin = origin
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection | None = None
        self.listening = threading.Event()  # set while a LISTEN connection is up

    async def start(self) -> None:
        await super().start()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._listen_loop, name="fluxserve-listen", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stopping.set()
        conn = self._conn
        if conn is not None:
            try:
                conn.cancel_safe()  # wake the thread out of its wait
            except Exception:  # noqa: BLE001 - the thread checks the flag at least once a second
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        await super().stop()

    def _listen_loop(self) -> None:
        pause = RECONNECT_FIRST_S
        failing = False
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
                    self._conn = conn
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    if failing:
                        log.warning("change feed: listening again on %s", redact(self.url))
                        failing = False
                    pause = RECONNECT_FIRST_S
                    while not self._stopping.is_set():
                        for notify in conn.notifies(timeout=1.0):
                            self._heard(notify.payload)
            except psycopg.Error as exc:
                self.listening.clear()
                if self._stopping.is_set():
                    break
                if not failing:
                    log.warning(
                        "change feed: lost the listening connection to %s (%s); reconnecting, "
                        "polling meanwhile",
                        redact(self.url),
                        str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                    )
                    failing = True
                self._stopping.wait(pause)
                pause = min(RECONNECT_MAX_S, pause * 2)
            finally:
                self._conn = None
                self.listening.clear()

    def _heard(self, text: str) -> None:
        parsed = parse_payload(text)
        if parsed is None:
            return
        change, origin = parsed
        if origin != self.origin:
            self.publish(change)
