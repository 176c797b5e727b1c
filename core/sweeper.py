"""The recovery sweeper: gets every accepted job to a worker, whatever was lost on the way.

It republishes queued jobs whose message may be gone, requeues running jobs whose worker
stopped renewing its lease, and fails jobs that used up their attempts. Every change is a
conditional update, so two sweepers running at once do no harm.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from celery import Celery
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from core.batches import settle_forgotten
from core.config import Settings
from core.db import transaction, utcnow
from core.jobs import fail_job, transition
from core.metrics import record_sweep
from core.models import Job, JobStatus
from core.queue import publish_job

log = logging.getLogger("core.sweeper")
BATCH_LIMIT = 500


@dataclass
class SweepReport:
    """What one sweep did."""

    republished: int = 0
    requeued: int = 0
    exhausted: int = 0


def sweep_once(
    *,
    sessions: sessionmaker[Session],
    celery: Celery,
    settings: Settings,
    now: datetime | None = None,
) -> SweepReport:
    """One pass: expired leases, exhausted attempts, then stale queued jobs."""
    now = now or utcnow()
    report = SweepReport()
    with transaction(sessions) as session:
        report.requeued, report.exhausted = _expire_leases(session, now)
    report.republished = _republish_stale(sessions, celery, settings, now)
    with transaction(sessions) as session:
        settle_forgotten(session)
    return report


def _expire_leases(session: Session, now: datetime) -> tuple[int, int]:
    expired = session.execute(
        select(Job.id, Job.attempts, Job.max_attempts)
        .where(Job.status == JobStatus.RUNNING.value, Job.lease_expires_at < now)
        .limit(BATCH_LIMIT)
    ).all()
    requeued = exhausted = 0
    for job_id, attempt, max_attempts in expired:
        if attempt >= max_attempts:
            if fail_job(
                session,
                job_id,
                attempt=attempt,
                code="attempts_exhausted",
                message=f"the job's worker stopped {attempt} times; giving up",
            ):
                exhausted += 1
        elif transition(
            session,
            job_id,
            to=JobStatus.QUEUED,
            expect=[JobStatus.RUNNING],
            attempt=attempt,
            where=[Job.lease_expires_at < now],
            values={"worker_id": None, "lease_expires_at": None, "published_at": None},
            event_data={"reason": "lease_expired"},
        ):
            requeued += 1
    return requeued, exhausted + _fail_exhausted_queued(session)


def _fail_exhausted_queued(session: Session) -> int:
    # A job released after its last allowed attempt can never be claimed again.
    rows = session.execute(
        select(Job.id, Job.attempts)
        .where(Job.status == JobStatus.QUEUED.value, Job.attempts >= Job.max_attempts)
        .limit(BATCH_LIMIT)
    ).all()
    failed = 0
    for job_id, attempt in rows:
        if fail_job(
            session,
            job_id,
            attempt=attempt,
            expect=[JobStatus.QUEUED],
            code="attempts_exhausted",
            message=f"the job was tried {attempt} times; giving up",
        ):
            failed += 1
    return failed


def _republish_stale(
    sessions: sessionmaker[Session], celery: Celery, settings: Settings, now: datetime
) -> int:
    stale_before = now - timedelta(seconds=settings.stale_queued_s)
    with transaction(sessions) as session:
        rows = session.execute(
            select(Job.id, Job.model, Job.priority, Job.published_at)
            .where(
                Job.status == JobStatus.QUEUED.value,
                or_(Job.published_at.is_(None), Job.published_at < stale_before),
            )
            .order_by(Job.created_at)
            .limit(BATCH_LIMIT)
        ).all()
    count = 0
    for job_id, alias, priority, published_at in rows:
        model = settings.model(alias)
        if model is None:
            log.error("job %s names model %s, which is not in the registry", job_id, alias)
            continue
        # Claim the right to publish: only the sweeper whose update matches publishes.
        with transaction(sessions) as session:
            claimed = session.execute(
                update(Job)
                .where(
                    Job.id == job_id,
                    Job.status == JobStatus.QUEUED.value,
                    Job.published_at.is_(None)
                    if published_at is None
                    else Job.published_at == published_at,
                )
                .values(published_at=now)
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
        if claimed:
            publish_job(celery, model, job_id, priority=priority)
            count += 1
    return count


def run_forever(
    *,
    sessions: sessionmaker[Session],
    celery: Celery,
    settings: Settings,
    stop: threading.Event | None = None,
) -> None:
    """Sweep every sweep_interval_s until stopped; errors are logged and the loop goes on."""
    stop = stop or threading.Event()
    while not stop.is_set():
        try:
            report = sweep_once(sessions=sessions, celery=celery, settings=settings)
            record_sweep(report)
            if report.republished or report.requeued or report.exhausted:
                log.info(
                    "sweep: %d republished, %d requeued, %d exhausted",
                    report.republished,
                    report.requeued,
                    report.exhausted,
                )
        except Exception:  # noqa: BLE001 - the next sweep retries
            log.exception("sweep failed")
        stop.wait(settings.sweep_interval_s)
