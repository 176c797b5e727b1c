"""The job lifecycle: every status change goes through `transition`, which records the event.

A change is a conditional UPDATE (expected status, and for a worker the attempt it holds), so
two workers, a sweeper and a cancel request can race without a job completing twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Update, update
from sqlalchemy.orm import Session

from core.config import ModelSpec
from core.db import utcnow
from core.ids import new_id
from core.job_statements import (
    CLAIM,
    CLAIM_RECORDED,
    CLAIM_UNLIMITED_RECORDED,
    COMPLETE,
    COMPLETE_RECORDED,
    EVENT_FOR_STATUS,
    EVENT_INSERT,
    JOB_IMAGE_INSERT,
    JOB_INSERT,
    JOB_INSERTED,
    OWNER,
)
from core.models import Job, JobStatus
from core.running_limits import effective_limit, limit_reached
from core.webhooks import record_job_event

log = logging.getLogger("core.jobs")


# Called inside the transaction of every status change (webhooks, metrics hook in here).
EventListener = Callable[[Session, Job, str], None]
_listeners: list[EventListener] = []


def add_event_listener(listener: EventListener) -> None:
    """Run listener(session, job, event_type) in the transaction of every job event."""
    if listener not in _listeners:
        _listeners.append(listener)


def new_job(
    *,
    tenant_id: str,
    model: ModelSpec,
    spec: dict[str, Any],
    max_attempts: int,
    priority: int = 0,
    metadata: dict[str, Any] | None = None,
    webhook: dict[str, Any] | None = None,
    batch_id: str | None = None,
    custom_id: str | None = None,
    expires_at: datetime | None = None,
) -> Job:
    """A queued job, not stored yet (insert_job stores it, or a submission's one statement)."""
    now = utcnow()
    return Job(
        id=new_id("job"),
        tenant_id=tenant_id,
        batch_id=batch_id,
        custom_id=custom_id,
        task=spec["task"],
        model=model.alias,
        status=JobStatus.QUEUED.value,
        priority=priority,
        spec=spec,
        meta=metadata or {},
        webhook_url=webhook["url"] if webhook else None,
        webhook_events=list(webhook["events"]) if webhook else None,
        attempts=0,
        max_attempts=max_attempts,
        expires_at=expires_at,
        created_at=now,
        published_at=now,
        updated_at=now,
    )


def job_row(job: Job) -> dict[str, Any]:
    """What a new job's INSERT sets, by column name; the rest (result, usage, ...) stay NULL."""
    return {column: getattr(job, key) for column, key in JOB_INSERTED}


def insert_job(session: Session, job: Job, *, image_shas: list[str]) -> Job:
    """Insert a job from new_job, its image references in order, and its job.queued event.

    The rows go in as plain INSERTs (the job's, then one executemany for its images): the
    job is not added to the session, which spares the unit of work's flush, the costliest
    part of a submission's transaction.
    """
    session.execute(JOB_INSERT, job_row(job))
    if image_shas:
        session.execute(
            JOB_IMAGE_INSERT,
            [{"job_id": job.id, "position": i, "sha256": sha} for i, sha in enumerate(image_shas)],
        )
    _record(session, job, "job.queued", attempt=0, data={})
    return job


def job_queued(session: Session, job: Job) -> None:
    """Tell the job event listeners about a job stored with its job.queued event by other
    means than insert_job (a submission's one statement on PostgreSQL)."""
    _notify(session, job, "job.queued")


def transition(
    session: Session,
    job_id: str,
    *,
    to: JobStatus,
    expect: Iterable[JobStatus],
    attempt: int | None = None,
    values: dict[str, Any] | None = None,
    where: Iterable[ColumnElement[bool]] = (),
    event_data: dict[str, Any] | None = None,
) -> Job | None:
    """Move a job to `to` if it is in one of `expect` (and at `attempt`); record the event."""
    conditions = [Job.id == job_id, Job.status.in_([s.value for s in expect]), *where]
    if attempt is not None:
        conditions.append(Job.attempts == attempt)
    changes = {"status": to.value, "updated_at": utcnow(), **(values or {})}
    statement = (
        update(Job)
        .where(*conditions)
        .values(**changes)
        .returning(Job)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    return _moved(session, statement, {}, to=to, event_data=event_data)


def _moved(
    session: Session,
    statement: Update,
    params: dict[str, Any],
    *,
    to: JobStatus,
    event_data: dict[str, Any] | None = None,
    recorded: Any = None,
) -> Job | None:
    """Run a status change's UPDATE ... RETURNING; record its event when a row moved.

    `recorded` is the same change with its event row in one statement, run instead on
    PostgreSQL (core.job_statements: the event's data is {} and its time p_now).
    """
    if recorded is not None and session.get_bind().dialect.name == "postgresql":
        moved: Job | None = session.scalars(recorded, params).one_or_none()
        if moved is not None:
            _notify(session, moved, EVENT_FOR_STATUS[to])
        return moved
    # One round trip: the changed row comes back with the UPDATE (RETURNING, on PostgreSQL and
    # SQLite alike), refreshing a copy this session already holds, instead of a SELECT after.
    job: Job | None = session.scalars(statement, params).one_or_none()
    if job is None:
        return None
    _record(session, job, EVENT_FOR_STATUS[to], attempt=job.attempts, data=event_data or {})
    return job


def _record(
    session: Session, job: Job, event_type: str, *, attempt: int, data: dict[str, Any]
) -> None:
    # A plain INSERT, not an ORM object: nothing reads the event back in this transaction, and
    # the unit of work's flush of one row costs more CPU than the statement itself.
    session.execute(
        EVENT_INSERT,
        {
            "job_id": job.id,
            "type": event_type,
            "attempt": attempt,
            "created_at": utcnow(),
            "data": data,
        },
    )
    _notify(session, job, event_type)


def _notify(session: Session, job: Job, event_type: str) -> None:
    for listener in _listeners:
        listener(session, job, event_type)


def claim_job(
    session: Session,
    job_id: str,
    *,
    worker_id: str,
    lease_s: float,
    now: datetime | None = None,
    running_limit: int = 0,
    hold_s: float = 2.0,
) -> Job | None:
    """Take a queued job for one attempt; None when it is not claimable (duplicate delivery).

    A job whose deadline has passed is never started: it ends expired here instead. A job whose
    tenant already runs as many jobs as its limit allows (its own, else `running_limit`; 0: no
    limit) is not started either: it stays queued, available again `hold_s` from now (the
    sweeper publishes it then), and no attempt is used.
    """
    now = now or utcnow()
    params = {
        "p_job_id": job_id,
        "p_now": now,
        "p_worker_id": worker_id,
        "p_lease_until": now + timedelta(seconds=lease_s),
    }
    if running_limit <= 0 and session.get_bind().dialect.name == "postgresql":
        # Most claims: no default limit, and a tenant with none of its own. One statement;
        # a job it does not take (limited, not claimable, past its deadline) takes the path
        # below, which finds out why.
        claimed: Job | None = session.scalars(CLAIM_UNLIMITED_RECORDED, params).one_or_none()
        if claimed is not None:
            _notify(session, claimed, EVENT_FOR_STATUS[JobStatus.RUNNING])
            return claimed
    # The job's tenant and that tenant's own limit in one read (a join on primary keys).
    owner = session.execute(OWNER, {"p_job_id": job_id}).first()
    tenant_id, own_limit = owner if owner is not None else (None, None)
    limit = effective_limit(own_limit, running_limit)
    if tenant_id is not None and limit_reached(session, tenant_id, limit, lock=True):
        if _hold(session, job_id, now=now, until=now + timedelta(seconds=hold_s)):
            log.info("job %s held: its tenant %s is at its running limit", job_id, tenant_id)
            return None
        claimed = None
    else:
        claimed = _moved(session, CLAIM, params, to=JobStatus.RUNNING, recorded=CLAIM_RECORDED)
    if claimed is None:
        expire_job(session, job_id, now=now)
    return claimed


def _hold(session: Session, job_id: str, *, now: datetime, until: datetime) -> bool:
    """Leave a claimable queued job queued until `until`, for the sweeper to publish again."""
    claimable = CLAIM.whereclause
    assert claimable is not None
    result = session.execute(
        update(Job)
        .where(claimable)
        .values(available_at=until, published_at=None, updated_at=utcnow())
        .execution_options(synchronize_session=False),
        {"p_job_id": job_id, "p_now": now},
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def expire_job(session: Session, job_id: str, *, now: datetime) -> Job | None:
    """End a queued job whose deadline has passed as expired (nothing ran); else None."""
    return transition(
        session,
        job_id,
        to=JobStatus.EXPIRED,
        expect=[JobStatus.QUEUED],
        where=[Job.expires_at <= now],
        values={"finished_at": now, "worker_id": None, "available_at": None},
        event_data={"reason": "deadline"},
    )


def complete_job(
    session: Session, job_id: str, *, attempt: int, result: dict[str, Any], usage: dict[str, Any]
) -> Job | None:
    """Store the result if this attempt still holds the job (fencing); else None."""
    params = {
        "p_job_id": job_id,
        "p_attempt": attempt,
        "p_now": utcnow(),
        "p_result": result,
        "p_usage": usage,
    }
    return _moved(session, COMPLETE, params, to=JobStatus.SUCCEEDED, recorded=COMPLETE_RECORDED)


def fail_job(
    session: Session,
    job_id: str,
    *,
    code: str,
    message: str,
    attempt: int | None = None,
    expect: Iterable[JobStatus] = (JobStatus.RUNNING,),
    usage: dict[str, Any] | None = None,
    where: Iterable[ColumnElement[bool]] = (),
) -> Job | None:
    """Mark a job failed with a reason (by its attempt holder, or by the sweeper)."""
    values: dict[str, Any] = {
        "error_code": code,
        "error_message": message[:2000],
        "finished_at": utcnow(),
        "lease_expires_at": None,
    }
    if usage is not None:
        values["usage"] = usage
    return transition(
        session,
        job_id,
        to=JobStatus.FAILED,
        expect=expect,
        attempt=attempt,
        where=where,
        values=values,
        event_data={"code": code},
    )


def release_job(
    session: Session,
    job_id: str,
    *,
    attempt: int,
    reason: str,
    available_at: datetime | None = None,
    published: bool = False,
    refund_attempt: bool = False,
) -> Job | None:
    """Give a running job back to the queue (worker shutting down, error worth retrying).

    `available_at` delays the next run (backoff); `published` says the caller publishes the
    job itself right after commit, else the sweeper does once it is available.
    `refund_attempt` (a worker shutting down: not the job's fault) raises the job's
    max_attempts by one, so the attempt does not count against it; attempt numbers still
    only grow, which fencing needs. A job whose cancel was requested ends canceled instead.
    """
    canceled = cancel_job(session, job_id, attempt=attempt, requested_only=True)
    if canceled is not None:
        return canceled
    now = utcnow()
    return transition(
        session,
        job_id,
        to=JobStatus.QUEUED,
        expect=[JobStatus.RUNNING],
        attempt=attempt,
        values={
            "worker_id": None,
            "lease_expires_at": None,
            "available_at": available_at,
            "published_at": now if published else None,
            **({"max_attempts": Job.max_attempts + 1} if refund_attempt else {}),
        },
        event_data={"reason": reason},
    )


def cancel_queued(
    session: Session, job_id: str, *, now: datetime, event_data: dict[str, Any]
) -> Job | None:
    """Cancel a job that is still queued; None once it is not (claimed, or finished)."""
    return transition(
        session,
        job_id,
        to=JobStatus.CANCELED,
        expect=[JobStatus.QUEUED],
        values={"cancel_requested_at": now, "finished_at": now},
        event_data=event_data,
    )


def cancel_job(
    session: Session,
    job_id: str,
    *,
    attempt: int,
    usage: dict[str, Any] | None = None,
    requested_only: bool = False,
) -> Job | None:
    """End a running job as canceled (its worker stopped generating); usage: work done so far."""
    values: dict[str, Any] = {"finished_at": utcnow(), "lease_expires_at": None}
    if usage is not None:
        values["usage"] = usage
    return transition(
        session,
        job_id,
        to=JobStatus.CANCELED,
        expect=[JobStatus.RUNNING],
        attempt=attempt,
        where=[Job.cancel_requested_at.is_not(None)] if requested_only else (),
        values=values,
    )


def _queue_webhooks(session: Session, job: Job, event_type: str) -> None:
    record_job_event(session, job, event_type)


# Every process that changes jobs (API, workers, sweeper) writes their webhook deliveries.
add_event_listener(_queue_webhooks)
