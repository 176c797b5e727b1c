"""The autoscaling signal: queue depth per model and the age of the oldest queued job.

The jobs table is the source of truth (a job is queued there even while its message is being
republished), so depth and age come from one grouped query on the (status, ...) indexes. The
broker's own queue lengths are reported beside them: a large gap between the two means the
sweeper is catching up with lost or unpublished messages.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from celery import Celery
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings
from core.db import utcnow
from core.models import Job, JobStatus, WebhookDelivery, Worker, WorkerState

log = logging.getLogger("core.queue_stats")
# Workers silent for longer than this are no longer reported at all.
FORGET_WORKERS_AFTER = timedelta(hours=1)


@dataclass(frozen=True)
class ModelQueue:
    """How much work waits for one model, and how long the oldest job has waited."""

    model: str
    queue: str
    queued: int
    running: int
    oldest_queued_age_s: float


def queue_depths(
    session: Session, settings: Settings, now: datetime | None = None
) -> list[ModelQueue]:
    """Queued and running jobs per model of the registry (zeros included), from the database."""
    now = now or utcnow()
    rows = session.execute(
        select(Job.model, Job.status, func.count(), func.min(Job.created_at))
        .where(Job.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value]))
        .group_by(Job.model, Job.status)
    ).all()
    counts: dict[tuple[str, str], tuple[int, datetime | None]] = {
        (model, status): (count, oldest) for model, status, count, oldest in rows
    }
    depths = []
    for spec in settings.models:
        queued, oldest = counts.get((spec.alias, JobStatus.QUEUED.value), (0, None))
        running, _ = counts.get((spec.alias, JobStatus.RUNNING.value), (0, None))
        age = max((now - oldest).total_seconds(), 0.0) if oldest is not None else 0.0
        depths.append(ModelQueue(spec.alias, spec.queue, queued, running, age))
    return depths


def broker_queue_length(celery: Celery, queue: str) -> int:
    """Messages waiting in a broker queue (every priority level); 0 when it does not exist."""
    with celery.connection_for_read() as connection:
        channel = connection.default_channel
        try:
            return int(channel.queue_declare(queue=queue, passive=True).message_count)
        except connection.channel_errors:
            return 0  # never declared yet: nothing was ever published to it


class QueueStatsCollector(Collector):
    """Gauges read at scrape time: queue depth and age per model, workers, pending webhooks."""

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        settings: Settings,
        celery: Celery | None = None,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.celery = celery

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The gauges; `internvl_jobs_queue_stats_up` is 0 when the database did not answer."""
        up = GaugeMetricFamily(
            "internvl_jobs_queue_stats_up", "1 when the database answered this scrape."
        )
        try:
            with self.sessions() as session:
                families = list(self._database_families(session))
        except Exception:  # noqa: BLE001 - a scrape must answer even with the database down
            log.warning("queue statistics unavailable", exc_info=True)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families
        if self.celery is not None:
            yield from self._broker_families()

    def _database_families(self, session: Session) -> Iterator[GaugeMetricFamily]:
        now = utcnow()
        depth = GaugeMetricFamily(
            "internvl_jobs_queue_depth",
            "Jobs queued in the database for each model (the autoscaling signal).",
            labels=["model", "queue"],
        )
        age = GaugeMetricFamily(
            "internvl_jobs_queue_oldest_age_seconds",
            "Age of the oldest queued job of each model; 0 when none waits.",
            labels=["model", "queue"],
        )
        running = GaugeMetricFamily(
            "internvl_jobs_jobs_running", "Jobs a worker holds now.", labels=["model"]
        )
        for item in queue_depths(session, self.settings, now):
            depth.add_metric([item.model, item.queue], item.queued)
            age.add_metric([item.model, item.queue], item.oldest_queued_age_s)
            running.add_metric([item.model], item.running)
        yield from (depth, age, running)
        yield from self._worker_families(session, now)
        pending = session.scalar(
            select(func.count())
            .select_from(WebhookDelivery)
            .where(WebhookDelivery.status == "pending")
        )
        webhooks = GaugeMetricFamily(
            "internvl_jobs_webhook_deliveries_pending", "Webhook deliveries not yet sent."
        )
        webhooks.add_metric([], pending or 0)
        yield webhooks

    def _worker_families(self, session: Session, now: datetime) -> Iterator[GaugeMetricFamily]:
        rows = session.execute(
            select(Worker.id, Worker.model, Worker.state, Worker.last_heartbeat_at).where(
                Worker.last_heartbeat_at >= now - FORGET_WORKERS_AFTER,
                Worker.state != WorkerState.STOPPED,
            )
        ).all()
        fresh_after = now - timedelta(seconds=self.settings.heartbeat_s * 3)
        workers = GaugeMetricFamily(
            "internvl_jobs_workers",
            "Worker processes by model and state ('lost': no heartbeat for 3 intervals).",
            labels=["model", "state"],
        )
        ages = GaugeMetricFamily(
            "internvl_jobs_worker_heartbeat_age_seconds",
            "Seconds since each worker's last heartbeat.",
            labels=["worker", "model"],
        )
        counts: dict[tuple[str, str], int] = {}
        for worker_id, model, state, beat in rows:
            key = (model, state if beat >= fresh_after else "lost")
            counts[key] = counts.get(key, 0) + 1
            ages.add_metric([worker_id, model], max((now - beat).total_seconds(), 0.0))
        for (model, state), count in sorted(counts.items()):
            workers.add_metric([model, state], count)
        yield from (workers, ages)

    def _broker_families(self) -> Iterator[GaugeMetricFamily]:
        assert self.celery is not None
        family = GaugeMetricFamily(
            "internvl_jobs_broker_queue_length",
            "Messages waiting in each model's broker queue.",
            labels=["model", "queue"],
        )
        try:
            for spec in self.settings.models:
                family.add_metric(
                    [spec.alias, spec.queue], broker_queue_length(self.celery, spec.queue)
                )
        except Exception:  # noqa: BLE001 - the database figures are still worth answering
            log.warning("broker queue lengths unavailable", exc_info=True)
            return
        yield family
