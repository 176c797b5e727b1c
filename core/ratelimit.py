"""Per-key request rate limits: GCRA (a token bucket kept as one timestamp per key).

Shared by every API process through Redis when the broker is Redis (the clock is Redis's, so
API hosts need not agree on time); kept in process memory otherwise (the embedded mode).
"""

from __future__ import annotations

import threading
import time
from typing import Protocol
from urllib.parse import urlparse

import redis

from core.config import Settings

KEY_PREFIX = "internvl-jobs:rate:"

# KEYS[1]: the key's state; ARGV: ms between requests, burst tolerance in ms.
# Returns 0 when the request may go on, else the ms to wait.
_GCRA = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if now < tat - tolerance then return math.ceil(tat - tolerance - now) end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.ceil(new_tat - now) + 1000)
return 0
"""


class RateLimiter(Protocol):
    """Decides whether one more request of a key may go on now."""

    def acquire(self, key: str) -> float:
        """0 when allowed (and counted), else the seconds until it would be."""


class RedisRateLimiter:
    """GCRA in a Lua script: one atomic round trip per request."""

    def __init__(self, url: str, *, rate_per_s: float, burst: int) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self.script = self.client.register_script(_GCRA)
        self.interval_ms = 1000.0 / rate_per_s
        self.tolerance_ms = self.interval_ms * (burst - 1)

    def acquire(self, key: str) -> float:
        wait_ms = self.script(keys=[KEY_PREFIX + key], args=[self.interval_ms, self.tolerance_ms])
        return int(wait_ms) / 1000


class MemoryRateLimiter:
    """The same algorithm in one process's memory."""

    def __init__(self, *, rate_per_s: float, burst: int) -> None:
        self.interval_s = 1.0 / rate_per_s
        self.tolerance_s = self.interval_s * (burst - 1)
        self._arrivals: dict[str, float] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str) -> float:
        now = time.monotonic()
        with self._lock:
            tat = max(self._arrivals.get(key, now), now)
            if now < tat - self.tolerance_s:
                return tat - self.tolerance_s - now
            self._arrivals[key] = tat + self.interval_s
            return 0.0


def rate_limiter(settings: Settings) -> RateLimiter | None:
    """The per-key limiter these settings ask for; None when unlimited."""
    if settings.key_rate_per_s <= 0:
        return None
    if urlparse(settings.broker_url).scheme in ("redis", "rediss"):
        return RedisRateLimiter(
            settings.broker_url, rate_per_s=settings.key_rate_per_s, burst=settings.key_rate_burst
        )
    return MemoryRateLimiter(rate_per_s=settings.key_rate_per_s, burst=settings.key_rate_burst)
