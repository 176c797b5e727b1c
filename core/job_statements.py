"""The statements every job runs, built once with their values bound at execution.

Building an UPDATE and generating its cache key cost a claim or a completion about as much CPU
as running it; these are built at import and only bound per call (core.jobs runs them).
Parameter names differ from column names: SQLAlchemy reserves those in SET.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import Table, bindparam, insert, or_, select, update

from core.models import Job, JobEvent, JobImage, JobStatus, Tenant

EVENT_INSERT = insert(JobEvent)
JOB_IMAGE_INSERT = insert(JobImage)
JOB_INSERT = insert(cast(Table, Job.__table__))
# (column, attribute) of what a new job's INSERT sets (job_row).
JOB_INSERTED = [
    (Job.__mapper__.attrs[key].columns[0].name, key)
    for key in (
        "id tenant_id batch_id custom_id task model status priority spec meta webhook_url "
        "webhook_events attempts max_attempts expires_at created_at published_at updated_at"
    ).split()
]
NEW_JOB_COLUMNS = [column for column, _ in JOB_INSERTED]
OWNER = (
    select(Job.tenant_id, Tenant.max_running_jobs)
    .outerjoin(Tenant, Tenant.id == Job.tenant_id)
    .where(Job.id == bindparam("p_job_id"))
)
CLAIM = (
    update(Job)
    .where(
        Job.id == bindparam("p_job_id"),
        Job.status == JobStatus.QUEUED.value,
        Job.attempts < Job.max_attempts,
        Job.cancel_requested_at.is_(None),
        # A job waiting out its retry backoff is published again by the sweeper when due.
        or_(Job.available_at.is_(None), Job.available_at <= bindparam("p_now")),
        or_(Job.expires_at.is_(None), Job.expires_at > bindparam("p_now")),
    )
    .values(
        status=JobStatus.RUNNING.value,
        updated_at=bindparam("p_now"),
        attempts=Job.attempts + 1,
        worker_id=bindparam("p_worker_id"),
        lease_expires_at=bindparam("p_lease_until"),
        started_at=bindparam("p_now"),
        available_at=None,
    )
    .returning(Job)
    .execution_options(synchronize_session=False, populate_existing=True)
)
COMPLETE = (
    update(Job)
    .where(
        Job.id == bindparam("p_job_id"),
        Job.status == JobStatus.RUNNING.value,
        Job.attempts == bindparam("p_attempt"),
    )
    .values(
        status=JobStatus.SUCCEEDED.value,
        updated_at=bindparam("p_now"),
        result=bindparam("p_result", type_=Job.__table__.c.result.type),
        usage=bindparam("p_usage", type_=Job.__table__.c.usage.type),
        finished_at=bindparam("p_now"),
        lease_expires_at=None,
        error_code=None,
        error_message=None,
    )
    .returning(Job)
    .execution_options(synchronize_session=False, populate_existing=True)
)
