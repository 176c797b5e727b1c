"""Deadlines: a job not started by its `expires_at` ends expired; one still running is canceled.

The claim refuses a job past its deadline (and expires it), so no GPU time goes to it however
its message arrives. The sweeper settles the rest each pass with two indexed statements on
(status, expires_at): queued jobs past the deadline end expired (never published, waiting out
a retry backoff, or naming a model nobody serves), and running ones are flagged for cancel,
which their worker honours at its next heartbeat exactly as a client's cancel.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.jobs import expire_job
from core.models import Job, JobStatus
from core.specs import DeadlineFields


def deadline_of(fields: DeadlineFields, *, now: datetime) -> datetime | None:
    """The absolute deadline a request asks for (core.specs.check_deadline vetted it)."""
    if fields.expires_after_s is not None:
        return now + timedelta(seconds=fields.expires_after_s)
    return fields.expires_at


def earliest(*deadlines: datetime | None) -> datetime | None:
    """The first of the deadlines given (a batch's and its job's own); None when none is."""
    given = [d for d in deadlines if d is not None]
    return min(given) if given else None


def expire_overdue(session: Session, *, now: datetime, limit: int) -> int:
    """End queued jobs past their deadline as expired (each with its job.expired event)."""
    job_ids = session.scalars(
        select(Job.id)
        .where(Job.status == JobStatus.QUEUED.value, Job.expires_at <= now)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    return sum(expire_job(session, job_id, now=now) is not None for job_id in job_ids)


def flag_overdue_running(session: Session, *, now: datetime) -> int:
    """Ask the workers of running jobs past their deadline to stop them (as a cancel)."""
    flagged = session.execute(
        update(Job)
        .where(
            Job.status == JobStatus.RUNNING.value,
            Job.expires_at <= now,
            Job.cancel_requested_at.is_(None),
        )
        .values(cancel_requested_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    return int(flagged)
