"""GET /metrics through HTTP: request metrics, job counters and the autoscaling gauges."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from api.deps import Runtime
from core.db import transaction, utcnow
from core.models import Job, Worker
from tests.support.api import b64, png_bytes


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def submit(client: TestClient, seed: int) -> str:
    body = {"task": "caption", "images": [{"data": b64(png_bytes(color=(seed, 1, 2)))}]}
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def test_requests_are_counted_by_route_template_and_status(client: TestClient) -> None:
    before = scrape(client)
    assert client.get("/v1/jobs/job_missing").status_code == 404
    assert client.get("/v1/jobs/job_other").status_code == 404
    after = scrape(client)
    labels = {"method": "GET", "route": "/v1/jobs/{job_id}", "status": "404"}
    name = "internvl_jobs_http_requests_total"
    assert value(after, name, **labels) - value(before, name, **labels) == 2
    count = "internvl_jobs_http_request_duration_seconds_count"
    timing = {"method": "GET", "route": "/v1/jobs/{job_id}"}
    assert value(after, count, **timing) - value(before, count, **timing) == 2
    assert not any("job_missing" in str(key) for key in after)


def test_every_response_carries_a_request_id(client: TestClient) -> None:
    assert client.get("/healthz").headers["x-request-id"]
    echoed = client.get("/healthz", headers={"X-Request-ID": "req-42"})
    assert echoed.headers["x-request-id"] == "req-42"


def test_submitted_jobs_show_as_queue_depth_and_oldest_age(
    client: TestClient, runtime: Runtime
) -> None:
    before = scrape(client)
    first = submit(client, 1)
    submit(client, 2)
    with transaction(runtime.sessions) as session:  # the first job has waited two minutes
        session.execute(
            update(Job).where(Job.id == first).values(created_at=utcnow() - timedelta(minutes=2))
        )
    after = scrape(client)
    queue = {"model": "tiny", "queue": "internvl.tiny"}
    assert value(after, "internvl_jobs_queue_depth", **queue) == 2
    assert 120 <= value(after, "internvl_jobs_queue_oldest_age_seconds", **queue) < 600
    assert value(after, "internvl_jobs_broker_queue_length", **queue) == 2
    submitted = "internvl_jobs_jobs_submitted_total"
    labels = {"model": "tiny", "task": "caption"}
    assert value(after, submitted, **labels) - value(before, submitted, **labels) == 2
    assert value(after, "internvl_jobs_queue_stats_up") == 1


def test_an_empty_queue_reports_zero_depth_and_age(client: TestClient) -> None:
    samples = scrape(client)
    queue = {"model": "tiny", "queue": "internvl.tiny"}
    assert value(samples, "internvl_jobs_queue_depth", **queue) == 0
    assert value(samples, "internvl_jobs_queue_oldest_age_seconds", **queue) == 0
    assert ("internvl_jobs_queue_depth", tuple(sorted(queue.items()))) in samples


def test_workers_are_counted_by_state_and_silent_ones_are_lost(
    client: TestClient, runtime: Runtime
) -> None:
    now = utcnow()
    with transaction(runtime.sessions) as session:
        for name, beat in (("gpu0.tiny@a", now), ("gpu1.tiny@a", now - timedelta(minutes=5))):
            session.add(
                Worker(
                    id=name,
                    host="a",
                    device=name[:4],
                    model="tiny",
                    queue="internvl.tiny",
                    state="ready",
                    pid=1,
                    last_heartbeat_at=beat,
                )
            )
    samples = scrape(client)
    assert value(samples, "internvl_jobs_workers", model="tiny", state="ready") == 1
    assert value(samples, "internvl_jobs_workers", model="tiny", state="lost") == 1
    age = value(
        samples, "internvl_jobs_worker_heartbeat_age_seconds", worker="gpu1.tiny@a", model="tiny"
    )
    assert age >= 300
