"""Standard Webhooks signatures, checked against the published vector and a separate verifier."""

from __future__ import annotations

import base64
import time

import pytest

from core.signatures import new_secret, secret_key, sign, webhook_headers
from tests.support.webhook_receiver import verify_standard_webhook

# The specification's test vector (standard-webhooks and svix reference libraries).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_signature_matches_the_published_test_vector() -> None:
    signature = sign(
        VECTOR_SECRET, webhook_id=VECTOR_ID, timestamp=VECTOR_TIMESTAMP, body=VECTOR_BODY
    )
    assert signature == VECTOR_SIGNATURE


def test_new_secrets_have_the_standard_format_and_differ() -> None:
    first, second = new_secret(), new_secret()
    assert first.startswith("whsec_") and first != second
    assert 24 <= len(base64.b64decode(first.removeprefix("whsec_"))) <= 64
    assert secret_key(first) == base64.b64decode(first[6:])


def test_headers_verify_with_an_independent_verifier() -> None:
    secret, body = new_secret(), b'{"type":"job.succeeded"}'
    headers = webhook_headers([secret], webhook_id="msg_1", timestamp=int(time.time()), body=body)
    assert verify_standard_webhook(secret, headers, body) == {"type": "job.succeeded"}


def test_rotation_sends_one_signature_per_secret_each_verifying() -> None:
    new, old, body = new_secret(), new_secret(), b"{}"
    headers = webhook_headers([new, old], webhook_id="msg_2", timestamp=int(time.time()), body=body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    verify_standard_webhook(new, headers, body)
    verify_standard_webhook(old, headers, body)
    with pytest.raises(AssertionError):
        verify_standard_webhook(new_secret(), headers, body)


def test_a_changed_body_id_or_timestamp_fails_verification() -> None:
    secret, now = new_secret(), int(time.time())
    headers = webhook_headers([secret], webhook_id="msg_3", timestamp=now, body=b'{"a":1}')
    with pytest.raises(AssertionError):
        verify_standard_webhook(secret, headers, b'{"a":2}')
    with pytest.raises(AssertionError):
        verify_standard_webhook(secret, {**headers, "webhook-id": "msg_4"}, b'{"a":1}')
    with pytest.raises(AssertionError):
        verify_standard_webhook(secret, {**headers, "webhook-timestamp": str(now + 1)}, b'{"a":1}')


def test_the_verifier_itself_accepts_the_published_vector() -> None:
    headers = {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TIMESTAMP),
        "webhook-signature": VECTOR_SIGNATURE,
    }
    age = int(time.time()) - VECTOR_TIMESTAMP + 60
    assert verify_standard_webhook(VECTOR_SECRET, headers, VECTOR_BODY, tolerance_s=age)
