"""Helpers for webhook sender tests: settle a delivery, make a finished job's delivery."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from core.models import WebhookDelivery
from sender.webhooks import WebhookSender
from tests.support.webhook_jobs import deliveries, queued_job, row, run_job

MakeSender = Callable[..., WebhookSender]


def settle(sender: WebhookSender, delivery_id: str, timeout: float = 30) -> WebhookDelivery:
    """Run the dispatcher until the delivery is no longer pending."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sender.dispatch_due()
        delivery = row(sender.sessions, WebhookDelivery, delivery_id)
        if delivery.status != "pending":
            return delivery
        time.sleep(0.02)
    raise AssertionError(f"delivery {delivery_id} still pending after {timeout}s")


def finished_job_delivery(
    sessions: sessionmaker[Session], url: str, **job: Any
) -> tuple[str, WebhookDelivery]:
    created = queued_job(sessions, url=url, **job)
    run_job(sessions, created.id)
    return created.id, deliveries(sessions, created.id)[-1]
