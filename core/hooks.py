"""Follow-ups of job status changes that every process changing statuses installs at start."""

from __future__ import annotations

from sqlalchemy.orm import Session

from core.batches import batch_counts, on_batch_finished, settle_after_commit
from core.jobs import add_event_listener
from core.models import Batch
from core.notify import JobFeed, install_publisher
from core.views import batch_public
from core.webhooks import record_batch_event


def install_job_hooks(feed: JobFeed | None) -> None:
    """Wake long-polls on terminal events; settle batches whose last job ended (webhook)."""
    install_publisher(feed)
    add_event_listener(settle_after_commit)
    on_batch_finished(_queue_batch_webhook)


def _queue_batch_webhook(session: Session, batch: Batch) -> None:
    data = batch_public(batch, batch_counts(session, batch.id))
    record_batch_event(session, batch, "batch.completed", data=data)
