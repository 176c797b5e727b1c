"""The worker's pulse: renews the leases of held jobs, picks up cancels, reports its state."""

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
from core.jobs import renew_leases
from core.models import Worker

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
        on_canceled: Callable[[set[str]], None],
        stats: Callable[[], dict[str, Any]],
    ) -> None:
        self.sessions = sessions
        self.worker_id = worker_id
        self.device = device
        self.model = model
        self.queue = queue
        self.lease_s = lease_s
        # Renew well before the lease runs out, even if the heartbeat interval is long.
        self.interval_s = min(interval_s, lease_s / 3)
        self.held = held
        self.on_canceled = on_canceled
        self.stats = stats
        self.state = "starting"
        self.last_beat_at: float | None = None  # unix time of the last recorded beat
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> None:
        """Beat once now, then every interval."""
        self.beat()
        self._thread.start()

    def stop(self, *, final_state: str = "stopped") -> None:
        """Stop beating and record the final state."""
        self._stop.set()
        self._thread.join(self.interval_s + 5)
        self.state = final_state
        try:
            self.beat()
        except Exception:  # noqa: BLE001 - best effort on the way out
            log.warning("could not record the final worker state", exc_info=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.beat()
            except Exception:  # noqa: BLE001 - a missed beat is retried on the next tick
                log.warning("heartbeat failed", exc_info=True)

    def beat(self) -> None:
        """Renew leases, collect cancel requests and upsert the workers row, in one transaction."""
        with transaction(self.sessions) as session:
            canceled = renew_leases(
                session, self.held(), worker_id=self.worker_id, lease_s=self.lease_s
            )
            self._upsert(session)
        self.last_beat_at = time.time()
        if canceled:
            self.on_canceled(canceled)

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
        if self.state == "starting":
            row.started_at = now
        row.state = self.state
        row.pid = os.getpid()
        row.last_heartbeat_at = now
        row.jobs_done = int(stats.get("jobs_done", 0))
        row.stats = stats
