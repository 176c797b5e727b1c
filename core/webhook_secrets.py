"""Each tenant's webhook signing secret, and its rotation with an overlap.

The current secret has no expiry. Rotating gives the current one an expiry `overlap_s` ahead
and makes a new current one; until that expiry, webhooks carry both signatures, so receivers
can switch secrets without missing a delivery.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from core.db import utcnow
from core.models import Tenant, WebhookSecret
from core.signatures import new_secret


def current_secret(session: Session, tenant_id: str) -> WebhookSecret:
    """The tenant's current secret, made on first use."""
    found = _newest_current(session, tenant_id)
    if found is not None:
        return found
    _lock_tenant(session, tenant_id)
    # Another transaction may have made one while this one waited for the lock.
    found = _newest_current(session, tenant_id)
    if found is not None:
        return found
    secret = WebhookSecret(tenant_id=tenant_id, secret=new_secret(), created_at=utcnow())
    session.add(secret)
    session.flush()
    return secret


def rotate_secret(session: Session, tenant_id: str, *, overlap_s: int) -> WebhookSecret:
    """A new current secret; the previous ones keep signing for overlap_s seconds."""
    _lock_tenant(session, tenant_id)
    now = utcnow()
    session.execute(
        delete(WebhookSecret).where(
            WebhookSecret.tenant_id == tenant_id, WebhookSecret.expires_at <= now
        )
    )
    session.execute(
        update(WebhookSecret)
        .where(WebhookSecret.tenant_id == tenant_id, WebhookSecret.expires_at.is_(None))
        .values(expires_at=now + timedelta(seconds=overlap_s))
        .execution_options(synchronize_session=False)
    )
    secret = WebhookSecret(tenant_id=tenant_id, secret=new_secret(), created_at=now)
    session.add(secret)
    session.flush()
    return secret


def signing_secrets(session: Session, tenant_id: str, *, now: datetime | None = None) -> list[str]:
    """Every secret that signs the tenant's webhooks now, the current one first."""
    current = current_secret(session, tenant_id)
    now = now or utcnow()
    older = session.scalars(
        select(WebhookSecret.secret)
        .where(
            WebhookSecret.tenant_id == tenant_id,
            WebhookSecret.id != current.id,
            or_(WebhookSecret.expires_at.is_(None), WebhookSecret.expires_at > now),
        )
        .order_by(WebhookSecret.created_at.desc(), WebhookSecret.id.desc())
    )
    return [current.secret, *older]


def previous_secret_expiry(session: Session, tenant_id: str) -> datetime | None:
    """When the last rotated-out secret stops signing, if one still signs."""
    return session.scalar(
        select(WebhookSecret.expires_at)
        .where(WebhookSecret.tenant_id == tenant_id, WebhookSecret.expires_at > utcnow())
        .order_by(WebhookSecret.expires_at.desc())
        .limit(1)
    )


def _newest_current(session: Session, tenant_id: str) -> WebhookSecret | None:
    return session.scalar(
        select(WebhookSecret)
        .where(WebhookSecret.tenant_id == tenant_id, WebhookSecret.expires_at.is_(None))
        .order_by(WebhookSecret.created_at.desc(), WebhookSecret.id.desc())
        .limit(1)
    )


def _lock_tenant(session: Session, tenant_id: str) -> None:
    # Serialises secret creation and rotation per tenant (SQLite serialises every writer).
    session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())
