"""Webhook routes: the tenant's signing secret and its rotation, a job's deliveries, replay."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy.orm import Session

from api.deps import RuntimeDep, SessionDep, TenantDep
from api.schemas import SecretRotate, WebhookDeliveriesPublic, WebhookReplay, WebhookSecretPublic
from core.errors import NotFound
from core.models import Job, WebhookSecret
from core.views import delivery_public, iso
from core.webhook_secrets import current_secret, previous_secret_expiry, rotate_secret
from core.webhooks import delivery_attempts, job_deliveries, replay_deliveries

router = APIRouter(tags=["webhooks"])


def _secret_public(session: Session, secret: WebhookSecret) -> dict[str, Any]:
    return {
        "secret": secret.secret,
        "created_at": iso(secret.created_at),
        "previous_expires_at": iso(previous_secret_expiry(session, secret.tenant_id)),
    }


def _own_job(session: Session, job_id: str, tenant_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None or job.tenant_id != tenant_id:
        raise NotFound(f"no job {job_id}")
    return job


@router.get("/v1/webhooks/secret", response_model=WebhookSecretPublic)
def get_webhook_secret(session: SessionDep, tenant_id: TenantDep) -> dict[str, Any]:
    """The secret that signs this tenant's webhooks (Standard Webhooks `whsec_` format)."""
    return _secret_public(session, current_secret(session, tenant_id))


@router.post("/v1/webhooks/secret/rotate", response_model=WebhookSecretPublic)
def rotate_webhook_secret(
    session: SessionDep,
    tenant_id: TenantDep,
    runtime: RuntimeDep,
    options: SecretRotate | None = None,
) -> dict[str, Any]:
    """Make a new secret; the old one keeps signing, as a second signature, for the overlap."""
    overlap_s = runtime.settings.webhook_secret_overlap_s
    if options is not None and options.overlap_s is not None:
        overlap_s = options.overlap_s
    return _secret_public(session, rotate_secret(session, tenant_id, overlap_s=overlap_s))


@router.get("/v1/jobs/{job_id}/webhooks", response_model=WebhookDeliveriesPublic)
def list_job_webhooks(job_id: str, session: SessionDep, tenant_id: TenantDep) -> dict[str, Any]:
    """The job's webhook deliveries with every attempt, oldest first."""
    _own_job(session, job_id, tenant_id)
    return {
        "data": [
            delivery_public(d, delivery_attempts(session, d))
            for d in job_deliveries(session, job_id)
        ]
    }


@router.post(
    "/v1/jobs/{job_id}/webhooks/replay", status_code=202, response_model=WebhookDeliveriesPublic
)
def replay_job_webhooks(
    job_id: str, session: SessionDep, tenant_id: TenantDep, replay: WebhookReplay | None = None
) -> dict[str, Any]:
    """Send the job's failed deliveries (or the one named) again, with the same webhook-id."""
    _own_job(session, job_id, tenant_id)
    chosen = replay_deliveries(
        session,
        job_deliveries(session, job_id),
        delivery_id=replay.delivery_id if replay else None,
    )
    return {"data": [delivery_public(d, delivery_attempts(session, d)) for d in chosen]}
