"""What a worker's heartbeat does to the jobs it holds: renew their leases, learn of cancels."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import select, tuple_, update
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
    # One statement for every held job (the heartbeat runs it each beat, whatever it holds):
    # the rows renewed come back with their cancel requests; the others are lost.
    renewed = session.execute(
        update(Job)
        .where(
            tuple_(Job.id, Job.attempts).in_(list(held.items())),
            Job.status == JobStatus.RUNNING.value,
            Job.worker_id == worker_id,
        )
        .values(lease_expires_at=expires)
        .returning(Job.id, Job.cancel_requested_at)
        .execution_options(synchronize_session=False)
    ).all()
    check.lost = set(held) - {job_id for job_id, _ in renewed}
    check.canceled = {job_id for job_id, requested in renewed if requested is not None}
    return check


def cancel_requests(session: Session, held: dict[str, int]) -> set[str]:
    """The ids among held jobs whose cancel a client requested."""
    if not held:
        return set()
    rows = session.execute(
        select(Job.id).where(Job.id.in_(list(held)), Job.cancel_requested_at.is_not(None))
    )
    return set(rows.scalars())
