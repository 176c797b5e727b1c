"""Idempotency-Key: a retried submission gets the original job; a reused key with another body
is refused; keys are per tenant and forgotten after their time."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import update

from api.deps import Runtime
from core.db import transaction, utcnow
from core.models import IdempotencyKey
from core.tenants import ensure_tenant
from tests.support.api import b64, png_bytes, queued_messages, stored_state


def body(question: str = "What is it?") -> dict:
    return {"task": "vqa", "question": question, "images": [{"data": b64(png_bytes())}]}


def post(client: TestClient, payload: dict, key: str | None = "order-7") -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return client.post("/v1/jobs", json=payload, headers=headers)


def test_same_key_and_body_returns_the_original_job(client: TestClient, runtime: Runtime) -> None:
    first = post(client, body())
    second = post(client, body())
    assert (first.status_code, second.status_code) == (202, 202)
    assert second.json()["id"] == first.json()["id"]
    assert second.headers["idempotent-replayed"] == "true"
    assert second.headers["location"] == first.headers["location"]
    assert stored_state(runtime) == (1, 1, 1)
    assert queued_messages(runtime) == 1  # the job runs once


def test_same_body_with_keys_in_another_order_is_the_same_request(
    client: TestClient, runtime: Runtime
) -> None:
    first = post(client, body())
    reordered = json.dumps(dict(reversed(list(body().items()))))
    second = client.post(
        "/v1/jobs",
        content=reordered,
        headers={"Idempotency-Key": "order-7", "content-type": "application/json"},
    )
    assert second.json()["id"] == first.json()["id"]
    assert stored_state(runtime)[0] == 1


def test_same_key_with_another_body_is_409(client: TestClient, runtime: Runtime) -> None:
    post(client, body())
    response = post(client, body("Something else?"))
    assert response.status_code == 409
    assert response.json()["code"] == "idempotency_key_reused"
    assert stored_state(runtime)[0] == 1


def test_without_a_key_every_submission_is_a_new_job(client: TestClient, runtime: Runtime) -> None:
    post(client, body(), key=None)
    post(client, body(), key=None)
    assert stored_state(runtime)[0] == 2


def test_keys_are_scoped_per_tenant(client: TestClient, runtime: Runtime) -> None:
    first = post(client, body()).json()
    with transaction(runtime.sessions) as session:  # the key now belongs to another tenant
        other = ensure_tenant(session, "other")
        session.execute(update(IdempotencyKey).values(tenant_id=other.id))
    second = post(client, body()).json()
    assert second["id"] != first["id"]


def test_an_expired_key_starts_a_new_job(client: TestClient, runtime: Runtime) -> None:
    first = post(client, body()).json()
    expired = utcnow() - timedelta(seconds=runtime.settings.idempotency_ttl_s + 1)
    with transaction(runtime.sessions) as session:
        session.execute(update(IdempotencyKey).values(created_at=expired))
    second = post(client, body("A different question now?")).json()
    assert second["id"] != first["id"]
    third = post(client, body("A different question now?")).json()
    assert third["id"] == second["id"]


def test_refused_request_does_not_use_up_its_key(client: TestClient, runtime: Runtime) -> None:
    bad = {"task": "vqa", "images": [{"data": b64(png_bytes())}]}  # no question
    assert post(client, bad).status_code == 422
    assert post(client, body()).status_code == 202
    assert stored_state(runtime)[0] == 1


def test_invalid_key_is_400(client: TestClient, runtime: Runtime) -> None:
    response = post(client, body(), key="x" * 256)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_idempotency_key"
    assert stored_state(runtime) == (0, 0, 0)


def test_concurrent_retries_with_one_key_create_one_job(
    client: TestClient, runtime: Runtime
) -> None:
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: post(client, body()), range(8)))
    ids = {r.json()["id"] for r in responses}
    assert [r.status_code for r in responses] == [202] * 8
    assert len(ids) == 1
    assert stored_state(runtime)[0] == 1
    assert queued_messages(runtime) == 1
