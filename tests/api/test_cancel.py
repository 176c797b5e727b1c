"""POST /v1/jobs/{id}/cancel: queued jobs never run, running ones are flagged, finished ones 409."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import select

from api.deps import Runtime
from core.db import transaction
from core.jobs import claim_job, complete_job, release_job
from core.models import Job, JobEvent
from core.tenants import ensure_tenant
from tests.support.api import b64, png_bytes


def submit(client: TestClient) -> dict:
    body = {"task": "caption", "images": [{"data": b64(png_bytes())}]}
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return response.json()


def claim(runtime: Runtime, job_id: str) -> None:
    with transaction(runtime.sessions) as session:
        assert claim_job(session, job_id, worker_id="w1", lease_s=30) is not None


def events(runtime: Runtime, job_id: str) -> list[str]:
    with runtime.sessions() as session:
        query = select(JobEvent.type).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        return list(session.scalars(query))


def test_cancel_queued_job_ends_it_at_once(client: TestClient, runtime: Runtime) -> None:
    job = submit(client)
    response = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 200
    canceled = response.json()
    assert canceled["status"] == "canceled" and canceled["finished_at"]
    assert events(runtime, job["id"]) == ["job.queued", "job.canceled"]


def test_canceled_queued_job_is_never_claimed(client: TestClient, runtime: Runtime) -> None:
    job = submit(client)
    client.post(f"/v1/jobs/{job['id']}/cancel")
    with transaction(runtime.sessions) as session:  # its message is still in Redis
        assert claim_job(session, job["id"], worker_id="w1", lease_s=30) is None
    assert client.get(f"/v1/jobs/{job['id']}").json()["attempts"] == 0


def test_cancel_running_job_flags_it_for_its_worker(client: TestClient, runtime: Runtime) -> None:
    job = submit(client)
    claim(runtime, job["id"])
    response = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 202
    flagged = response.json()
    assert flagged["status"] == "running" and flagged["cancel_requested_at"]
    again = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 202
    assert again.json()["cancel_requested_at"] == flagged["cancel_requested_at"]


def test_running_job_handed_back_after_a_cancel_request_ends_canceled(
    client: TestClient, runtime: Runtime
) -> None:
    job = submit(client)
    claim(runtime, job["id"])
    client.post(f"/v1/jobs/{job['id']}/cancel")
    with transaction(runtime.sessions) as session:
        ended = release_job(session, job["id"], attempt=1, reason="worker_shutdown")
    assert ended is not None and ended.status == "canceled"


def test_cancel_finished_job_is_409(client: TestClient, runtime: Runtime) -> None:
    job = submit(client)
    claim(runtime, job["id"])
    with transaction(runtime.sessions) as session:
        complete_job(session, job["id"], attempt=1, result={"text": "done"}, usage={})
    response = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 409
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "job_finished"
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "succeeded"


def test_cancel_twice_is_409_the_second_time(client: TestClient) -> None:
    job = submit(client)
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
    assert client.post(f"/v1/jobs/{job['id']}/cancel").json()["code"] == "job_finished"


def test_cancel_unknown_job_is_404(client: TestClient) -> None:
    response = client.post("/v1/jobs/job_nothing/cancel")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def test_cancel_another_tenants_job_is_404(client: TestClient, runtime: Runtime) -> None:
    job = submit(client)
    with transaction(runtime.sessions) as session:
        other = ensure_tenant(session, "other")
        row = session.get(Job, job["id"])
        assert row is not None
        row.tenant_id = other.id
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 404
    with runtime.sessions() as session:
        assert session.get(Job, job["id"]).status == "queued"  # type: ignore[union-attr]
