"""Rate limits shared through a real Redis (`limits.storage_uri: redis://...`): API replicas draw
on one per-minute budget per key. When Redis is down or hung, requests are let through (fail
open) after one warning, without waiting on it, and the limits apply again once it answers."""

from __future__ import annotations

import logging
import time
import uuid

import pytest

from server.auth import ratelimit
from server.auth.ratelimit import RequestRateLimiter
from tests.services.redis import RedisServer

WARNING_WORDS = "rate limit storage redis failed"


def new_key() -> str:
    return f"key-{uuid.uuid4().hex}"


def test_two_replicas_share_one_budget_per_key(redis_server):
    replica_a = RequestRateLimiter(3, redis_server.url)
    replica_b = RequestRateLimiter(3, redis_server.url)
    key = new_key()
    assert [replica_a.hit(key).allowed, replica_b.hit(key).allowed, replica_a.hit(key).allowed] == [True] * 3
    refused = replica_b.hit(key)
    assert refused.allowed is False
    assert 1 <= refused.retry_after_s <= 60
    assert replica_a.hit(key).allowed is False


def test_remaining_counts_down_across_replicas(redis_server):
    replica_a = RequestRateLimiter(5, redis_server.url)
    replica_b = RequestRateLimiter(5, redis_server.url)
    key = new_key()
    assert [replica_a.hit(key).remaining, replica_b.hit(key).remaining, replica_a.hit(key).remaining] == [
        4,
        3,
        2,
    ]


def test_keys_have_separate_budgets_on_redis(redis_server):
    limiter = RequestRateLimiter(1, redis_server.url)
    first, second = new_key(), new_key()
    assert limiter.hit(first).allowed is True
    assert limiter.hit(first).allowed is False
    assert limiter.hit(second).allowed is True


def test_a_reset_on_one_replica_lifts_the_block_on_all(redis_server):
    replica_a = RequestRateLimiter(1, redis_server.url)
    replica_b = RequestRateLimiter(1, redis_server.url)
    key = new_key()
    replica_a.hit(key)
    assert replica_b.hit(key).allowed is False
    replica_a.reset(key)
    assert replica_b.hit(key).allowed is True


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_while_redis_is_down_requests_pass_after_one_warning(caplog):
    with RedisServer() as redis:
        limiter = RequestRateLimiter(1, redis.url)
        key = new_key()
        limiter.hit(key)
        assert limiter.hit(key).allowed is False
        redis.stop()
        caplog.set_level(logging.WARNING, logger="server.ratelimit")
        decisions = [limiter.hit(key) for _ in range(20)]
    assert all(d.allowed for d in decisions)
    assert decisions[0].limit == 1
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and WARNING_WORDS in warnings[0]


def test_a_hung_redis_holds_a_request_no_longer_than_the_timeout():
    with RedisServer() as redis:
        limiter = RequestRateLimiter(1, redis.url)
        key = new_key()
        limiter.hit(key)
        redis.pause()  # accepts connections, never answers
        started = time.monotonic()
        first = limiter.hit(key)
        first_took = time.monotonic() - started
        started = time.monotonic()
        rest = [limiter.hit(key) for _ in range(50)]
        rest_took = time.monotonic() - started
        redis.resume()
    assert first.allowed and all(d.allowed for d in rest)
    assert first_took < ratelimit.REDIS_TIMEOUT_S * 4 + 1
    assert rest_took < 0.5  # not asked again while it is known to fail


def test_limits_apply_again_once_redis_is_back(caplog, monkeypatch):
    monkeypatch.setattr(ratelimit, "RETRY_STORAGE_AFTER_S", 0.0)
    redis = RedisServer()
    try:
        redis.start()
        limiter = RequestRateLimiter(1, redis.url)
        key = new_key()
        redis.stop()
        caplog.set_level(logging.WARNING, logger="server.ratelimit")
        assert limiter.hit(key).allowed is True
        redis.start()  # same port, empty
        assert limiter.hit(key).allowed is True
        assert limiter.hit(key).allowed is False
    finally:
        redis.close()
    assert any("answers again" in m for m in _warnings(caplog))


@pytest.mark.parametrize("query", ["?socket_timeout=5", ""])
def test_a_timeout_in_the_uri_overrides_the_default(redis_server, query):
    limiter = RequestRateLimiter(1, redis_server.url + query)
    connection = limiter._limiter.storage.storage.connection_pool.connection_kwargs
    assert connection["socket_timeout"] == (5.0 if query else ratelimit.REDIS_TIMEOUT_S)
