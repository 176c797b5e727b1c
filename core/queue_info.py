"""Why a queued job waits: its place in line, when it should start, and what holds it up.

Cost, per request: a job's position is one count on the (model, status, priority, created_at)
index over the jobs ahead of it, stopped at POSITION_CAP rows, so it never reads more than
that many index entries whatever the queue holds. The model figures (queued and running
counts, jobs finished in the last THROUGHPUT_WINDOW_S, fresh workers by state) are three
grouped queries on indexed columns, shared by every request of an API process for
Settings.model_stats_ttl_s; `GET /v1/models` and every job poll read that cached snapshot.
Whether the job's tenant is at its running limit is one primary-key read and, for a limited
tenant, one count on the (tenant_id, status) index stopped at the limit (core.running_limits).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from core.config import Settings
from core.db import utcnow
from core.models import Job, JobStatus, Worker
from core.running_limits import at_limit

POSITION_CAP = 10_000
THROUGHPUT_WINDOW_S = 300.0
FINISHED = (JobStatus.SUCCEEDED.value, JobStatus.FAILED.value)


@dataclass(frozen=True)
class ModelStats:
    """What one model's queue looks like now."""

    queued: int = 0
    running: int = 0
    finished_recently: int = 0  # jobs that ended succeeded or failed in the window
    ready_workers: int = 0
    starting_workers: int = 0

    @property
    def throughput_per_s(self) -> float:
        """Jobs finished per second over the last THROUGHPUT_WINDOW_S."""
        return self.finished_recently / THROUGHPUT_WINDOW_S


@dataclass(frozen=True)
class QueueInfo:
    """A queued job's place in line, its estimated wait, and why nothing moves (if so)."""

    position: int
    estimated_start_s: float | None
    reason: str | None  # tenant_limit | no_worker | workers_starting | None while it moves


class ModelStatsCache:
    """Every model's figures, read at most once per Settings.model_stats_ttl_s (per process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._read_at = float("-inf")
        self._stats: dict[str, ModelStats] = {}

    def get(self, session: Session, settings: Settings) -> dict[str, ModelStats]:
        """The cached figures, read again once older than model_stats_ttl_s."""
        with self._lock:
            if time.monotonic() - self._read_at >= settings.model_stats_ttl_s:
                self._stats = read_model_stats(session, settings)
                self._read_at = time.monotonic()
            return self._stats


def read_model_stats(
    session: Session, settings: Settings, now: datetime | None = None
) -> dict[str, ModelStats]:
    """Queue depth, recent throughput and fresh workers of every model, from the database."""
    now = now or utcnow()
    open_counts = {
        (model, status): int(count)
        for model, status, count in session.execute(
            select(Job.model, Job.status, func.count())
            .where(Job.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value]))
            .group_by(Job.model, Job.status)
        )
    }
    since = now - timedelta(seconds=THROUGHPUT_WINDOW_S)
    finished = dict(
        session.execute(
            select(Job.model, func.count())
            .where(Job.status.in_(FINISHED), Job.finished_at >= since)
            .group_by(Job.model)
        ).all()
    )
    fresh = now - timedelta(seconds=settings.heartbeat_s * 3)
    workers = {
        (model, state): int(count)
        for model, state, count in session.execute(
            select(Worker.model, Worker.state, func.count())
            .where(Worker.last_heartbeat_at >= fresh, Worker.state.in_(("starting", "ready")))
            .group_by(Worker.model, Worker.state)
        )
    }
    return {
        spec.alias: ModelStats(
            queued=open_counts.get((spec.alias, JobStatus.QUEUED.value), 0),
            running=open_counts.get((spec.alias, JobStatus.RUNNING.value), 0),
            finished_recently=int(finished.get(spec.alias, 0)),
            ready_workers=workers.get((spec.alias, "ready"), 0),
            starting_workers=workers.get((spec.alias, "starting"), 0),
        )
        for spec in settings.models
    }


def queue_position(session: Session, job: Job) -> int:
    """Queued jobs of the job's model ahead of it (higher priority, or same and older)."""
    ahead = (
        select(Job.id)
        .where(
            Job.model == job.model,
            Job.status == JobStatus.QUEUED.value,
            or_(
                Job.priority > job.priority,
                and_(Job.priority == job.priority, Job.created_at < job.created_at),
            ),
        )
        .limit(POSITION_CAP)
        .subquery()
    )
    return int(session.scalar(select(func.count()).select_from(ahead)) or 0)


def explain_wait(position: int, stats: ModelStats) -> QueueInfo:
    """The estimate and reason for a job with `position` jobs ahead of it."""
    if stats.ready_workers == 0:
        reason = "workers_starting" if stats.starting_workers else "no_worker"
        return QueueInfo(position, None, reason)
    rate = stats.throughput_per_s
    if rate <= 0:  # ready workers, but nothing finished lately to measure them by
        return QueueInfo(position, None, None)
    return QueueInfo(position, round(position / rate, 1), None)


def waiting_fields(
    session: Session, job: Job, stats: dict[str, ModelStats], *, running_limit: int = 0
) -> dict[str, object]:
    """The queue fields of a queued job's public view (api.md): position, estimate, reason.

    `running_limit`: max_running_jobs_per_tenant, for tenants without a limit of their own.
    """
    position = queue_position(session, job)
    if at_limit(session, job.tenant_id, running_limit):
        # Its tenant's running jobs hold it back: the model's pace says nothing of its start.
        info = QueueInfo(position, None, "tenant_limit")
    else:
        info = explain_wait(position, stats.get(job.model, ModelStats()))
    return {
        "queue_position": info.position,
        "estimated_start_s": info.estimated_start_s,
        "queue_reason": info.reason,
    }
