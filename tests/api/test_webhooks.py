"""Webhook routes over HTTP: per-tenant secrets, URL checks at submit, delivery log, replay."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from api.app import create_app
from api.deps import Runtime
from core.db import transaction
from core.models import WebhookDelivery
from core.tenants import create_api_key, ensure_tenant
from tests.support.api import b64, png_bytes, queued_messages, stored_state
from tests.support.webhook_jobs import run_job

HOOK = "https://hooks.example.com/internvl"


def job_request(url: str, **webhook: object) -> dict:
    return {
        "task": "caption",
        "images": [{"data": b64(png_bytes())}],
        "webhook": {"url": url, **webhook},
    }


def test_secret_is_a_standard_webhooks_secret_and_stays_the_same(client: TestClient) -> None:
    first = client.get("/v1/webhooks/secret")
    assert first.status_code == 200
    secret = first.json()["secret"]
    assert secret.startswith("whsec_")
    assert 24 <= len(base64.b64decode(secret.removeprefix("whsec_"))) <= 64
    assert client.get("/v1/webhooks/secret").json()["secret"] == secret
    assert first.json()["previous_expires_at"] is None


def test_rotation_makes_a_new_secret_and_reports_the_overlap(client: TestClient) -> None:
    old = client.get("/v1/webhooks/secret").json()["secret"]
    rotated = client.post("/v1/webhooks/secret/rotate")
    assert rotated.status_code == 200
    new = rotated.json()
    assert new["secret"] != old and new["secret"].startswith("whsec_")
    assert new["previous_expires_at"] is not None
    assert client.get("/v1/webhooks/secret").json()["secret"] == new["secret"]


def test_rotation_with_zero_overlap_revokes_the_old_secret(client: TestClient) -> None:
    client.get("/v1/webhooks/secret")
    rotated = client.post("/v1/webhooks/secret/rotate", json={"overlap_s": 0})
    assert rotated.json()["previous_expires_at"] is None
    refused = client.post("/v1/webhooks/secret/rotate", json={"overlap_s": -1})
    assert refused.status_code == 422 and refused.json()["code"] == "invalid_params"


@pytest.fixture
def tenant_clients(runtime: Runtime) -> Iterator[tuple[TestClient, TestClient]]:
    """Two tenants' clients on a service that requires API keys."""
    runtime.settings = runtime.settings.model_copy(update={"auth_enabled": True})
    with transaction(runtime.sessions) as session:
        keys = [
            create_api_key(session, ensure_tenant(session, name).id)[1] for name in ("acme", "zeta")
        ]
    with TestClient(create_app(runtime=runtime)) as a, TestClient(create_app(runtime=runtime)) as b:
        a.headers["authorization"] = f"Bearer {keys[0]}"
        b.headers["authorization"] = f"Bearer {keys[1]}"
        yield a, b


def test_each_tenant_has_its_own_secret(tenant_clients: tuple[TestClient, TestClient]) -> None:
    acme, zeta = tenant_clients
    acme_secret = acme.get("/v1/webhooks/secret").json()["secret"]
    zeta_secret = zeta.get("/v1/webhooks/secret").json()["secret"]
    assert acme_secret != zeta_secret
    acme.post("/v1/webhooks/secret/rotate")
    assert zeta.get("/v1/webhooks/secret").json()["secret"] == zeta_secret


def test_secret_needs_an_api_key(tenant_clients: tuple[TestClient, TestClient]) -> None:
    acme, _ = tenant_clients
    response = acme.get("/v1/webhooks/secret", headers={"authorization": ""})
    assert response.status_code == 401 and response.json()["code"] == "unauthorized"


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/x",  # plain http outside development
        "https://127.0.0.1/x",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::ffff:10.0.0.1]/x",
        "https://2130706433/x",
        "https://localhost:8000/x",
        "ftp://hooks.example.com/x",
    ],
)
def test_unsafe_webhook_urls_are_refused_and_leave_nothing(
    client: TestClient, runtime: Runtime, url: str
) -> None:
    response = client.post("/v1/jobs", json=job_request(url))
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_webhook_url"
    assert response.json()["detail"].startswith("webhook.url: ")
    assert stored_state(runtime) == (0, 0, 0)
    assert queued_messages(runtime) == 0


def test_unknown_webhook_event_is_refused(client: TestClient) -> None:
    response = client.post("/v1/jobs", json=job_request(HOOK, events=["job.exploded"]))
    assert response.status_code == 422 and response.json()["code"] == "invalid_params"


def test_deliveries_of_a_job_are_listed(client: TestClient, runtime: Runtime) -> None:
    job = client.post("/v1/jobs", json=job_request(HOOK)).json()
    assert client.get(f"/v1/jobs/{job['id']}/webhooks").json() == {"data": []}
    run_job(runtime.sessions, job["id"])
    listed = client.get(f"/v1/jobs/{job['id']}/webhooks")
    assert listed.status_code == 200
    [delivery] = listed.json()["data"]
    assert delivery["id"].startswith("msg_")
    assert (delivery["event_type"], delivery["url"], delivery["status"]) == (
        "job.succeeded",
        HOOK,
        "pending",
    )
    assert delivery["attempt_count"] == 0 and delivery["attempts"] == []


def test_replay_sends_failed_deliveries_again(client: TestClient, runtime: Runtime) -> None:
    job = client.post("/v1/jobs", json=job_request(HOOK)).json()
    run_job(runtime.sessions, job["id"])
    nothing = client.post(f"/v1/jobs/{job['id']}/webhooks/replay")
    assert nothing.status_code == 409 and nothing.json()["code"] == "nothing_to_replay"
    with transaction(runtime.sessions) as session:
        session.execute(update(WebhookDelivery).values(status="failed", attempts=10))
    replayed = client.post(f"/v1/jobs/{job['id']}/webhooks/replay")
    assert replayed.status_code == 202
    [delivery] = replayed.json()["data"]
    assert delivery["status"] == "pending" and delivery["next_attempt_at"]
    again = client.post(
        f"/v1/jobs/{job['id']}/webhooks/replay", json={"delivery_id": delivery["id"]}
    )
    assert again.status_code == 409 and again.json()["code"] == "delivery_pending"


def test_other_tenants_cannot_see_or_replay_deliveries(
    tenant_clients: tuple[TestClient, TestClient],
) -> None:
    acme, zeta = tenant_clients
    job = acme.post("/v1/jobs", json=job_request(HOOK)).json()
    assert acme.get(f"/v1/jobs/{job['id']}/webhooks").status_code == 200
    for response in (
        zeta.get(f"/v1/jobs/{job['id']}/webhooks"),
        zeta.post(f"/v1/jobs/{job['id']}/webhooks/replay"),
    ):
        assert response.status_code == 404 and response.json()["code"] == "not_found"
