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
_TENANTS_KEPT = 10_000  # counts kept per process; the oldest are dropped past this


@dataclass
class _Count:
    value: int
    counted_at: float


@dataclass
class QueueDepth:
    """Queued jobs, across tenants and per tenant, counted at most once per ttl_s per process.

    Between counts, the jobs this process committed are added to the last count, so one API
    process passes a tenant's cap by no more than the submissions it has in flight; other
    processes' jobs are seen at the next count (the caps are soft by up to ttl_s of their
    submissions). Jobs that leave the queue in between are seen at the next count too: until
    then the count errs high, towards 429.
    """

    ttl_s: float = GLOBAL_DEPTH_TTL_S
    _value: int = 0
    _counted_at: float = float("-inf")
    _tenants: dict[str, _Count] = field(default_factory=dict)
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

    def tenant(self, session: Session, tenant_id: str) -> int:
        """One tenant's queued jobs: counted up to ttl_s ago, plus those admitted since."""
        with self._lock:
            known = self._tenants.get(tenant_id)
            if known is not None and time.monotonic() - known.counted_at < self.ttl_s:
                return known.value
        value = _count_queued(session, tenant_id)
        with self._lock:
            self._tenants.pop(tenant_id, None)  # re-inserted last: the dict stays oldest-first
            self._tenants[tenant_id] = _Count(value, time.monotonic())
            while len(self._tenants) > _TENANTS_KEPT:
                del self._tenants[next(iter(self._tenants))]
        return value

    def admitted(self, tenant_id: str, jobs: int) -> None:
        """Add jobs just committed for a tenant to its last count (and to the global one)."""
        with self._lock:
            known = self._tenants.get(tenant_id)
            if known is not None:
                known.value += jobs
            self._value += jobs


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
    if tenant_cap and depth.tenant(session, tenant_id) + adding > tenant_cap:
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
