"""verify_webhook against signatures made here independently, per Standard Webhooks v1."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets

import pytest

from internvl_jobs_client import WebhookVerificationError, verify_webhook

NOW = 1_800_000_000


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def signed_headers(secret: str, body: bytes, *, msg_id: str = "msg_1", ts: int = NOW) -> dict:
    key = base64.b64decode(secret[len("whsec_") :])
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    return {
        "Webhook-Id": msg_id,
        "Webhook-Timestamp": str(ts),
        "Webhook-Signature": "v1," + base64.b64encode(mac).decode(),
    }


BODY = json.dumps({"type": "job.succeeded", "data": {"id": "job_1"}}).encode()


def test_a_valid_signature_gives_the_payload() -> None:
    secret = new_secret()
    event = verify_webhook(BODY, signed_headers(secret, BODY), secret, now=NOW)
    assert event["type"] == "job.succeeded"


def test_a_tampered_body_is_refused() -> None:
    secret = new_secret()
    headers = signed_headers(secret, BODY)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(BODY.replace(b"job_1", b"job_2"), headers, secret, now=NOW)


def test_an_old_timestamp_is_refused() -> None:
    secret = new_secret()
    headers = signed_headers(secret, BODY, ts=NOW - 3600)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(BODY, headers, secret, now=NOW)


def test_during_rotation_either_signature_passes() -> None:
    old, new = new_secret(), new_secret()
    headers = signed_headers(old, BODY)
    headers["Webhook-Signature"] += " " + signed_headers(new, BODY)["Webhook-Signature"]
    assert verify_webhook(BODY, headers, new, now=NOW)["type"] == "job.succeeded"
    assert verify_webhook(BODY, headers, [old], now=NOW)["type"] == "job.succeeded"
    with pytest.raises(WebhookVerificationError):
        verify_webhook(BODY, headers, new_secret(), now=NOW)
