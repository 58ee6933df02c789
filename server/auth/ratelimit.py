"""Requests per minute, per API key, on the ``limits`` library.

``memory://`` (the default) counts in this process; a ``redis://`` URI shares the counts
between several API hosts (the ``redis`` package must then be installed). The strategy is a
moving window where the storage supports it (memory, Redis, MongoDB), else a sliding window
counter, else a fixed window.

If the storage fails (Redis down or not answering), requests are let through (fail open): a
broken limiter must not take the API down with it, and the in-flight limit (predictions
starting or processing), which the store enforces, still bounds what one key can run. One
warning is logged when it starts failing and one line when it works again. Calls to Redis time
out after ``REDIS_TIMEOUT_S`` (a ``socket_timeout`` in the URI's query overrides it), and after a
failure the storage is left alone for ``RETRY_STORAGE_AFTER_S``: the limiter runs on the event
loop, and a Redis that accepts connections but never answers would otherwise hold every request.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from limits import RateLimitItemPerMinute
from limits.errors import StorageError
from limits.storage import (
    MemoryStorage,
    MovingWindowSupport,
    SlidingWindowCounterSupport,
    Storage,
    storage_from_string,
)
from limits.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)

log = logging.getLogger("server.ratelimit")  # the name it had before the move: log filters keep working

WINDOW_S = 60
NAMESPACE = "fluxserve-requests"
REDIS_TIMEOUT_S = 0.5  # Redis answers in a millisecond; slower than this, it is as good as down
RETRY_STORAGE_AFTER_S = 5.0  # after a storage failure, requests pass unchecked this long


class InlinePruningMemoryStorage(MemoryStorage):
    """``limits``' in-process storage, pruning expired entries on the calling thread.

    The stock storage starts a new ``threading.Timer`` on almost every hit (whenever its last 10 ms
    timer has run), and ``Thread.start()`` waits for the new thread to be scheduled: an OS thread
    per request, on the event loop, which is what stretches the latency tail on a busy CPU.
    Counting does not depend on that pruning (every check compares timestamps itself); it only
    frees memory, so here it runs inline at most once a second.
    """

    # No STORAGE_SCHEME: ``memory://`` stays registered to the stock class.
    PRUNE_EVERY_S = 1.0

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options: str) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self.timer.cancel()  # the one timer the stock constructor starts
        self._next_prune = time.monotonic() + self.PRUNE_EVERY_S

    def _MemoryStorage__schedule_expiry(self) -> None:  # noqa: N802 - overrides the private hook
        now = time.monotonic()
        if now >= self._next_prune:
            self._next_prune = now + self.PRUNE_EVERY_S
            self._MemoryStorage__expire_events()


def _storage(storage_uri: str) -> Storage:
    scheme = urlsplit(storage_uri).scheme
    if scheme == "memory" and hasattr(MemoryStorage, "_MemoryStorage__schedule_expiry"):
        return InlinePruningMemoryStorage(storage_uri, wrap_exceptions=True)
    if scheme.startswith(("redis", "valkey")):
        # Options given in the URI's query win over these (redis-py reads the URL last).
        timeouts = {"socket_timeout": REDIS_TIMEOUT_S, "socket_connect_timeout": REDIS_TIMEOUT_S}
        return storage_from_string(storage_uri, wrap_exceptions=True, **timeouts)
    return storage_from_string(storage_uri, wrap_exceptions=True)


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    retry_after_s: int  # 0 when allowed; else seconds until a request would pass, 1 to 60
    remaining: int  # requests left in the window after this one
    limit: int  # requests per minute; 0 means unlimited


class RequestRateLimiter:
    def __init__(self, per_minute: int, storage_uri: str = "memory://"):
        self.per_minute = max(0, int(per_minute))
        self._scheme = urlsplit(storage_uri).scheme or storage_uri
        self._limiter: RateLimiter | None = None
        if self.per_minute == 0:
            return
        storage = _storage(storage_uri)
        if isinstance(storage, MovingWindowSupport):
            self._limiter = MovingWindowRateLimiter(storage)
        elif isinstance(storage, SlidingWindowCounterSupport):
            self._limiter = SlidingWindowCounterRateLimiter(storage)
        else:
            self._limiter = FixedWindowRateLimiter(storage)
        self._item = RateLimitItemPerMinute(self.per_minute, namespace=NAMESPACE)
        self._storage_failing = False
        self._retry_storage_at = 0.0  # time.monotonic(); while failing, not asked again before this

    def __repr__(self) -> str:
        # Only the scheme: a storage URI may carry a password.
        return f"RequestRateLimiter(per_minute={self.per_minute}, storage={self._scheme!r})"

    @property
    def unlimited(self) -> bool:
        return self._limiter is None

    def hit(self, key_id: str) -> RateDecision:
        """Count one request for ``key_id`` and say whether it may go on."""
        if self._limiter is None:
            return RateDecision(allowed=True, retry_after_s=0, remaining=0, limit=0)
        let_through = RateDecision(
            allowed=True, retry_after_s=0, remaining=self.per_minute, limit=self.per_minute
        )
        if self._storage_failing and time.monotonic() < self._retry_storage_at:
            return let_through
        try:
            allowed = self._limiter.hit(self._item, key_id)
            stats = self._limiter.get_window_stats(self._item, key_id)
        except StorageError as exc:
            if not self._storage_failing:
                log.warning(
                    "rate limit storage %s failed, requests let through unlimited until it answers: %s",
                    self._scheme,
                    exc,
                )
            self._storage_failing = True
            self._retry_storage_at = time.monotonic() + RETRY_STORAGE_AFTER_S
            return let_through
        if self._storage_failing:
            self._storage_failing = False
            log.warning("rate limit storage %s answers again, limits apply", self._scheme)
        remaining = max(0, int(stats.remaining))
        if allowed:
            return RateDecision(allowed=True, retry_after_s=0, remaining=remaining, limit=self.per_minute)
        retry_after = min(WINDOW_S, max(1, math.ceil(stats.reset_time - time.time())))
        return RateDecision(allowed=False, retry_after_s=retry_after, remaining=0, limit=self.per_minute)

    def reset(self, key_id: str) -> None:
        """Forget ``key_id``'s count (tests, an operator lifting a block)."""
        if self._limiter is not None:
            self._limiter.clear(self._item, key_id)
