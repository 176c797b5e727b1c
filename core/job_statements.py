"""The statements every job runs, built once with their values bound at execution.

Building an UPDATE and generating its cache key cost a claim or a completion about as much CPU
as running it; these are built at import and only bound per call (core.jobs runs them).
Parameter names differ from column names: SQLAlchemy reserves those in SET.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import JSON, Table, bindparam, exists, insert, literal, or_, select, update
from sqlalchemy import cast as sql_cast

from core.models import Job, JobEvent, JobImage, JobStatus, Tenant

# The event each status change records.
EVENT_FOR_STATUS = {
    JobStatus.QUEUED: "job.queued",
    JobStatus.RUNNING: "job.running",
    JobStatus.SUCCEEDED: "job.succeeded",
    JobStatus.FAILED: "job.failed",
    JobStatus.CANCELED: "job.canceled",
    JobStatus.EXPIRED: "job.expired",
}
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
_CLAIMABLE = (
    Job.id == bindparam("p_job_id"),
    Job.status == JobStatus.QUEUED.value,
    Job.attempts < Job.max_attempts,
    Job.cancel_requested_at.is_(None),
    # A job waiting out its retry backoff is published again by the sweeper when due.
    or_(Job.available_at.is_(None), Job.available_at <= bindparam("p_now")),
    or_(Job.expires_at.is_(None), Job.expires_at > bindparam("p_now")),
)
_CLAIMED = {
    "status": JobStatus.RUNNING.value,
    "updated_at": bindparam("p_now"),
    "attempts": Job.attempts + 1,
    "worker_id": bindparam("p_worker_id"),
    "lease_expires_at": bindparam("p_lease_until"),
    "started_at": bindparam("p_now"),
    "available_at": None,
}
_HELD = (
    Job.id == bindparam("p_job_id"),
    Job.status == JobStatus.RUNNING.value,
    Job.attempts == bindparam("p_attempt"),
)
_COMPLETED = {
    "status": JobStatus.SUCCEEDED.value,
    "updated_at": bindparam("p_now"),
    "result": bindparam("p_result", type_=Job.__table__.c.result.type),
    "usage": bindparam("p_usage", type_=Job.__table__.c.usage.type),
    "finished_at": bindparam("p_now"),
    "lease_expires_at": None,
    "error_code": None,
    "error_message": None,
}


def _change(where: tuple[Any, ...], values: dict[str, Any]) -> Any:
    """A status change: UPDATE ... RETURNING the job (its event is inserted after it)."""
    return (
        update(Job)
        .where(*where)
        .values(**values)
        .returning(Job)
        .execution_options(synchronize_session=False, populate_existing=True)
    )


def _recorded(where: tuple[Any, ...], values: dict[str, Any], event_type: str) -> Any:
    """The same change and its event row in one statement, for PostgreSQL (data-modifying
    CTEs): the UPDATE's row feeds the event's INSERT and comes back as the ORM's Job."""
    table = cast(Table, Job.__table__)
    moved = update(table).where(*where).values(**values).returning(*table.c).cte("moved")
    event = (
        insert(cast(Table, JobEvent.__table__))
        .from_select(
            ["job_id", "type", "attempt", "created_at", "data"],
            select(
                moved.c.id,
                literal(event_type),
                moved.c.attempts,
                bindparam("p_now"),
                sql_cast(literal("{}"), JSON),
            ),
        )
        .cte("event")
    )
    return (
        select(Job)
        .from_statement(select(moved).add_cte(event))
        .execution_options(populate_existing=True)
    )


# Claim a queued job for one attempt (p_job_id, p_now, p_worker_id, p_lease_until).
CLAIM = _change(_CLAIMABLE, _CLAIMED)
CLAIM_RECORDED = _recorded(_CLAIMABLE, _CLAIMED, EVENT_FOR_STATUS[JobStatus.RUNNING])
# The same, only for a job whose tenant has no running limit of its own, when there is no
# default limit either: most claims, in one statement with no read of the owner before it.
CLAIM_UNLIMITED_RECORDED = _recorded(
    (
        *_CLAIMABLE,
        ~exists().where(Tenant.id == Job.tenant_id, Tenant.max_running_jobs > 0),
    ),
    _CLAIMED,
    EVENT_FOR_STATUS[JobStatus.RUNNING],
)
# Store the result of the attempt a worker holds (p_job_id, p_attempt, p_now, p_result, ...).
COMPLETE = _change(_HELD, _COMPLETED)
COMPLETE_RECORDED = _recorded(_HELD, _COMPLETED, EVENT_FOR_STATUS[JobStatus.SUCCEEDED])
