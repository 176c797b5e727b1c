"""What clients see: the job, batch and webhook-delivery bodies (api.md), and their timestamps.

One place for every view, so the API's responses, the webhook payloads and the batch results
cannot drift apart; lifecycle modules (jobs, batches, webhooks) change rows, this one shows them.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, overload

from core.models import Batch, DeliveryStatus, Job, WebhookAttempt, WebhookDelivery


@overload
def iso(value: datetime) -> str: ...
@overload
def iso(value: datetime | None) -> str | None: ...
def iso(value: datetime | None) -> str | None:
    """An aware datetime as ISO 8601 with a Z, as every timestamp of the API."""
    return value.isoformat().replace("+00:00", "Z") if value else None


def job_public(job: Job) -> dict[str, Any]:
    """The job as clients see it (api.md): the body of GET /v1/jobs/{id} and of webhooks."""
    error = None
    if job.error_code:
        error = {"code": job.error_code, "message": job.error_message or ""}
    return {
        "id": job.id,
        "object": "job",
        "status": job.status,
        "task": job.task,
        "model": job.model,
        "priority": job.priority,
        "batch_id": job.batch_id,
        "custom_id": job.custom_id,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "cancel_requested_at": iso(job.cancel_requested_at),
        "attempts": job.attempts,
        "metadata": job.meta or {},
        "result": job.result,
        "usage": job.usage,
        "error": error,
    }


def batch_status(batch: Batch) -> str:
    """in_progress, canceling, completed or canceled."""
    if batch.finished_at is not None:
        return "canceled" if batch.cancel_requested_at else "completed"
    return "canceling" if batch.cancel_requested_at else "in_progress"


def batch_public(batch: Batch, counts: dict[str, int]) -> dict[str, Any]:
    """The batch as clients see it."""
    return {
        "id": batch.id,
        "object": "batch",
        "status": batch_status(batch),
        "total": batch.total,
        "counts": counts,
        "metadata": batch.meta or {},
        "webhook": {"url": batch.webhook_url, "events": batch.webhook_events}
        if batch.webhook_url
        else None,
        "created_at": iso(batch.created_at),
        "cancel_requested_at": iso(batch.cancel_requested_at),
        "finished_at": iso(batch.finished_at),
    }


def batch_result_line(job: Job) -> dict[str, Any]:
    """One line of a batch's results: the job's outcome under the caller's custom_id."""
    public = job_public(job)
    return {
        "custom_id": job.custom_id,
        "job_id": job.id,
        "status": job.status,
        "result": public["result"],
        "error": public["error"],
        "usage": public["usage"],
    }


def delivery_public(
    delivery: WebhookDelivery, attempts: Iterable[WebhookAttempt]
) -> dict[str, Any]:
    """A delivery as clients see it, with every attempt's outcome."""
    return {
        "id": delivery.id,
        "object": "webhook_delivery",
        "event_type": delivery.event_type,
        "url": delivery.url,
        "status": delivery.status,
        "attempt_count": delivery.attempts,
        "next_attempt_at": (
            iso(delivery.next_attempt_at)
            if delivery.status == DeliveryStatus.PENDING.value
            else None
        ),
        "created_at": iso(delivery.created_at),
        "finished_at": iso(delivery.finished_at),
        "attempts": [
            {
                "attempted_at": iso(a.attempted_at),
                "status_code": a.status_code,
                "latency_ms": a.latency_ms,
                "error": a.error,
                "response": a.response_excerpt,
            }
            for a in attempts
        ],
    }
