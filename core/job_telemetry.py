"""Job events as logs and metrics, emitted only once their transaction has committed.

core.jobs calls its listeners inside the transaction of each status change; a change that is
rolled back must neither count nor be logged, so the listener here only notes what happened
and the note is turned into one log line and the job metrics after COMMIT.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from core import metrics
from core.jobs import add_event_listener
from core.logs import bind_log_context, current_log_context
from core.models import Job
from core.specs import TERMINAL_EVENTS

log = logging.getLogger("internvl_jobs.jobs")
_PENDING_KEY = "internvl_jobs_job_events"
# The status label of each terminal event: job.failed -> failed.
FINISHED_AS = {event: event.removeprefix("job.") for event in TERMINAL_EVENTS}


@dataclass(frozen=True)
class JobEventNote:
    """What a committed job event says, copied from the row while the session had it."""

    event: str
    job_id: str
    tenant_id: str
    worker_id: str | None
    model: str
    task: str
    attempt: int
    created_at: datetime
    started_at: datetime | None
    usage: dict[str, Any] | None
    error_code: str | None

    @classmethod
    def of(cls, job: Job, event_type: str) -> JobEventNote:
        """A note of this job's event."""
        return cls(
            event=event_type,
            job_id=job.id,
            tenant_id=job.tenant_id,
            worker_id=job.worker_id,
            model=job.model,
            task=job.task,
            attempt=job.attempts,
            created_at=job.created_at,
            started_at=job.started_at,
            usage=dict(job.usage) if job.usage else None,
            error_code=job.error_code,
        )


def note_job_event(session: Session, job: Job, event_type: str) -> None:
    """The core.jobs listener: remember the event until the transaction commits."""
    session.info.setdefault(_PENDING_KEY, []).append(JobEventNote.of(job, event_type))
    context = current_log_context()
    if context.get("job_id") == job.id and "tenant" not in context:
        bind_log_context(tenant=job.tenant_id)  # later lines of this job's task say whose it is


def _after_commit(session: Session) -> None:
    for note in session.info.pop(_PENDING_KEY, []):
        try:
            emit(note)
        except Exception:  # noqa: BLE001 - telemetry never breaks a committed change
            log.warning("could not record job event %s", note.event, exc_info=True)


def _after_rollback(session: Session) -> None:
    session.info.pop(_PENDING_KEY, None)


def emit(note: JobEventNote) -> None:
    """One log line and the metrics of a committed job event."""
    fields: dict[str, Any] = {
        "job_id": note.job_id,
        "tenant": note.tenant_id,
        "event": note.event,
        "model": note.model,
        "task": note.task,
        "attempt": note.attempt,
    }
    if note.worker_id:
        fields["worker"] = note.worker_id
    if note.error_code:
        fields["error_code"] = note.error_code
    if note.usage:
        for key in ("queue_s", "inference_s", "prompt_tokens", "completion_tokens"):
            if key in note.usage:
                fields[key] = note.usage[key]
    log.info("%s %s", note.event, note.job_id, extra=fields)
    _count(note)


def _count(note: JobEventNote) -> None:
    if note.event == "job.queued":
        if note.attempt == 0:
            metrics.JOBS_SUBMITTED.labels(note.model, note.task).inc()
        else:
            metrics.JOBS_REQUEUED.labels(note.model).inc()
    elif note.event == "job.running" and note.started_at is not None:
        wait_s = (note.started_at - note.created_at).total_seconds()
        metrics.QUEUE_WAIT.labels(note.model).observe(max(wait_s, 0.0))
    elif note.event in FINISHED_AS:
        metrics.JOBS_FINISHED.labels(note.model, note.task, FINISHED_AS[note.event]).inc()
        inference_s = (note.usage or {}).get("inference_s")
        if note.event == "job.succeeded" and isinstance(inference_s, int | float):
            metrics.INFERENCE_TIME.labels(note.model, note.task).observe(inference_s)


def install_job_telemetry() -> None:
    """Log and count every committed job event of this process (idempotent)."""
    add_event_listener(note_job_event)
    if not event.contains(Session, "after_commit", _after_commit):
        event.listen(Session, "after_commit", _after_commit)
        event.listen(Session, "after_rollback", _after_rollback)
