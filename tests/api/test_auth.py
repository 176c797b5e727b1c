"""API keys over HTTP: required, hashed, revocable, rate limited, and scoped to their tenant."""

from __future__ import annotations

import hashlib

from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from api.deps import Runtime
from core.db import transaction
from core.models import ApiKey
from core.tenants import revoke_api_key
from tests.support.api import caption_body, make_key


def test_requests_without_a_key_get_401(auth_client: TestClient) -> None:
    response = auth_client.post("/v1/jobs", json=caption_body())
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"


def test_a_wrong_key_gets_401(auth_client: TestClient, auth_runtime: Runtime) -> None:
    headers = make_key(auth_runtime, "acme")
    forged = {"Authorization": headers["Authorization"][:-4] + "AAAA"}
    assert auth_client.get("/v1/jobs", headers=forged).status_code == 401


def test_a_valid_key_submits_and_reads(auth_client: TestClient, auth_runtime: Runtime) -> None:
    headers = make_key(auth_runtime, "acme")
    job = auth_client.post("/v1/jobs", json=caption_body(), headers=headers).json()
    assert auth_client.get(f"/v1/jobs/{job['id']}", headers=headers).json()["status"] == "queued"


def test_keys_are_stored_only_as_hashes(auth_runtime: Runtime) -> None:
    plaintext = make_key(auth_runtime, "acme")["Authorization"].split()[1]
    with auth_runtime.sessions() as session:
        row = session.scalars(select(ApiKey)).one()
    assert plaintext not in (row.key_hash, row.prefix)
    assert row.key_hash == hashlib.sha256(plaintext.encode()).hexdigest()


def test_a_revoked_key_gets_401(auth_client: TestClient, auth_runtime: Runtime) -> None:
    headers = make_key(auth_runtime, "acme")
    assert auth_client.get("/v1/jobs", headers=headers).status_code == 200
    with transaction(auth_runtime.sessions) as session:
        key = session.scalars(select(ApiKey)).one()
        revoke_api_key(session, key.tenant_id, key.prefix)
    assert auth_client.get("/v1/jobs", headers=headers).status_code == 401


def test_another_tenant_gets_404_never_the_job(
    auth_client: TestClient, auth_runtime: Runtime
) -> None:
    owner, stranger = make_key(auth_runtime, "acme"), make_key(auth_runtime, "globex")
    job = auth_client.post("/v1/jobs", json=caption_body(), headers=owner).json()
    response = auth_client.get(f"/v1/jobs/{job['id']}", headers=stranger)
    assert response.status_code == 404
    assert set(response.json()) == {"type", "title", "status", "detail", "code", "instance"}
    assert auth_client.get("/v1/jobs", headers=stranger).json()["data"] == []
    assert [j["id"] for j in auth_client.get("/v1/jobs", headers=owner).json()["data"]] == [
        job["id"]
    ]


def test_each_key_has_its_own_rate_limit(auth_runtime: Runtime) -> None:
    # One request per 100 s with a burst of 2: the third request in a row must wait.
    auth_runtime.settings = auth_runtime.settings.model_copy(
        update={"key_rate_per_s": 0.01, "key_rate_burst": 2}
    )
    auth_runtime.limiter = Runtime.from_settings(auth_runtime.settings).limiter
    first, second = make_key(auth_runtime, "acme"), make_key(auth_runtime, "acme")
    with TestClient(create_app(runtime=auth_runtime)) as client:
        statuses = [client.get("/v1/jobs", headers=first).status_code for _ in range(3)]
        refused = client.get("/v1/jobs", headers=first)
        other_key = client.get("/v1/jobs", headers=second)
    assert statuses == [200, 200, 429]
    assert refused.json()["code"] == "rate_limited"
    assert 90 <= int(refused.headers["retry-after"]) <= 200
    assert other_key.status_code == 200
