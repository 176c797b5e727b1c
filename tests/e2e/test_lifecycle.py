"""Lifecycle features end to end, in separate processes: priorities, cancel of a running job,
and a worker's graceful shutdown on SIGTERM."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from core.config import Settings
from core.models import Job, JobEvent
from devtools.harness import free_port
from tests.support import ServiceProcess, service_env
from tests.support.stack import Ledger, Stack, caption, wait_until


@pytest.fixture
def stack(service_settings: Settings, sessions: Any, tmp_path: Path) -> Iterator[Stack]:
    one_at_a_time = service_settings.default_model.model_copy(update={"max_batch_size": 1})
    settings = service_settings.model_copy(
        update={
            "models": [one_at_a_time],
            "lease_s": 10.0,
            "sweep_interval_s": 0.5,
            "cancel_poll_s": 0.2,
        }
    )
    running = Stack(settings, tmp_path)
    yield running
    running.stop()


def rows(sessions: Any, job_ids: list[str]) -> dict[str, Job]:
    with sessions() as session:
        return {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(job_ids)))}


def test_urgent_jobs_run_before_jobs_queued_earlier(stack: Stack, sessions: Any) -> None:
    stack.settings = stack.settings.model_copy(update={"worker_threads": 1})
    stack.start_api()
    ledger = Ledger()
    order = [0, 0, 0, 9, 5, 9, 0, 5]
    with stack.client() as client:  # all queued before any worker runs
        for seed, priority in enumerate(order):
            ledger.submit(client, {**caption(2, seed=seed, exact=False), "priority": priority})
    stack.start_worker("cpu0")
    ledger.wait_all(sessions, timeout=180, stack=stack)
    jobs = rows(sessions, ledger.accepted)
    by_start = sorted(jobs.values(), key=lambda job: job.started_at)  # type: ignore[arg-type, return-value]
    assert [job.priority for job in by_start] == [9, 9, 5, 5, 0, 0, 0, 0]
    within_zero = [job.id for job in by_start if job.priority == 0]
    assert within_zero == [j for j, p in zip(ledger.accepted, order, strict=True) if p == 0]


def test_cancel_stops_a_running_job_at_its_next_step(stack: Stack, sessions: Any) -> None:
    stack.start_api()
    stack.start_sweeper()
    worker = stack.start_worker("cpu0")
    stack.wait_ready(sessions, worker, "cpu0")
    with stack.client() as client:
        job_id = Ledger().submit(client, caption(400))
        wait_until(generating(stack, "cpu0"), "the job generates")
        response = client.post(f"/v1/jobs/{job_id}/cancel")
        assert response.status_code == 202
        job = wait_until(
            lambda: (j := client.get(f"/v1/jobs/{job_id}").json())["status"] == "canceled" and j,
            "the job is canceled",
        )
    assert job["result"] is None and job["finished_at"]
    assert job["usage"]["completion_tokens"] < 400
    assert client_conflict(stack, job_id) == "job_finished"


def generating(stack: Stack, device: str, waiting: int = 0) -> Any:
    """True once the worker's probe shows a generation running and `waiting` jobs pending."""

    def check() -> bool:
        report = stack.worker_report(device)
        return report.get("generating_s") is not None and report.get("pending") == waiting

    return check


def client_conflict(stack: Stack, job_id: str) -> str:
    with stack.client() as client:
        response = client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 409
    return str(response.json()["code"])


def test_sigterm_lets_the_running_job_finish_and_hands_back_the_waiting_ones(
    stack: Stack, sessions: Any, tmp_path: Path
) -> None:
    # One row at a time: continuous batching would otherwise admit all three jobs into the
    # running batch at once, and none would be waiting to hand back.
    one_row = [spec.model_copy(update={"max_batch_size": 1}) for spec in stack.settings.models]
    stack.settings = stack.settings.model_copy(
        update={"worker_threads": 3, "shutdown_grace_s": 120.0, "models": one_row}
    )
    stack.start_api()
    stack.start_sweeper()
    probe_port = free_port()
    env = service_env(stack.settings.model_copy(update={"worker_probe_port": probe_port}))
    launcher = ServiceProcess(["worker", "--devices", "cpu"], env, tmp_path / "launcher.log")
    launcher.start()
    stack.probe_ports["cpu0"] = probe_port
    ledger = Ledger()
    with stack.client() as client:
        for seed in range(3):
            ledger.submit(client, caption(150, seed=seed))
    wait_until(generating(stack, "cpu0", waiting=2), "one job generates, two wait for it")
    os.killpg(launcher.pid, signal.SIGTERM)
    assert launcher.process is not None
    assert launcher.process.wait(120) == 0, launcher.log()[-3000:]
    after_stop = rows(sessions, ledger.accepted)
    finished = [j for j in after_stop.values() if j.status == "succeeded"]
    handed_back = [j for j in after_stop.values() if j.status == "queued"]
    assert (len(finished), len(handed_back)) == (1, 2), launcher.log()[-3000:]
    with sessions() as session:
        reasons = session.scalars(
            select(JobEvent.data).where(
                JobEvent.job_id.in_([j.id for j in handed_back]), JobEvent.type == "job.queued"
            )
        )
        assert [r for r in reasons if r] == [{"reason": "worker_shutdown"}] * 2
    stack.start_worker("cpu1")
    ledger.wait_all(sessions, timeout=180, stack=stack)
    final = rows(sessions, ledger.accepted)
    assert sorted(j.attempts for j in final.values()) == [1, 2, 2]
    assert {j.status for j in final.values()} == {"succeeded"}
