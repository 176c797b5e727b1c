"""Deadlines over HTTP: a job not started by its deadline ends expired, a running one stops."""

from __future__ import annotations

import json
from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import select

from api.deps import Runtime
from core.db import transaction, utcnow
from core.jobs import claim_job, release_job
from core.leases import renew_leases
from core.models import Job, JobEvent, WebhookDelivery
from core.sweeper import sweep_once
from tests.support.api import caption_body, stored_state


def sweep(runtime: Runtime, after_s: float) -> object:
    """One sweeper pass as if after_s seconds had passed."""
    later = utcnow() + timedelta(seconds=after_s)
    return sweep_once(
        sessions=runtime.sessions, celery=runtime.celery, settings=runtime.settings, now=later
    )


def events(runtime: Runtime, job_id: str) -> list[str]:
    with runtime.sessions() as session:
        query = select(JobEvent.type).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        return list(session.scalars(query))


def test_a_job_not_started_by_its_deadline_ends_expired(
    client: TestClient, runtime: Runtime
) -> None:
    job = client.post("/v1/jobs", json=caption_body(expires_after_s=60)).json()
    assert job["expires_at"] is not None
    assert sweep(runtime, 30).expired == 0  # type: ignore[attr-defined]
    assert sweep(runtime, 61).expired == 1  # type: ignore[attr-defined]
    ended = client.get(f"/v1/jobs/{job['id']}").json()
    assert ended["status"] == "expired" and ended["attempts"] == 0
    assert ended["finished_at"] is not None and ended["result"] is None
    assert events(runtime, job["id"]) == ["job.queued", "job.expired"]


def test_a_worker_never_claims_a_job_past_its_deadline(
    client: TestClient, runtime: Runtime
) -> None:
    job_id = client.post("/v1/jobs", json=caption_body(expires_after_s=5)).json()["id"]
    late = utcnow() + timedelta(seconds=6)
    with transaction(runtime.sessions) as session:
        assert claim_job(session, job_id, worker_id="w", lease_s=30, now=late) is None
    ended = client.get(f"/v1/jobs/{job_id}").json()
    assert ended["status"] == "expired" and ended["started_at"] is None


def test_a_running_job_past_its_deadline_is_canceled_by_its_worker(
    client: TestClient, runtime: Runtime
) -> None:
    job_id = client.post("/v1/jobs", json=caption_body(expires_after_s=5)).json()["id"]
    with transaction(runtime.sessions) as session:
        claimed = claim_job(session, job_id, worker_id="w", lease_s=600)
        assert claimed is not None
        attempt = claimed.attempts
    sweep(runtime, 6)
    with transaction(runtime.sessions) as session:  # the worker's next heartbeat
        check = renew_leases(session, {job_id: attempt}, worker_id="w", lease_s=600)
    assert check.canceled == {job_id}
    assert client.get(f"/v1/jobs/{job_id}").json()["cancel_requested_at"] is not None


def test_lease_recovery_past_the_deadline_cancels_instead_of_requeueing(
    client: TestClient, runtime: Runtime
) -> None:
    job_id = client.post("/v1/jobs", json=caption_body(expires_after_s=5)).json()["id"]
    with transaction(runtime.sessions) as session:
        assert claim_job(session, job_id, worker_id="dead", lease_s=1) is not None
    report = sweep(runtime, 10)
    assert report.canceled == 1 and report.requeued == 0  # type: ignore[attr-defined]
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "canceled"


def test_a_retry_due_after_the_deadline_expires_instead_of_running(
    client: TestClient, runtime: Runtime
) -> None:
    job_id = client.post("/v1/jobs", json=caption_body(expires_after_s=20)).json()["id"]
    with transaction(runtime.sessions) as session:
        claimed = claim_job(session, job_id, worker_id="w", lease_s=60)
        assert claimed is not None
        backoff_until = utcnow() + timedelta(seconds=30)
        release_job(
            session, job_id, attempt=claimed.attempts, reason="oom", available_at=backoff_until
        )
    assert sweep(runtime, 25).expired == 1  # type: ignore[attr-defined]
    ended = client.get(f"/v1/jobs/{job_id}").json()
    assert ended["status"] == "expired" and ended["attempts"] == 1


def test_an_absolute_deadline_is_kept_as_given(client: TestClient) -> None:
    deadline = (utcnow() + timedelta(minutes=5)).replace(microsecond=0)
    at = deadline.isoformat().replace("+00:00", "Z")
    job = client.post("/v1/jobs", json=caption_body(expires_at=at)).json()
    assert job["expires_at"] == at


def test_bad_deadlines_are_refused_and_nothing_is_stored(
    client: TestClient, runtime: Runtime
) -> None:
    past = (utcnow() - timedelta(seconds=1)).isoformat()
    far = (utcnow() + timedelta(days=31)).isoformat()
    naive = (utcnow() + timedelta(minutes=1)).replace(tzinfo=None).isoformat()
    for extra in (
        {"expires_at": past},
        {"expires_at": far},
        {"expires_at": naive},
        {"expires_after_s": 0},
        {"expires_after_s": 10, "expires_at": far},
    ):
        response = client.post("/v1/jobs", json=caption_body(**extra))
        assert response.status_code == 422, (extra, response.text)
        assert response.json()["code"] == "invalid_params"
    assert stored_state(runtime) == (0, 0, 0)


def test_a_batch_deadline_reaches_its_jobs_and_its_counts(
    client: TestClient, runtime: Runtime
) -> None:
    jobs = [caption_body(custom_id="a"), caption_body(custom_id="b", expires_after_s=5)]
    batch = client.post("/v1/batches", json={"jobs": jobs, "expires_after_s": 60}).json()
    assert batch["expires_at"] is not None
    with runtime.sessions() as session:
        rows = session.scalars(select(Job).where(Job.batch_id == batch["id"])).all()
        deadlines = {row.custom_id: row.expires_at for row in rows}
    assert deadlines["b"] is not None and deadlines["a"] is not None
    assert deadlines["b"] < deadlines["a"]  # a job's own earlier deadline wins
    assert sweep(runtime, 10).expired == 1  # type: ignore[attr-defined]
    assert sweep(runtime, 61).expired == 1  # type: ignore[attr-defined]
    ended = client.get(f"/v1/batches/{batch['id']}").json()
    assert ended["counts"]["expired"] == 2 and ended["status"] == "completed"
    lines = client.get(f"/v1/batches/{batch['id']}/results").text.splitlines()
    assert [json.loads(line)["status"] for line in lines] == ["expired", "expired"]


def test_expired_jobs_are_listed_by_status(client: TestClient, runtime: Runtime) -> None:
    job_id = client.post("/v1/jobs", json=caption_body(expires_after_s=1)).json()["id"]
    client.post("/v1/jobs", json=caption_body())
    sweep(runtime, 2)
    listed = client.get("/v1/jobs", params={"status": "expired"}).json()["data"]
    assert [job["id"] for job in listed] == [job_id]


def test_an_expired_job_sends_its_webhook(client: TestClient, runtime: Runtime) -> None:
    body = caption_body(expires_after_s=1, webhook={"url": "https://example.com/hook"})
    job_id = client.post("/v1/jobs", json=body).json()["id"]
    sweep(runtime, 2)
    with runtime.sessions() as session:
        sent = session.scalars(
            select(WebhookDelivery.event_type).where(WebhookDelivery.job_id == job_id)
        ).all()
    assert sent == ["job.expired"]
