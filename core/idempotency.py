"""Idempotency-Key: a retried submission returns the job the first one created.

The key is stored in the transaction that creates the job, so a request either leaves both
or neither; two requests racing with one key meet at the table's primary key (tenant, key),
and the loser answers with the winner's job. Keys are scoped per tenant and forgotten after
idempotency_ttl_s (the retention pass deletes them).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete
from sqlalchemy.orm import Session

from core.db import utcnow
from core.errors import Conflict, InvalidRequest
from core.models import IdempotencyKey

MAX_KEY_LENGTH = 255
# Printable ASCII, neither starting nor ending with a space (HTTP trims those off a header).
KEY_PATTERN = rf"^[!-~](?:[ -~]{{0,{MAX_KEY_LENGTH - 2}}}[!-~])?$"


@dataclass(frozen=True)
class IdempotentRequest:
    """A request's Idempotency-Key and the fingerprint of what it asked for."""

    key: str
    request_hash: str
    ttl_s: float


def check_key(key: str) -> str:
    """The key if it is 1-255 printable ASCII characters (KEY_PATTERN); else a 400 problem."""
    if re.fullmatch(KEY_PATTERN, key) is None:
        raise InvalidRequest(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable ASCII characters, "
            "not starting or ending with a space",
            code="invalid_idempotency_key",
        )
    return key


def request_fingerprint(spec: Any, files: list[bytes], video: bytes | None = None) -> str:
    """SHA-256 of the request's JSON in canonical form and of each uploaded file, in order."""
    digest = hashlib.sha256()
    digest.update(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode())
    for data in files:
        digest.update(b"\x00file:" + hashlib.sha256(data).digest())
    if video is not None:
        digest.update(b"\x00video:" + hashlib.sha256(video).digest())
    return digest.hexdigest()


def find_original(session: Session, tenant_id: str, request: IdempotentRequest) -> str | None:
    """The id created by an earlier request with this key, if it is still remembered.

    The same key with a different request is a 409: the client reused a key by mistake.
    """
    row = session.get(IdempotencyKey, (tenant_id, request.key))
    if row is None or row.created_at < utcnow() - timedelta(seconds=request.ttl_s):
        return None
    if row.request_hash != request.request_hash:
        raise Conflict(
            "this Idempotency-Key was used with a different request",
            code="idempotency_key_reused",
        )
    return row.resource_id


def remember(
    session: Session, tenant_id: str, request: IdempotentRequest, resource_id: str
) -> None:
    """Record the key with the id it created; IntegrityError when another request won."""
    expired_before = utcnow() - timedelta(seconds=request.ttl_s)
    session.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.tenant_id == tenant_id,
            IdempotencyKey.key == request.key,
            IdempotencyKey.created_at < expired_before,
        )
    )
    session.add(
        IdempotencyKey(
            tenant_id=tenant_id,
            key=request.key,
            request_hash=request.request_hash,
            resource_id=resource_id,
        )
    )
    session.flush()
