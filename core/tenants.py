"""Tenants and their API keys (stored as SHA-256 hashes, compared in constant time)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from core.db import utcnow
from core.errors import NotFound, Unauthorized
from core.ids import new_id
from core.models import ApiKey, Tenant

DEFAULT_TENANT_ID = "ten_default"
DEFAULT_TENANT_NAME = "default"
KEY_PREFIX = "ivj"
LAST_USED_RESOLUTION = timedelta(minutes=1)


def ensure_tenant(session: Session, name: str, *, tenant_id: str | None = None) -> Tenant:
    """The tenant with this name, created if it does not exist."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(id=tenant_id or new_id("ten"), name=name)
        session.add(tenant)
        session.flush()
    return tenant


def find_tenant(session: Session, name: str) -> Tenant:
    """The tenant with this name; NotFound if there is none."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        raise NotFound(f"no tenant named {name!r}")
    return tenant


def set_running_limit(session: Session, name: str, limit: int | None) -> Tenant:
    """Set how many jobs the named tenant may run at once (None: the default; 0: no limit)."""
    if limit is not None and limit < 0:
        raise ValueError("a running limit is 0 (no limit) or more")
    tenant = find_tenant(session, name)
    tenant.max_running_jobs = limit
    return tenant


def ensure_default_tenant(session: Session) -> Tenant:
    """The tenant every request belongs to when authentication is disabled (development)."""
    return ensure_tenant(session, DEFAULT_TENANT_NAME, tenant_id=DEFAULT_TENANT_ID)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_api_key(session: Session, tenant_id: str, *, name: str = "") -> tuple[ApiKey, str]:
    """A new key for the tenant; the returned plaintext is shown once and never stored."""
    lookup = secrets.token_hex(6)
    plaintext = f"{KEY_PREFIX}_{lookup}_{secrets.token_urlsafe(32)}"
    key = ApiKey(
        id=new_id("key"),
        tenant_id=tenant_id,
        prefix=f"{KEY_PREFIX}_{lookup}",
        key_hash=_hash(plaintext),
        name=name,
    )
    session.add(key)
    session.flush()
    return key, plaintext


def authenticate_key(session: Session, authorization: str | None) -> ApiKey:
    """The live API key an `Authorization: Bearer <key>` header presents; Unauthorized if none."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized(
            "send an API key as 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    parts = token.split("_")
    prefix = "_".join(parts[:2]) if len(parts) >= 3 else ""
    key = session.scalar(select(ApiKey).where(ApiKey.prefix == prefix)) if prefix else None
    # Hash and compare even when no key matched, so timing does not reveal valid prefixes.
    expected = key.key_hash if key is not None else _hash("no such key")
    if not hmac.compare_digest(expected, _hash(token)) or key is None or key.revoked_at:
        raise Unauthorized("the API key is not valid", headers={"WWW-Authenticate": "Bearer"})
    now = utcnow()
    if key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION:
        key.last_used_at = now  # written at most once a minute: a write per request is wasteful
    return key


def authenticate(session: Session, authorization: str | None) -> str:
    """The tenant id an `Authorization: Bearer <key>` header belongs to; Unauthorized if none."""
    return authenticate_key(session, authorization).tenant_id


def list_api_keys(session: Session, tenant_id: str) -> list[ApiKey]:
    """The tenant's keys, oldest first, revoked ones included."""
    return list(
        session.scalars(
            select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.created_at)
        )
    )


def revoke_api_key(session: Session, tenant_id: str, key_ref: str) -> ApiKey:
    """Revoke a key of the tenant, named by its id or its prefix; NotFound otherwise."""
    key = session.scalar(
        select(ApiKey).where(
            ApiKey.tenant_id == tenant_id, or_(ApiKey.id == key_ref, ApiKey.prefix == key_ref)
        )
    )
    if key is None:
        raise NotFound(f"tenant has no API key {key_ref}")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
    return key
