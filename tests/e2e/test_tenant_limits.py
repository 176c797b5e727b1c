"""A tenant limited to one running job: its jobs run one after another, others' are not held."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from core.config import Settings
from core.db import transaction
from core.models import Job
from core.tenants import create_api_key, ensure_tenant, set_running_limit
from tests.support import wait_job
from tests.support.stack import Stack, caption


@pytest.fixture
def stack(service_settings: Settings, tmp_path: Path) -> Iterator[Stack]:
    settings = service_settings.model_copy(
        update={"auth_enabled": True, "sweep_interval_s": 0.5, "tenant_limit_hold_s": 1.0}
    )
    running = Stack(settings, tmp_path)
    yield running
    running.stop()


def tenant_client(sessions: Any, stack: Stack, name: str, limit: int | None) -> httpx.Client:
    with transaction(sessions) as session:
        tenant = ensure_tenant(session, name)
        _, key = create_api_key(session, tenant.id)
        set_running_limit(session, name, limit)
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.Client(base_url=stack.base_url, headers=headers, timeout=60)


def watch_reasons(client: httpx.Client, job_ids: list[str], timeout: float = 240) -> set[str]:
    """The queue reasons the jobs showed while polled, until none is queued any more."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [client.get(f"/v1/jobs/{job_id}").json() for job_id in job_ids]
        seen |= {job["queue_reason"] for job in jobs if job.get("queue_reason")}
        if all(job["status"] != "queued" for job in jobs):
            break
        time.sleep(0.1)
    return seen


def test_a_tenant_limited_to_one_job_runs_its_jobs_one_at_a_time(
    stack: Stack, sessions: Any
) -> None:
    stack.start_api()
    stack.start_sweeper()
    worker = stack.start_worker()  # batches up to 8 rows: unlimited jobs would run together
    stack.wait_ready(sessions, worker, "cpu0")
    with (
        tenant_client(sessions, stack, "acme", 1) as acme,
        tenant_client(sessions, stack, "globex", None) as globex,
    ):
        limited = [acme.post("/v1/jobs", json=caption(24, seed=i)).json()["id"] for i in range(3)]
        free = globex.post("/v1/jobs", json=caption(24, seed=9)).json()["id"]
        reasons = watch_reasons(acme, limited)
        finished = [wait_job(acme, job_id, timeout=240) for job_id in limited]
        assert wait_job(globex, free, timeout=240)["status"] == "succeeded"
    assert "tenant_limit" in reasons  # a waiting job said why it waited
    assert [job["status"] for job in finished] == ["succeeded"] * 3, stack.log_tail()
    with sessions() as session:
        jobs = {job.id: job for job in session.scalars(select(Job))}
    runs = sorted((jobs[j].started_at, jobs[j].finished_at) for j in limited)
    for (_, finished_at), (started_at, _) in zip(runs, runs[1:], strict=False):
        assert finished_at is not None and started_at is not None
        assert finished_at <= started_at, f"two of acme's jobs overlapped: {runs}"
    assert [jobs[j].attempts for j in limited] == [1, 1, 1]  # a refused claim uses none
    log = "".join(stack.worker_logs())
    assert any(f"job {j} held" in log for j in limited), "the limit was never reached"
    assert f"job {free} held" not in log
    # globex's job did not wait behind acme's: it started before acme's last one.
    assert jobs[free].started_at is not None and jobs[free].started_at < runs[-1][0]
