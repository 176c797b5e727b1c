"""Requests holding for a job to finish (GET /v1/jobs/{id}?wait=N), woken by the job feed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from core.errors import TooManyRequests
from core.notify import JobFeed

log = logging.getLogger("api.longpoll")


class JobWaiters:
    """Waiting requests by job id; one listener thread per API process wakes them."""

    def __init__(self, feed: JobFeed | None) -> None:
        self.feed = feed
        self._waiting: dict[str, set[Waiter]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.slots = WaitSlots()

    def start(self) -> None:
        """Start listening for job events in a thread."""
        if self.feed is None:
            log.warning("no job event feed for this broker: long-polls wait their full time")
            return
        self._thread = threading.Thread(
            target=self.feed.listen,
            args=(self._wake, self._wake_all, self._stop),
            name="job-feed",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop listening and release every waiter."""
        self._stop.set()
        self._wake_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @contextmanager
    def watch(self, job_id: str) -> Iterator[asyncio.Event]:
        """An event set when job_id may have finished; register before reading the job."""
        waiter = Waiter(asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._waiting.setdefault(job_id, set()).add(waiter)
        try:
            yield waiter.event
        finally:
            with self._lock:
                waiters = self._waiting.get(job_id)
                if waiters is not None:
                    waiters.discard(waiter)
                    if not waiters:
                        del self._waiting[job_id]

    def waiting(self) -> int:
        """How many requests are holding now."""
        with self._lock:
            return sum(len(waiters) for waiters in self._waiting.values())

    def _wake(self, job_id: str) -> None:
        with self._lock:
            waiters = list(self._waiting.get(job_id, ()))
        for waiter in waiters:
            waiter.wake()

    def _wake_all(self) -> None:
        with self._lock:
            waiters = [waiter for group in self._waiting.values() for waiter in group]
        for waiter in waiters:
            waiter.wake()


@dataclass(frozen=True, eq=False)
class Waiter:
    """One held request: its event, set from the listener thread on the request's own loop."""

    loop: asyncio.AbstractEventLoop
    event: asyncio.Event

    def wake(self) -> None:
        """Set the event thread-safely (the loop may already be gone)."""
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.event.set)


class WaitSlots:
    """How many long-polls each tenant holds open; one tenant cannot hold them all."""

    def __init__(self) -> None:
        self._held: Counter[str] = Counter()

    @contextmanager
    def hold(self, tenant_id: str, *, limit: int, retry_after_s: int) -> Iterator[None]:
        """Hold one of the tenant's `limit` long-polls; TooManyRequests when all are held."""
        if self._held[tenant_id] >= limit:  # the event loop's thread only: no lock needed
            raise TooManyRequests(
                f"this tenant already holds {limit} long-polls (GET ...?wait=); poll "
                "without wait, or retry later",
                code="too_many_waits",
                headers={"Retry-After": str(retry_after_s)},
            )
        self._held[tenant_id] += 1
        try:
            yield
        finally:
            self._held[tenant_id] -= 1
            if self._held[tenant_id] <= 0:
                del self._held[tenant_id]
