"""Requests holding for a job to finish (GET /v1/jobs/{id}?wait=N), woken by the job feed."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from core.notify import JobFeed

log = logging.getLogger("api.longpoll")


class JobWaiters:
    """Waiting requests by job id; one listener thread per API process wakes them."""

    def __init__(self, feed: JobFeed | None) -> None:
        self.feed = feed
        self._waiting: dict[str, set[asyncio.Event]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start listening (call from the event loop that serves requests)."""
        self._loop = asyncio.get_running_loop()
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
        finished = asyncio.Event()
        with self._lock:
            self._waiting.setdefault(job_id, set()).add(finished)
        try:
            yield finished
        finally:
            with self._lock:
                events = self._waiting.get(job_id)
                if events is not None:
                    events.discard(finished)
                    if not events:
                        del self._waiting[job_id]

    def waiting(self) -> int:
        """How many requests are holding now."""
        with self._lock:
            return sum(len(events) for events in self._waiting.values())

    def _wake(self, job_id: str) -> None:
        with self._lock:
            events = list(self._waiting.get(job_id, ()))
        self._set(events)

    def _wake_all(self) -> None:
        with self._lock:
            events = [event for group in self._waiting.values() for event in group]
        self._set(events)

    def _set(self, events: list[asyncio.Event]) -> None:
        if events and self._loop is not None and not self._loop.is_closed():
            for event in events:
                self._loop.call_soon_threadsafe(event.set)
