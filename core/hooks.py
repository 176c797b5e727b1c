"""Follow-ups of job status changes that every process changing statuses installs at start."""

from __future__ import annotations

from core.batches import settle_after_commit
from core.jobs import add_event_listener
from core.notify import JobFeed, install_publisher


def install_job_hooks(feed: JobFeed | None) -> None:
    """Wake long-polls on terminal events, and settle batches whose last job ended."""
    install_publisher(feed)
    add_event_listener(settle_after_commit)
