"""What a worker's heartbeat does to the jobs it holds: renew their leases, learn of cancels."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.db import utcnow
from core.models import Job, JobStatus


@dataclass
class LeaseCheck:
    """What a worker learns when it renews its leases."""

    canceled: set[str] = field(default_factory=set)  # a client asked to cancel these
    lost: set[str] = field(default_factory=set)  # no longer this worker's (lease expired)


def renew_leases(
    session: Session, held: dict[str, int], *, worker_id: str, lease_s: float
) -> LeaseCheck:
    """Extend the leases this worker holds; report cancel requests and leases it lost."""
    check = LeaseCheck()
    if not held:
        return check
    expires = utcnow() + timedelta(seconds=lease_s)
    for job_id, attempt in held.items():
        renewed = session.execute(
            update(Job)
            .where(
                Job.id == job_id,
                Job.attempts == attempt,
                Job.status == JobStatus.RUNNING.value,
                Job.worker_id == worker_id,
            )
            .values(lease_expires_at=expires)
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        if not renewed:
            check.lost.add(job_id)
    check.canceled = cancel_requests(session, held) - check.lost
    return check


def cancel_requests(session: Session, held: dict[str, int]) -> set[str]:
    """The ids among held jobs whose cancel a client requested."""
    if not held:
        return set()
    rows = session.execute(
        select(Job.id).where(Job.id.in_(list(held)), Job.cancel_requested_at.is_not(None))
    )
    return set(rows.scalars())
