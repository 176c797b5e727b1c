"""A tenant's running-jobs limit: how many of its jobs may run at once, across all workers.

The limit is checked when a worker claims a job (core.jobs.claim_job). On PostgreSQL the claim
first locks the tenant's row (FOR NO KEY UPDATE: job inserts, whose foreign-key checks take a
key-share lock, never wait on it) and only then counts the tenant's running jobs, so two
workers claiming jobs of one tenant at once count one after the other and never both start a
job over the limit. SQLite serialises writing transactions anyway (BEGIN IMMEDIATE).
Tenants without a limit take no lock.

Cost: one primary-key read of the job and its tenant, and, for a limited tenant, one count on
the (tenant_id, status) index stopped at the limit.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.models import Job, JobStatus, Tenant


def effective_limit(own: int | None, default: int) -> int | None:
    """The limit that applies: the tenant's own, else the default; None when there is none."""
    limit = default if own is None else own
    return limit if limit > 0 else None


def tenant_limit(session: Session, tenant_id: str, default: int) -> int | None:
    """The running-jobs limit of a tenant (None: unlimited)."""
    own = session.scalar(select(Tenant.max_running_jobs).where(Tenant.id == tenant_id))
    return effective_limit(own, default)


def running_count(session: Session, tenant_id: str, cap: int) -> int:
    """The tenant's running jobs, counted up to `cap` (no more index entries are read)."""
    running = (
        select(Job.id)
        .where(Job.tenant_id == tenant_id, Job.status == JobStatus.RUNNING.value)
        .limit(cap)
        .subquery()
    )
    return int(session.scalar(select(func.count()).select_from(running)) or 0)


def at_limit(session: Session, tenant_id: str, default: int, *, lock: bool = False) -> bool:
    """True when the tenant already runs as many jobs as its limit allows.

    `lock` (a claim) locks the tenant's row before counting, until the transaction ends.
    """
    return limit_reached(session, tenant_id, tenant_limit(session, tenant_id, default), lock=lock)


def limit_reached(
    session: Session, tenant_id: str, limit: int | None, *, lock: bool = False
) -> bool:
    """at_limit for a limit already read (None: unlimited, nothing is locked or counted)."""
    if limit is None:
        return False
    if lock:
        session.execute(
            select(Tenant.id).where(Tenant.id == tenant_id).with_for_update(key_share=True)
        )
    return running_count(session, tenant_id, limit) >= limit
