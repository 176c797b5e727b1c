"""The recovery sweeper: gets every accepted job to a worker, whatever was lost on the way.

Each pass requeues running jobs whose worker stopped renewing its lease (or fails them once
their attempts are used up, or cancels them if a client asked), settles queued jobs that can
never be claimed, and publishes queued jobs whose message may be gone. Rows are taken with
FOR UPDATE SKIP LOCKED on PostgreSQL (SQLite serialises writers anyway) and every change is a
conditional update, so two sweepers running at once split the work and never double it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, fields
from datetime import datetime, timedelta

from celery import Celery
from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from core.batches import settle_forgotten
from core.config import Settings
from core.db import transaction, utcnow
from core.deadlines import expire_overdue, flag_overdue_running
from core.dispatch import mark_unpublished
from core.jobs import fail_job, transition
from core.metrics import record_sweep
from core.models import Job, JobStatus
from core.queue import publish_job
from core.retention import purge_expired
from core.storage import ObjectStorage

log = logging.getLogger("core.sweeper")
BATCH_LIMIT = 500


@dataclass
class SweepReport:
    """What one sweep did."""

    republished: int = 0
    requeued: int = 0
    exhausted: int = 0
    canceled: int = 0
    expired: int = 0

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))


def sweep_once(
    *,
    sessions: sessionmaker[Session],
    celery: Celery,
    settings: Settings,
    now: datetime | None = None,
) -> SweepReport:
    """One pass: deadlines, expired leases, unclaimable queued jobs, then jobs to publish."""
    now = now or utcnow()
    report = SweepReport()
    with transaction(sessions) as session:
        # Flagged first, so a lease that expired past the deadline ends canceled, not requeued.
        flag_overdue_running(session, now=now)
        report.expired = expire_overdue(session, now=now, limit=BATCH_LIMIT)
    with transaction(sessions) as session:
        _expire_leases(session, now, report)
    with transaction(sessions) as session:
        _settle_unclaimable(session, report)
    report.republished = _publish_due(sessions, celery, settings, now)
    with transaction(sessions) as session:
        settle_forgotten(session)
    return report


def _expire_leases(session: Session, now: datetime, report: SweepReport) -> None:
    expired = session.execute(
        select(Job.id, Job.attempts, Job.max_attempts, Job.cancel_requested_at)
        .where(Job.status == JobStatus.RUNNING.value, Job.lease_expires_at < now)
        .order_by(Job.lease_expires_at)
        .limit(BATCH_LIMIT)
        .with_for_update(skip_locked=True)
    ).all()
    still_expired = [Job.lease_expires_at < now]
    for job_id, attempt, max_attempts, cancel_requested_at in expired:
        if cancel_requested_at is not None:
            report.canceled += _end_canceled(session, job_id, attempt, still_expired)
        elif attempt >= max_attempts:
            report.exhausted += _end_exhausted(session, job_id, attempt, still_expired)
        elif transition(
            session,
            job_id,
            to=JobStatus.QUEUED,
            expect=[JobStatus.RUNNING],
            attempt=attempt,
            where=still_expired,
            values={
                "worker_id": None,
                "lease_expires_at": None,
                "published_at": None,
                "available_at": None,
            },
            event_data={"reason": "lease_expired"},
        ):
            report.requeued += 1


def _settle_unclaimable(session: Session, report: SweepReport) -> None:
    # Queued jobs that no claim would take: out of attempts (released after the last one), or
    # flagged for cancel while a worker was handing them back.
    rows = session.execute(
        select(Job.id, Job.attempts, Job.cancel_requested_at)
        .where(
            Job.status == JobStatus.QUEUED.value,
            or_(Job.attempts >= Job.max_attempts, Job.cancel_requested_at.is_not(None)),
        )
        .limit(BATCH_LIMIT)
        .with_for_update(skip_locked=True)
    ).all()
    for job_id, attempt, cancel_requested_at in rows:
        if cancel_requested_at is not None:
            report.canceled += bool(
                transition(
                    session,
                    job_id,
                    to=JobStatus.CANCELED,
                    expect=[JobStatus.QUEUED],
                    values={"finished_at": utcnow()},
                    event_data={"by": "client"},
                )
            )
        else:
            report.exhausted += _end_exhausted(session, job_id, attempt, None)


def _end_canceled(
    session: Session, job_id: str, attempt: int, where: list[ColumnElement[bool]]
) -> int:
    ended = transition(
        session,
        job_id,
        to=JobStatus.CANCELED,
        expect=[JobStatus.RUNNING],
        attempt=attempt,
        where=where,
        values={"finished_at": utcnow(), "lease_expires_at": None},
        event_data={"by": "client", "reason": "lease_expired"},
    )
    return int(ended is not None)


def _end_exhausted(
    session: Session, job_id: str, attempt: int, lease_expired: list[ColumnElement[bool]] | None
) -> int:
    """Fail a job out of attempts: running with an expired lease, or queued (lease None)."""
    ended = fail_job(
        session,
        job_id,
        attempt=attempt,
        expect=[JobStatus.QUEUED if lease_expired is None else JobStatus.RUNNING],
        where=lease_expired or (),
        code="attempts_exhausted",
        message=f"the job was claimed {attempt} times without finishing; giving up",
    )
    return int(ended is not None)


def _due_for_publishing(settings: Settings, now: datetime) -> ColumnElement[bool]:
    stale_before = now - timedelta(seconds=settings.stale_queued_s)
    return and_(
        Job.status == JobStatus.QUEUED.value,
        # A job naming a model this deployment does not serve stays queued, out of the way.
        Job.model.in_([m.alias for m in settings.models]),
        or_(Job.published_at.is_(None), Job.published_at < stale_before),
        or_(Job.available_at.is_(None), Job.available_at <= now),
    )


def _publish_due(
    sessions: sessionmaker[Session], celery: Celery, settings: Settings, now: datetime
) -> int:
    due = _due_for_publishing(settings, now)
    # Take the right to publish first: a second sweeper sees fresh published_at and skips.
    with transaction(sessions) as session:
        rows = session.execute(
            select(Job.id, Job.model, Job.priority)
            .where(due)
            .order_by(Job.priority.desc(), Job.created_at)
            .limit(BATCH_LIMIT)
            .with_for_update(skip_locked=True)
        ).all()
        if rows:
            session.execute(
                update(Job)
                .where(Job.id.in_([row.id for row in rows]), due)
                .values(published_at=now)
                .execution_options(synchronize_session=False)
            )
    for index, (job_id, alias, priority) in enumerate(rows):
        model = settings.model(alias)
        assert model is not None  # the query only takes registered models
        try:
            publish_job(celery, model, job_id, priority=priority)
        except Exception:  # noqa: BLE001 - the broker is down: try these again next sweep
            log.warning("publishing failed; %d jobs left for the next sweep", len(rows) - index)
            mark_unpublished(sessions, [row.id for row in rows[index:]])
            return index
    return len(rows)


def run_forever(
    *,
    sessions: sessionmaker[Session],
    celery: Celery,
    settings: Settings,
    storage: ObjectStorage | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Sweep every sweep_interval_s, and purge expired data every retention_interval_s."""
    stop = stop or threading.Event()
    next_retention = time.monotonic()
    while not stop.is_set():
        try:
            report = sweep_once(sessions=sessions, celery=celery, settings=settings)
            record_sweep(report)
            if report:
                log.info("sweep: %s", report)
            if storage is not None and time.monotonic() >= next_retention:
                next_retention = time.monotonic() + settings.retention_interval_s
                purged = purge_expired(sessions=sessions, storage=storage, settings=settings)
                if purged:
                    log.info("retention: %s", purged)
        except Exception:  # noqa: BLE001 - the next sweep retries
            log.exception("sweep failed")
        stop.wait(settings.sweep_interval_s)
