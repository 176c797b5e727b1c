"""One time budget for a whole outbound exchange: resolving, connecting, headers and body.

httpx's timeouts bound each network operation, not their sum: a server that sends one byte
every few seconds never trips a read timeout and holds the caller for as long as it likes.
Inside `time_budget(seconds)`, every connection the guarded clients make or reuse clamps each
operation to the time left and fails with a timeout once none is left, so the exchange ends
within the budget whatever the peer does. The budget lives in a context variable: each
thread (each job being fetched, each webhook being sent) has its own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

import httpcore

T = TypeVar("T")
_deadline: ContextVar[float | None] = ContextVar("outbound_deadline", default=None)
# Name resolution has no timeout of its own; it runs here so the caller can stop waiting.
_resolvers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="resolve")


@contextmanager
def time_budget(seconds: float) -> Iterator[float]:
    """Every guarded exchange inside must end within `seconds` in all (or an outer budget)."""
    outer = _deadline.get()
    deadline = time.monotonic() + seconds
    if outer is not None:
        deadline = min(deadline, outer)
    token = _deadline.set(deadline)
    try:
        yield deadline
    finally:
        _deadline.reset(token)


def time_left(timeout: float | None, error: type[Exception]) -> float | None:
    """`timeout` clamped to the budget's time left; raise `error` when none is left."""
    deadline = _deadline.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the time allowed for this exchange is spent")
    return left if timeout is None else min(timeout, left)


def call_within_budget(function: Any, *args: Any) -> Any:
    """function(*args) run beside the caller, who waits at most the budget's time left."""
    if _deadline.get() is None:
        return function(*args)
    left = time_left(None, httpcore.ConnectTimeout)
    future = _resolvers.submit(function, *args)
    try:
        return future.result(timeout=left)
    except FutureTimeout as exc:
        raise httpcore.ConnectTimeout("name resolution took longer than allowed") from exc


class BudgetStream(httpcore.NetworkStream):
    """A network stream whose every read and write ends by the current budget's deadline."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        """Read, waiting no longer than the budget allows."""
        return self._inner.read(max_bytes, time_left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        """Write, waiting no longer than the budget allows."""
        self._inner.write(buffer, time_left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        """Close the connection."""
        self._inner.close()

    def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        """The TLS handshake, within the budget; the TLS stream stays budgeted."""
        wait_s = time_left(timeout, httpcore.ConnectTimeout)
        return BudgetStream(self._inner.start_tls(ssl_context, server_hostname, wait_s))

    def get_extra_info(self, info: str) -> Any:
        """Socket details (httpcore asks for the ssl object and the socket)."""
        return self._inner.get_extra_info(info)
