"""Whether the prediction store is taking writes, as the server's own calls find it.

The store is the truth, so a store that fails (database disk full, file unreadable, locked too
long) is a server-wide fault: /health-check reports it while it lasts. The state changes on
evidence only: any failed store call marks it failing; a write that certainly changed a row
(a create, a claim that took a job, an end recorded) marks it working again. Each change is one
log line, however many calls fail in between.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("fluxserve.store")


def describe(exc: BaseException) -> str:
    """A short reason for a log line or /health-check: SQLite's message, else the type's name."""
    text = str(exc).strip()
    return text or type(exc).__name__


class StoreHealth:
    """Failing or working, with the reason and since when. Used from the event loop's thread."""

    def __init__(self, on_recovered: Callable[[], None] | None = None) -> None:
        self.error: str | None = None
        self.failing_since: float | None = None  # unix seconds
        self._on_recovered = on_recovered

    @property
    def failing(self) -> bool:
        return self.error is not None

    def failed(self, exc: BaseException, *, unexpected: bool = False) -> None:
        """A store call raised. ``unexpected``: not an outage the store knows (a bug, bad data):
        its traceback goes with the state-change line."""
        reason = describe(exc)
        if self.error is None:
            self.failing_since = time.time()
            log.error("store failing: %s", reason, exc_info=exc if unexpected else None)
        self.error = reason  # the latest reason, without another line

    def working(self) -> None:
        """A write went through."""
        if self.error is None:
            return
        lasted = time.time() - (self.failing_since or time.time())
        self.error, self.failing_since = None, None
        log.warning("store recovered (it failed for %.0f s)", lasted)
        if self._on_recovered is not None:
            self._on_recovered()

    def info(self) -> dict[str, Any]:
        """The ``store`` entry of /health-check."""
        if self.error is None:
            return {"status": "ok"}
        since = datetime.fromtimestamp(self.failing_since or time.time(), UTC).isoformat()
        return {"status": "failing", "error": self.error, "failing_since": since}
