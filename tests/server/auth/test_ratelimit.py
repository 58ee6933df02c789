"""RequestRateLimiter: requests per minute per key, on the limits library."""

from __future__ import annotations

import threading
import time

import pytest
from limits.errors import StorageError

from server.auth.ratelimit import InlinePruningMemoryStorage, RateDecision, RequestRateLimiter


def test_sixty_per_minute_allows_sixty_then_refuses():
    limiter = RequestRateLimiter(60)
    decisions = [limiter.hit("key-a") for _ in range(61)]
    assert all(d.allowed for d in decisions[:60])
    refused = decisions[60]
    assert refused.allowed is False
    assert 1 <= refused.retry_after_s <= 60
    assert refused.remaining == 0 and refused.limit == 60


def test_remaining_counts_down():
    limiter = RequestRateLimiter(3)
    assert [limiter.hit("k").remaining for _ in range(3)] == [2, 1, 0]


def test_an_allowed_request_has_no_retry_after():
    decision = RequestRateLimiter(5).hit("k")
    assert decision == RateDecision(allowed=True, retry_after_s=0, remaining=4, limit=5)


def test_separate_keys_are_independent():
    limiter = RequestRateLimiter(2)
    limiter.hit("key-a")
    limiter.hit("key-a")
    assert limiter.hit("key-a").allowed is False
    assert limiter.hit("key-b").allowed is True


def test_separate_limiters_on_memory_do_not_share_counts():
    a, b = RequestRateLimiter(1), RequestRateLimiter(1)
    assert a.hit("k").allowed is True
    assert b.hit("k").allowed is True


def test_a_refused_key_passes_again_once_the_window_moves(monkeypatch):
    limiter = RequestRateLimiter(2)
    limiter.hit("k")
    limiter.hit("k")
    refused = limiter.hit("k")
    assert refused.allowed is False
    later = time.time() + refused.retry_after_s + 1
    monkeypatch.setattr(time, "time", lambda: later)
    assert limiter.hit("k").allowed is True


@pytest.mark.parametrize("per_minute", [0, -1])
def test_zero_or_less_is_unlimited(per_minute):
    limiter = RequestRateLimiter(per_minute)
    assert limiter.unlimited
    assert all(limiter.hit("k").allowed for _ in range(1000))
    assert limiter.hit("k").limit == 0


def test_reset_forgets_a_key():
    limiter = RequestRateLimiter(1)
    limiter.hit("k")
    assert limiter.hit("k").allowed is False
    limiter.reset("k")
    assert limiter.hit("k").allowed is True


def test_a_failing_storage_lets_requests_through():
    limiter = RequestRateLimiter(1)

    class Broken:
        def hit(self, *args, **kwargs):
            raise StorageError(ConnectionError("redis down"))

    limiter._limiter = Broken()
    assert limiter.hit("k").allowed is True


def test_repr_hides_the_storage_uri_credentials():
    limiter = RequestRateLimiter(0, "redis://:s3cret@redis.internal:6379/0")
    assert "s3cret" not in repr(limiter)
    assert "redis" in repr(limiter)


def test_the_in_process_storage_starts_no_thread_per_request(monkeypatch):
    limiter = RequestRateLimiter(10_000)
    assert isinstance(limiter._limiter.storage, InlinePruningMemoryStorage), (
        "limits changed its memory storage's internals: the stock one (a timer thread per hit) is in use"
    )
    started: list[object] = []
    real_start = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", lambda self: (started.append(self), real_start(self)))
    for i in range(300):
        assert limiter.hit(f"key-{i % 3}").allowed
        time.sleep(0.0001 if i % 50 else 0.02)  # let a 10 ms timer have run now and then
    assert started == []


def test_the_in_process_storage_still_prunes_expired_entries(monkeypatch):
    limiter = RequestRateLimiter(5)
    storage = limiter._limiter.storage
    for key in ("a", "b"):
        limiter.hit(key)
    assert len(storage.events) == 2
    later = time.time() + 61
    monkeypatch.setattr(time, "time", lambda: later)
    monkeypatch.setattr(time, "monotonic", lambda: later)  # past the next prune
    assert limiter.hit("c").allowed
    left = {key.split("/")[1]: len(entries) for key, entries in storage.events.items()}
    assert left == {"a": 0, "b": 0, "c": 1}  # limits keeps the emptied lists
