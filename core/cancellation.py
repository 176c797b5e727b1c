"""Client cancel requests: a queued job is canceled at once, a running one is flagged.

The worker holding a flagged job sees the flag within cancel_poll_s, its generation stops at
the next step, and it records the job as canceled (core.jobs.cancel_job).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, update
from sqlalchemy.orm import Session

from core.db import utcnow
from core.errors import Conflict, NotFound
from core.jobs import cancel_queued
from core.models import Job, JobStatus


def request_cancel(session: Session, job_id: str, *, tenant_id: str) -> Job:
    """Cancel a queued job now, or flag a running one for its worker to stop.

    Raises NotFound for another tenant's or an unknown job, Conflict for a finished one.
    """
    job = session.get(Job, job_id)
    if job is None or job.tenant_id != tenant_id:
        raise NotFound(f"no job {job_id}")
    # A worker may claim or release the job between our read and our update: re-read and retry.
    for _ in range(5):
        now = utcnow()
        if job.job_status.is_terminal():
            raise Conflict(
                f"job {job_id} already {job.status}; only queued or running jobs can be canceled",
                code="job_finished",
            )
        if job.job_status == JobStatus.QUEUED:
            canceled = cancel_queued(session, job_id, now=now, event_data={"by": "client"})
            if canceled is not None:
                return canceled
        elif _flag_running(session, job_id, now):
            flagged = session.get(Job, job_id, populate_existing=True)
            assert flagged is not None
            return flagged
        refreshed = session.get(Job, job_id, populate_existing=True)
        assert refreshed is not None
        job = refreshed
    raise Conflict(f"job {job_id} changed state repeatedly; try again", code="job_busy")


def _flag_running(session: Session, job_id: str, now: datetime) -> bool:
    flagged = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING.value)
        .values(cancel_requested_at=func.coalesce(Job.cancel_requested_at, now))
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    return bool(flagged)
