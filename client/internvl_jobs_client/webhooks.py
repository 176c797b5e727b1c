"""Checking a webhook from internvl-jobs (Standard Webhooks v1) before trusting its body."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from internvl_jobs_client.errors import WebhookVerificationError

SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
DEFAULT_TOLERANCE_S = 300


def _key(secret: str) -> bytes:
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise WebhookVerificationError("the webhook secret is not whsec_<base64>") from exc


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The v1 signature of a message: base64 HMAC-SHA256 of 'id.timestamp.body'."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def verify_webhook(
    body: bytes,
    headers: Mapping[str, str],
    secret: str | Sequence[str],
    *,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> dict[str, Any]:
    """The webhook's JSON if a signature matches a secret and the timestamp is recent.

    `headers` may use any case; `secret` may list several (during a rotation). Raises
    WebhookVerificationError otherwise. Pass the raw body bytes, not re-serialised JSON.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    webhook_id = lowered.get("webhook-id")
    stamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not (webhook_id and stamp and signatures):
        raise WebhookVerificationError("webhook-id, -timestamp or -signature header missing")
    try:
        timestamp = int(stamp)
    except ValueError as exc:
        raise WebhookVerificationError("webhook-timestamp is not a number") from exc
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        raise WebhookVerificationError("webhook-timestamp is too far from now")
    secrets = [secret] if isinstance(secret, str) else list(secret)
    expected = [sign(s, webhook_id, timestamp, body) for s in secrets]
    for entry in signatures.split():
        version, _, value = entry.partition(",")
        if version == "v1" and any(hmac.compare_digest(value, e) for e in expected):
            parsed: dict[str, Any] = json.loads(body)
            return parsed
    raise WebhookVerificationError("no webhook signature matches the secret")
