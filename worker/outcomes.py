"""Recording how a job ended: every outcome is a fenced write, retried while the database is down.

Each write is conditional on the attempt this worker holds (a job whose lease was lost is
written by its new owner only), and is retried while the database is unreachable; the Celery
task returns, and so acknowledges its message, only after it. The runtime (worker.runtime)
hands each finished, stopped or failed job to an OutcomeWriter:

- a generation that finished stores its text and usage (`complete`);
- a stopped one (`after_stop`) is canceled for a client's cancel, left alone when its lease
  was lost, and handed back at once for a shutdown, without counting the attempt;
- an error (`after_error`) fails the job with its code when it is permanent (one that fails
  however often the job is retried), and otherwise gives the job back with a backoff, until
  its attempts run out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from celery import Celery
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from core.config import ModelSpec, Settings
from core.db import utcnow
from core.dispatch import publish_or_defer
from core.errors import ServiceError
from core.jobs import cancel_job, complete_job, fail_job, release_job
from core.models import Job
from core.retry import is_transient, retry_transient
from worker.claims import Held
from worker.engine import Generation
from worker.group_commit import GroupCommitter

log = logging.getLogger("worker.outcomes")

# How long a finished job's result write is retried while the database is unreachable.
RESULT_WRITE_DEADLINE_S = 600.0


class OutcomeWriter:
    """Writes one worker's job outcomes (see the module's doc); each method returns the outcome."""

    def __init__(
        self,
        *,
        settings: Settings,
        spec: ModelSpec,
        sessions: sessionmaker[Session],
        celery: Celery | None,
        write_deadline_s: float = RESULT_WRITE_DEADLINE_S,
        commits: GroupCommitter | None = None,
    ) -> None:
        self.settings = settings
        self.spec = spec
        self.sessions = sessions
        # The worker's task threads share one, so outcomes written together commit together.
        self.commits = commits or GroupCommitter(sessions)
        self.celery = celery  # publishes jobs handed back at shutdown; else the sweeper does
        self.write_deadline_s = write_deadline_s

    def complete(self, job: Job, held: Held, generation: Generation, usage: dict[str, Any]) -> str:
        """Store a finished generation: 'succeeded', or 'superseded' if the attempt is gone."""
        result: dict[str, Any] = {
            "text": generation.text,
            "finish_reason": generation.finish_reason,
            **generation.extra,  # structured output: the parsed value as "json"
        }
        if generation.seed is not None:
            result["seed"] = generation.seed  # sampled: the seed that reproduces this text
        stored = self.write(
            lambda s: complete_job(s, job.id, attempt=held.attempt, result=result, usage=usage)
        )
        return "succeeded" if stored else "superseded"

    def after_stop(self, job: Job, held: Held, *, usage: dict[str, Any] | None) -> str:
        """A generation stopped for its held.stop_reason (lost, canceled or shutdown)."""
        if held.stop_reason == "lost":  # another attempt owns the job now; writes are fenced
            return "superseded"
        if held.stop_reason == "canceled":
            ended = self.write(lambda s: cancel_job(s, job.id, attempt=held.attempt, usage=usage))
            return "canceled" if ended else "superseded"
        released = self.write(
            lambda s: release_job(
                s,
                job.id,
                attempt=held.attempt,
                reason="worker_shutdown",
                published=True,
                refund_attempt=True,
            )
        )
        if released is None or released.status != "queued":
            return "superseded" if released is None else released.status
        if self.celery is not None:
            publish_or_defer(
                sessions=self.sessions,
                celery=self.celery,
                model=self.spec,
                job_id=job.id,
                priority=job.priority,
            )
        return "released"

    def after_error(self, job: Job, held: Held, exc: Exception) -> str:
        """A job that raised: failed if the error is permanent or its attempts ran out, else
        handed back to run again after a backoff."""
        permanent = permanent_code(exc)
        if permanent is not None:
            code, message = permanent
            self.write(
                lambda s: fail_job(s, job.id, code=code, message=message, attempt=held.attempt)
            )
            return "failed"
        reason = f"{type(exc).__name__}: {exc}"
        if not is_transient(exc):
            log.error("job %s raised an unexpected error", job.id, exc_info=exc)
        if held.attempt >= job.max_attempts:
            message = f"the job failed {held.attempt} times; last error: {reason}"
            self.write(
                lambda s: fail_job(
                    s, job.id, code="attempts_exhausted", message=message, attempt=held.attempt
                )
            )
            return "failed"
        delay = min(
            self.settings.retry_backoff_max_s,
            self.settings.retry_backoff_s * 2 ** (held.attempt - 1),
        )
        log.warning("job %s: %s; it runs again in %.1fs", job.id, reason, delay)
        self.write(
            lambda s: release_job(
                s,
                job.id,
                attempt=held.attempt,
                reason=reason[:500],
                available_at=utcnow() + timedelta(seconds=delay),
            )
        )
        return "released"

    def write(self, change: Callable[[Session], Any]) -> Any:
        """Apply a fenced state change, retrying while the database is unreachable."""
        return retry_transient(
            lambda: self.commits.run(change),
            what="writing a job result",
            deadline_s=self.write_deadline_s,
        )


def permanent_code(exc: Exception) -> tuple[str, str] | None:
    """(code, message) for errors that fail however often the job is retried."""
    if isinstance(exc, ServiceError) and exc.permanent:
        return exc.code, exc.detail
    if isinstance(exc, ValidationError):
        return "invalid_params", str(exc)
    return None
