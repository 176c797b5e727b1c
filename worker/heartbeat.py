"""The worker's pulse: renews the leases of held jobs, picks up cancels, reports its state.

Leases are renewed every min(heartbeat_s, lease_s / 3), so a few missed beats never cost a
job; cancel requests are looked up more often (cancel_poll_s) while the worker holds jobs.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from core.db import transaction, utcnow
from core.leases import LeaseCheck, cancel_requests, renew_leases
from core.models import Worker, WorkerState

log = logging.getLogger("worker.heartbeat")


class Heartbeat:
    """A background thread that keeps this worker's claims and its workers row fresh."""

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        worker_id: str,
        device: str,
        model: str,
        queue: str,
        lease_s: float,
        interval_s: float,
        held: Callable[[], dict[str, int]],
        on_check: Callable[[LeaseCheck], None],
        stats: Callable[[], dict[str, Any]],
        cancel_poll_s: float = 1.0,
    ) -> None:
        self.sessions = sessions
        self.worker_id = worker_id
        self.device = device
        self.model = model
        self.queue = queue
        self.lease_s = lease_s
        # Renew well before the lease runs out, even if the heartbeat interval is long.
        self.interval_s = min(interval_s, lease_s / 3)
        self.poll_s = min(cancel_poll_s, self.interval_s)
        self.held = held
        self.on_check = on_check
        self.stats = stats
        self.state = WorkerState.STARTING
        self.last_beat_at: float | None = None  # unix time of the last recorded beat
        self._stop = threading.Event()
        self._beat_now = threading.Event()  # set by record_state: beat at once, not on time
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> None:
        """Beat once now, then every interval."""
        self.beat()
        self._thread.start()

    def record_state(self, state: WorkerState) -> None:
        """Take a new state and have the thread record it now, not at the next interval: a
        worker that starts taking jobs is listed ready within moments, not heartbeat_s later."""
        self.state = state
        self._beat_now.set()

    def stop(self, *, final_state: WorkerState = WorkerState.STOPPED) -> None:
        """Stop beating and record the final state."""
        self._stop.set()
        self._beat_now.set()
        self._thread.join(self.interval_s + 5)
        self.state = final_state
        try:
            self.beat()
        except Exception:  # noqa: BLE001 - best effort on the way out
            log.warning("could not record the final worker state", exc_info=True)

    def _run(self) -> None:
        next_beat = time.monotonic() + self.interval_s
        while True:
            self._beat_now.wait(self.poll_s)
            if self._stop.is_set():
                return
            try:
                if self._beat_now.is_set() or time.monotonic() >= next_beat:
                    self._beat_now.clear()
                    next_beat = time.monotonic() + self.interval_s
                    self.beat()
                else:
                    self.poll_cancels()
            except Exception:  # noqa: BLE001 - a missed beat is retried on the next tick
                log.warning("heartbeat failed", exc_info=True)

    def beat(self) -> None:
        """Renew leases, collect cancel requests and upsert the workers row, in one transaction."""
        with transaction(self.sessions) as session:
            check = renew_leases(
                session, self.held(), worker_id=self.worker_id, lease_s=self.lease_s
            )
            self._upsert(session)
        self.last_beat_at = time.time()
        if check.canceled or check.lost:
            self.on_check(check)

    def poll_cancels(self) -> None:
        """Look up cancel requests of the jobs held now (a cheap read, skipped when idle)."""
        held = self.held()
        if not held:
            return
        with transaction(self.sessions) as session:
            canceled = cancel_requests(session, held)
        if canceled:
            self.on_check(LeaseCheck(canceled=canceled))

    def _upsert(self, session: Session) -> None:
        now = utcnow()
        stats = self.stats()
        row = session.get(Worker, self.worker_id)
        if row is None:
            row = Worker(
                id=self.worker_id,
                host=socket.gethostname(),
                device=self.device,
                model=self.model,
                queue=self.queue,
                pid=os.getpid(),
                started_at=now,
            )
            session.add(row)
        if self.state == WorkerState.STARTING:
            row.started_at = now
        row.state = self.state
        row.pid = os.getpid()
        row.last_heartbeat_at = now
        row.jobs_done = int(stats.get("jobs_done", 0))
        row.stats = stats
