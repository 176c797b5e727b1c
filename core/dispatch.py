"""Handing committed jobs to the broker: publish now, or leave the job for the sweeper.

A job row is committed before its message is published. When publishing fails (broker down,
process killed in between), the row still says `queued` and the sweeper publishes it later:
at once when `published_at` is NULL, after stale_queued_s otherwise.
"""

from __future__ import annotations

import logging

from celery import Celery
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from core.config import ModelSpec
from core.db import transaction
from core.models import Job, JobStatus
from core.queue import publish_job

log = logging.getLogger("core.dispatch")


def publish_or_defer(
    *,
    sessions: sessionmaker[Session],
    celery: Celery,
    model: ModelSpec,
    job_id: str,
    priority: int,
) -> bool:
    """Publish a committed queued job; on failure mark it for the sweeper. True if published."""
    try:
        publish_job(celery, model, job_id, priority=priority)
    except Exception:  # noqa: BLE001 - the job is safe in the database either way
        log.warning("publishing job %s failed; the sweeper will publish it", job_id, exc_info=True)
        mark_unpublished(sessions, [job_id])
        return False
    return True


def mark_unpublished(sessions: sessionmaker[Session], job_ids: list[str]) -> None:
    """Clear published_at of queued jobs so that the next sweep publishes them (best effort)."""
    try:
        with transaction(sessions) as session:
            session.execute(
                update(Job)
                .where(Job.id.in_(job_ids), Job.status == JobStatus.QUEUED.value)
                .values(published_at=None)
                .execution_options(synchronize_session=False)
            )
    except Exception:  # noqa: BLE001 - then the stale-queued rule publishes them later
        log.warning("could not mark %d jobs unpublished", len(job_ids), exc_info=True)
