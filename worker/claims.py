"""The jobs a worker holds: the attempt each claim is for, and why a generation was stopped."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass, field

from worker.engine import Generation
from worker.model_host import Announced


class WorkerDraining(Exception):
    """The worker is shutting down and starts no new generation."""


# Why a generation was stopped, strongest first: a lost lease means nothing may be written,
# a client's cancel ends the job, a shutdown only hands it back.
STOP_REASONS = ("lost", "canceled", "shutdown")


@dataclass
class Held:
    """A job this worker has claimed: its attempt, and why its generation was stopped."""

    attempt: int
    cancel: threading.Event = field(default_factory=threading.Event)
    future: Future[Generation] | None = None
    stop_reason: str | None = None  # "lost" | "canceled" | "shutdown"
    announcement: Announced | None = None  # tells the batcher this job is on its way

    def stop(self, reason: str) -> None:
        """Stop this job's generation at the next step (or before it starts)."""
        if self.stop_reason is None or STOP_REASONS.index(reason) < STOP_REASONS.index(
            self.stop_reason
        ):
            self.stop_reason = reason
        self.cancel.set()
        if self.future is not None:
            self.future.cancel()  # only succeeds while the job waits for its batch
