"""Per-key rate limits (GCRA), in Redis and in process memory: bursts, then a steady rate."""

from __future__ import annotations

import pytest

from core.ratelimit import MemoryRateLimiter, RateLimiter, RedisRateLimiter


@pytest.fixture(params=["redis", "memory"])
def limiter(request: pytest.FixtureRequest, redis_url: str) -> RateLimiter:
    # One request per 100 s, a burst of 3: no test runs long enough to earn a new one.
    if request.param == "redis":
        return RedisRateLimiter(redis_url, rate_per_s=0.01, burst=3)
    return MemoryRateLimiter(rate_per_s=0.01, burst=3)


def test_a_burst_passes_then_the_key_waits(limiter: RateLimiter) -> None:
    assert [limiter.acquire("key_a") for _ in range(3)] == [0, 0, 0]
    wait_s = limiter.acquire("key_a")
    assert 95 <= wait_s <= 100


def test_keys_do_not_share_a_budget(limiter: RateLimiter) -> None:
    for _ in range(4):
        limiter.acquire("key_a")
    assert limiter.acquire("key_b") == 0


def test_a_refused_request_is_not_counted(limiter: RateLimiter) -> None:
    for _ in range(3):
        limiter.acquire("key_a")
    first, second = limiter.acquire("key_a"), limiter.acquire("key_a")
    assert abs(first - second) < 5  # refusals do not push the next slot further away
