"""Backpressure: refuse new jobs with 429 while a tenant's or the whole queue is full.

The caps are soft by the width of concurrent submissions (each request counts, then commits),
which is what backpressure needs: to stop growth, not to hit an exact number.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.config import Settings
from core.errors import TooManyRequests
from core.models import Job, JobStatus

GLOBAL_DEPTH_TTL_S = 1.0


@dataclass
class QueueDepth:
    """The number of queued jobs across tenants, counted at most once per ttl_s per process."""

    ttl_s: float = GLOBAL_DEPTH_TTL_S
    _value: int = 0
    _counted_at: float = float("-inf")
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, session: Session) -> int:
        """Queued jobs of every tenant (up to ttl_s old)."""
        with self._lock:
            if time.monotonic() - self._counted_at < self.ttl_s:
                return self._value
        value = _count_queued(session)
        with self._lock:
            self._value, self._counted_at = value, time.monotonic()
        return value


def _count_queued(session: Session, tenant_id: str | None = None) -> int:
    query = select(func.count()).select_from(Job).where(Job.status == JobStatus.QUEUED.value)
    if tenant_id is not None:
        query = query.where(Job.tenant_id == tenant_id)
    return int(session.scalar(query) or 0)


def check_queue_room(
    session: Session, *, settings: Settings, depth: QueueDepth, tenant_id: str, adding: int
) -> None:
    """Raise 429 queue_full when `adding` more jobs would pass a queue cap."""
    retry = {"Retry-After": str(settings.queue_full_retry_after_s)}
    tenant_cap = settings.max_queued_jobs_per_tenant
    if tenant_cap and _count_queued(session, tenant_id) + adding > tenant_cap:
        raise TooManyRequests(
            f"this tenant already has the most queued jobs allowed ({tenant_cap}); "
            "retry when some have run",
            code="queue_full",
            headers=retry,
        )
    global_cap = settings.max_queued_jobs
    if global_cap and depth.get(session) + adding > global_cap:
        raise TooManyRequests(
            "the service's queue is full; retry later", code="queue_full", headers=retry
        )
