"""A queued job explains its wait: position, estimated start, and why nothing moves."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.deps import Runtime
from core.config import Settings
from core.db import transaction, utcnow
from core.jobs import claim_job
from core.models import Worker
from core.queue_info import THROUGHPUT_WINDOW_S
from core.tenants import DEFAULT_TENANT_NAME, set_running_limit
from tests.support.api import caption_body, finish_job


@pytest.fixture
def fresh_runtime(service_settings: Settings) -> Iterator[Runtime]:
    """A runtime that reads the model figures on every request (no caching between asserts)."""
    runtime = Runtime.from_settings(service_settings.model_copy(update={"model_stats_ttl_s": 0}))
    yield runtime
    runtime.close()


@pytest.fixture
def fresh(fresh_runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime=fresh_runtime)) as test_client:
        yield test_client


def add_worker(runtime: Runtime, worker_id: str, state: str) -> None:
    with transaction(runtime.sessions) as session:
        session.add(
            Worker(
                id=worker_id,
                host="h",
                device="cpu",
                model="tiny",
                queue="q",
                state=state,
                pid=1,
                last_heartbeat_at=utcnow(),
            )
        )


def submit(client: TestClient, **extra: object) -> str:
    response = client.post("/v1/jobs", json=caption_body(**extra))
    assert response.status_code == 202
    return str(response.json()["id"])


def test_position_counts_the_jobs_of_its_model_ahead_of_it(fresh: TestClient) -> None:
    first, second, third = (submit(fresh) for _ in range(3))
    urgent = submit(fresh, priority=5)
    positions = {
        job_id: fresh.get(f"/v1/jobs/{job_id}").json()["queue_position"]
        for job_id in (first, second, third, urgent)
    }
    assert positions == {urgent: 0, first: 1, second: 2, third: 3}


def test_reason_says_no_worker_then_workers_starting(
    fresh: TestClient, fresh_runtime: Runtime
) -> None:
    job_id = submit(fresh)
    job = fresh.get(f"/v1/jobs/{job_id}").json()
    assert job["queue_reason"] == "no_worker" and job["estimated_start_s"] is None
    add_worker(fresh_runtime, "w1", "starting")
    assert fresh.get(f"/v1/jobs/{job_id}").json()["queue_reason"] == "workers_starting"


def test_reason_says_tenant_limit_while_its_tenant_runs_its_limit(
    fresh: TestClient, fresh_runtime: Runtime
) -> None:
    add_worker(fresh_runtime, "w1", "ready")
    running, waiting = submit(fresh), submit(fresh)
    with transaction(fresh_runtime.sessions) as session:
        set_running_limit(session, DEFAULT_TENANT_NAME, 1)
        assert claim_job(session, running, worker_id="w1", lease_s=60) is not None
    job = fresh.get(f"/v1/jobs/{waiting}").json()
    assert (job["status"], job["queue_reason"], job["estimated_start_s"]) == (
        "queued", "tenant_limit", None,
    )  # fmt: skip
    assert job["queue_position"] == 0
    with transaction(fresh_runtime.sessions) as session:
        set_running_limit(session, DEFAULT_TENANT_NAME, 2)
    assert fresh.get(f"/v1/jobs/{waiting}").json()["queue_reason"] is None


def test_the_default_running_limit_applies_to_the_reason(service_settings: Settings) -> None:
    settings = service_settings.model_copy(
        update={"model_stats_ttl_s": 0, "max_running_jobs_per_tenant": 1}
    )
    runtime = Runtime.from_settings(settings)
    try:
        with TestClient(create_app(runtime=runtime)) as limited:
            running, waiting = submit(limited), submit(limited)
            assert limited.get(f"/v1/jobs/{waiting}").json()["queue_reason"] == "no_worker"
            with transaction(runtime.sessions) as session:
                assert claim_job(session, running, worker_id="w1", lease_s=60) is not None
            assert limited.get(f"/v1/jobs/{waiting}").json()["queue_reason"] == "tenant_limit"
    finally:
        runtime.close()


def test_estimate_follows_recent_throughput(fresh: TestClient, fresh_runtime: Runtime) -> None:
    add_worker(fresh_runtime, "w1", "ready")
    for _ in range(3):  # three jobs finished within the window
        finish_job(fresh_runtime, submit(fresh))
    waiting = [submit(fresh) for _ in range(3)]
    last = fresh.get(f"/v1/jobs/{waiting[-1]}").json()
    assert last["queue_reason"] is None and last["queue_position"] == 2
    assert last["estimated_start_s"] == pytest.approx(2 / (3 / THROUGHPUT_WINDOW_S), abs=0.1)


def test_finished_and_running_jobs_carry_no_queue_fields(
    fresh: TestClient, fresh_runtime: Runtime
) -> None:
    job_id = submit(fresh)
    finish_job(fresh_runtime, job_id)
    job = fresh.get(f"/v1/jobs/{job_id}").json()
    assert job["queue_position"] is None and job["queue_reason"] is None


def test_models_show_depth_throughput_and_workers(
    fresh: TestClient, fresh_runtime: Runtime
) -> None:
    add_worker(fresh_runtime, "w1", "ready")
    add_worker(fresh_runtime, "w2", "starting")
    finish_job(fresh_runtime, submit(fresh))
    submit(fresh)
    submit(fresh)
    (model,) = fresh.get("/v1/models").json()["models"]
    assert model["queued"] == 2 and model["running"] == 0
    assert model["ready_workers"] == 1 and model["starting_workers"] == 1
    assert model["throughput_per_min"] == pytest.approx(60 / THROUGHPUT_WINDOW_S, abs=0.01)


def test_model_figures_are_cached_per_process(client: TestClient, runtime: Runtime) -> None:
    assert runtime.settings.model_stats_ttl_s >= 5
    assert client.get("/v1/models").json()["models"][0]["queued"] == 0
    submit(client)
    # Within the cache period the figures are the ones read first: no query per request.
    assert client.get("/v1/models").json()["models"][0]["queued"] == 0
