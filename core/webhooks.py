"""Webhook deliveries: one row per event and URL, written in the transaction of the event.

A delivery's id is its webhook-id, the same on every attempt. The webhook worker finds due
rows (status pending, next_attempt_at passed), sends them and records each attempt; a failure
schedules the next attempt in the row, so no retry lives only in a message queue.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.config import Settings
from core.db import utcnow
from core.errors import Conflict, InvalidRequest, NotFound
from core.ids import new_id
from core.models import Batch, DeliveryStatus, Job, JobStatus, WebhookAttempt, WebhookDelivery
from core.specs import TERMINAL_EVENTS
from core.ssrf import UnsafeUrl, validate_url
from core.views import iso, job_public

BATCH_EVENTS = ("batch.completed",)


def check_webhook_url(url: str, settings: Settings) -> None:
    """Refuse a webhook URL at submit time (scheme, notation, non-public literal address)."""
    try:
        validate_url(
            url,
            allow_private=settings.webhook_allow_private,
            allow_http=settings.webhook_allow_http,
        )
    except UnsafeUrl as exc:
        raise InvalidRequest(f"webhook.url: {exc.detail}", code="invalid_webhook_url") from exc


def record_job_event(session: Session, job: Job, event_type: str) -> WebhookDelivery | None:
    """Queue the job's webhook for this event if the job asked for it (a job event listener)."""
    if not job.webhook_url or event_type not in (job.webhook_events or TERMINAL_EVENTS):
        return None
    if _url_disabled(session, WebhookDelivery.job_id == job.id, job.webhook_url):
        return None
    return _add_delivery(
        session,
        tenant_id=job.tenant_id,
        event_type=event_type,
        url=job.webhook_url,
        data=job_public(job),
        job_id=job.id,
    )


def record_batch_event(
    session: Session, batch: Batch, event_type: str, *, data: dict[str, Any] | None = None
) -> WebhookDelivery | None:
    """Queue the batch's webhook for a batch event (batch.completed) in this transaction."""
    if not batch.webhook_url:
        return None
    # A webhook that lists batch events gets only those; `data` defaults to the job counts.
    listed = [e for e in batch.webhook_events or [] if str(e).startswith("batch.")]
    if event_type not in (listed or BATCH_EVENTS):
        return None
    if _url_disabled(session, WebhookDelivery.batch_id == batch.id, batch.webhook_url):
        return None
    return _add_delivery(
        session,
        tenant_id=batch.tenant_id,
        event_type=event_type,
        url=batch.webhook_url,
        data=data if data is not None else batch_summary(session, batch),
        batch_id=batch.id,
    )


def batch_summary(session: Session, batch: Batch) -> dict[str, Any]:
    """A batch and how many of its jobs are in each status."""
    counts = dict.fromkeys((s.value for s in JobStatus), 0)
    rows = session.execute(
        select(Job.status, func.count()).where(Job.batch_id == batch.id).group_by(Job.status)
    )
    for status, count in rows:
        counts[status] = count
    return {
        "id": batch.id,
        "object": "batch",
        "total": batch.total,
        "counts": counts,
        "metadata": batch.meta or {},
        "created_at": iso(batch.created_at),
        "finished_at": iso(batch.finished_at),
    }


def _url_disabled(session: Session, owner: Any, url: str) -> bool:
    return (
        session.scalar(
            select(WebhookDelivery.id)
            .where(
                owner,
                WebhookDelivery.url == url,
                WebhookDelivery.status == DeliveryStatus.DISABLED.value,
            )
            .limit(1)
        )
        is not None
    )


def _add_delivery(
    session: Session,
    *,
    tenant_id: str,
    event_type: str,
    url: str,
    data: dict[str, Any],
    job_id: str | None = None,
    batch_id: str | None = None,
) -> WebhookDelivery:
    now = utcnow()
    body = {"type": event_type, "timestamp": iso(now), "data": data}
    delivery = WebhookDelivery(
        id=new_id("msg"),
        tenant_id=tenant_id,
        job_id=job_id,
        batch_id=batch_id,
        event_type=event_type,
        url=url,
        # Serialised once, so every attempt sends exactly the same bytes.
        payload=json.dumps(body, separators=(",", ":"), ensure_ascii=False),
        status=DeliveryStatus.PENDING.value,
        attempts=0,
        attempts_before_replay=0,
        next_attempt_at=now,
        created_at=now,
    )
    session.add(delivery)
    return delivery


def job_deliveries(session: Session, job_id: str) -> list[WebhookDelivery]:
    """The deliveries of a job, oldest first."""
    return _deliveries(session, WebhookDelivery.job_id == job_id)


def batch_deliveries(session: Session, batch_id: str) -> list[WebhookDelivery]:
    """The deliveries of a batch's own events, oldest first."""
    return _deliveries(session, WebhookDelivery.batch_id == batch_id)


def _deliveries(session: Session, owner: Any) -> list[WebhookDelivery]:
    return list(
        session.scalars(
            select(WebhookDelivery)
            .where(owner)
            .order_by(WebhookDelivery.created_at, WebhookDelivery.id)
        )
    )


def replay_deliveries(
    session: Session, deliveries: list[WebhookDelivery], *, delivery_id: str | None = None
) -> list[WebhookDelivery]:
    """Send failed or disabled deliveries again (or the one named), with the same webhook-id."""
    if delivery_id is not None:
        chosen = [d for d in deliveries if d.id == delivery_id]
        if not chosen:
            raise NotFound(f"no webhook delivery {delivery_id} here")
        if chosen[0].status == DeliveryStatus.PENDING.value:
            raise Conflict(
                f"delivery {delivery_id} is still being delivered", code="delivery_pending"
            )
    else:
        done = {DeliveryStatus.FAILED.value, DeliveryStatus.DISABLED.value}
        chosen = [d for d in deliveries if d.status in done]
        if not chosen:
            raise Conflict("no failed webhook deliveries to replay", code="nothing_to_replay")
    now = utcnow()
    for delivery in chosen:
        delivery.status = DeliveryStatus.PENDING.value
        delivery.attempts_before_replay = delivery.attempts  # a full schedule again
        delivery.next_attempt_at = now
        delivery.finished_at = None
    session.flush()
    return chosen


def delivery_attempts(session: Session, delivery: WebhookDelivery) -> list[WebhookAttempt]:
    """The delivery's attempts, oldest first (core.views.delivery_public shows them)."""
    return list(
        session.scalars(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id == delivery.id)
            .order_by(WebhookAttempt.id)
        )
    )
