"""Jobs with webhooks, moved through their lifecycle with the service's own core functions."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.config import ModelSpec
from core.db import transaction
from core.jobs import claim_job, complete_job, fail_job, insert_job, new_job
from core.models import Job, WebhookAttempt, WebhookDelivery
from core.specs import WebhookSpec
from core.tenants import ensure_default_tenant

MODEL = ModelSpec(alias="tiny", checkpoint="unused", default=True)


def queued_job(
    sessions: sessionmaker[Session], *, url: str | None, events: list[str] | None = None
) -> Job:
    """A queued job of the default tenant, with a webhook to `url` (None: no webhook)."""
    webhook = None
    if url is not None:  # as the API stores it: events default to the terminal ones
        spec = WebhookSpec(url=url) if events is None else WebhookSpec(url=url, events=events)
        webhook = spec.model_dump()
    with transaction(sessions) as session:
        tenant = ensure_default_tenant(session)
        return insert_job(
            session,
            new_job(
                tenant_id=tenant.id,
                model=MODEL,
                spec={"task": "caption", "images": [], "params": {}},
                max_attempts=3,
                webhook=webhook,
            ),
            image_shas=[],
        )


def run_job(sessions: sessionmaker[Session], job_id: str, *, fail: bool = False) -> Job:
    """Claim the job and finish it (succeeded, or failed) as a worker would."""
    with transaction(sessions) as session:
        claimed = claim_job(session, job_id, worker_id="test-worker", lease_s=60)
        assert claimed is not None
    with transaction(sessions) as session:
        if fail:
            done = fail_job(session, job_id, code="boom", message="it broke", attempt=1)
        else:
            done = complete_job(
                session, job_id, attempt=1, result={"text": "a red square"}, usage={}
            )
        assert done is not None
        return done


def deliveries(sessions: sessionmaker[Session], job_id: str) -> list[WebhookDelivery]:
    """The job's delivery rows, oldest first."""
    with sessions() as session:
        return list(
            session.scalars(
                select(WebhookDelivery)
                .where(WebhookDelivery.job_id == job_id)
                .order_by(WebhookDelivery.created_at)
            )
        )


def attempts(sessions: sessionmaker[Session], delivery_id: str) -> list[WebhookAttempt]:
    """The recorded attempts of a delivery, in order."""
    with sessions() as session:
        return list(
            session.scalars(
                select(WebhookAttempt)
                .where(WebhookAttempt.delivery_id == delivery_id)
                .order_by(WebhookAttempt.id)
            )
        )


def job_status(sessions: sessionmaker[Session], job_id: str) -> str:
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.status


def row(sessions: sessionmaker[Session], model: Any, key: Any) -> Any:
    with sessions() as session:
        return session.get(model, key)
