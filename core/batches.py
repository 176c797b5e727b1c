"""Batches: jobs submitted together, counted by status, settled once all of them are terminal.

Settling runs after the commit of each terminal job event of a batch, in its own transaction
that locks the batch row: whichever job commits last sees every other one terminal, so exactly
one transaction marks the batch finished (and records its webhook). The sweeper settles any
batch a crashed process left behind.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from core.db import run_after_commit, utcnow
from core.ids import new_id
from core.jobs import cancel_queued
from core.models import TERMINAL_STATUSES, Batch, Job, JobStatus
from core.views import batch_result_line

log = logging.getLogger("core.batches")
RESULTS_PAGE = 500
BatchFinished = Callable[[Session, Batch], None]
_on_finished: list[BatchFinished] = []


def on_batch_finished(callback: BatchFinished) -> None:
    """Run callback(session, batch) in the transaction that marks a batch finished."""
    if callback not in _on_finished:
        _on_finished.append(callback)


def create_batch(
    session: Session,
    *,
    tenant_id: str,
    total: int,
    webhook: dict[str, Any] | None,
    metadata: dict[str, Any],
) -> Batch:
    """Insert a batch row; its jobs are created next in the same transaction."""
    batch = Batch(
        id=new_id("batch"),
        tenant_id=tenant_id,
        total=total,
        webhook_url=webhook["url"] if webhook else None,
        webhook_events=list(webhook["events"]) if webhook else None,
        meta=metadata,
        created_at=utcnow(),
    )
    session.add(batch)
    session.flush()
    return batch


def batch_counts(session: Session, batch_id: str) -> dict[str, int]:
    """How many of the batch's jobs are in each status."""
    rows = session.execute(
        select(Job.status, func.count()).where(Job.batch_id == batch_id).group_by(Job.status)
    ).all()
    counts = {status.value: 0 for status in JobStatus}
    counts.update({status: int(count) for status, count in rows})
    return counts


def settle_batch(session: Session, batch_id: str) -> bool:
    """Mark the batch finished if all its jobs are terminal; True if this call did it."""
    batch = session.scalar(select(Batch).where(Batch.id == batch_id).with_for_update())
    if batch is None or batch.finished_at is not None:
        return False
    open_jobs = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.batch_id == batch_id, Job.status.not_in([s.value for s in TERMINAL_STATUSES]))
    )
    if open_jobs:
        return False
    batch.finished_at = utcnow()
    session.flush()
    for callback in _on_finished:
        callback(session, batch)
    return True


def settle_after_commit(session: Session, job: Job, event_type: str) -> None:
    """Job event listener: once a batch job's terminal change commits, try to settle its batch."""
    if job.batch_id is None or not JobStatus(job.status).is_terminal():
        return
    engine, batch_id = session.get_bind(), job.batch_id
    run_after_commit(session, lambda: _settle_in_own_transaction(engine, batch_id))


def _settle_in_own_transaction(engine: Any, batch_id: str) -> None:
    assert isinstance(engine, Engine)
    with Session(engine) as session, session.begin():
        if settle_batch(session, batch_id):
            log.info("batch %s finished", batch_id)


def settle_forgotten(session: Session, *, limit: int = 100) -> int:
    """Settle open batches with no open job left (a process died before settling them)."""
    open_job = (
        select(Job.id)
        .where(Job.batch_id == Batch.id, Job.status.not_in([s.value for s in TERMINAL_STATUSES]))
        .exists()
    )
    open_batches = select(Batch.id).where(Batch.finished_at.is_(None), ~open_job).limit(limit)
    settled = 0
    for batch_id in session.scalars(open_batches).all():
        settled += settle_batch(session, batch_id)
    return settled


def cancel_batch(session: Session, batch: Batch) -> int:
    """Cancel the batch's queued jobs now and ask workers to stop its running ones."""
    now = utcnow()
    if batch.cancel_requested_at is None:
        batch.cancel_requested_at = now
    queued = session.scalars(
        select(Job.id).where(Job.batch_id == batch.id, Job.status == JobStatus.QUEUED.value)
    ).all()
    canceled = 0
    for job_id in queued:
        done = cancel_queued(session, job_id, now=now, event_data={"reason": "batch_canceled"})
        canceled += done is not None
    session.execute(
        update(Job)
        .where(
            Job.batch_id == batch.id,
            Job.status == JobStatus.RUNNING.value,
            Job.cancel_requested_at.is_(None),
        )
        .values(cancel_requested_at=now)
        .execution_options(synchronize_session=False)
    )
    return canceled


def result_lines(session: Session, batch_id: str) -> Iterator[dict[str, Any]]:
    """One record per job of the batch, in submission order, read a page at a time."""
    after: tuple[datetime, str] | None = None
    while True:
        query = select(Job).where(Job.batch_id == batch_id)
        if after is not None:
            query = query.where(
                (Job.created_at > after[0]) | ((Job.created_at == after[0]) & (Job.id > after[1]))
            )
        page = list(session.scalars(query.order_by(Job.created_at, Job.id).limit(RESULTS_PAGE)))
        for job in page:
            yield batch_result_line(job)
        if len(page) < RESULTS_PAGE:
            return
        after = (page[-1].created_at, page[-1].id)
        session.expunge_all()
