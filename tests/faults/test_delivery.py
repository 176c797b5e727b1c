"""Jobs delivered twice at once to two workers, and 2,000 jobs submitted concurrently."""

from __future__ import annotations

import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import select

from core.models import Job, JobEvent
from core.queue import make_celery, publish_job
from tests.support.stack import Ledger, Stack, caption

pytestmark = pytest.mark.slow
IGNORED = re.compile(r"job (job_\w+) is not claimable")
COMPLETED = re.compile(r"job (job_\w+) succeeded")
LOAD_JOBS = 2000


def event_counts(sessions: Any, job_ids: list[str]) -> dict[str, Counter[str]]:
    counts: dict[str, Counter[str]] = {job_id: Counter() for job_id in job_ids}
    with sessions() as session:
        rows = session.execute(
            select(JobEvent.job_id, JobEvent.type).where(JobEvent.job_id.in_(job_ids))
        )
        for job_id, kind in rows:
            counts[job_id][kind] += 1
    return counts


def test_job_delivered_to_two_workers_at_once_runs_once(stack: Stack, sessions: Any) -> None:
    # One task thread each: a worker busy with a job cannot take its duplicate, the other one
    # gets it while the job runs.
    stack.settings = stack.settings.model_copy(update={"worker_threads": 1})
    stack.start_api()
    stack.start_sweeper()
    workers = {device: stack.start_worker(device) for device in ("cpu0", "cpu1")}
    for device, worker in workers.items():
        stack.wait_ready(sessions, worker, device)
    celery = make_celery(stack.settings)
    ledger = Ledger()
    try:
        with stack.client() as client:
            for seed in range(10):
                job_id = ledger.submit(client, caption(40, seed=seed))
                publish_job(celery, stack.settings.default_model, job_id)  # the second copy
                ledger.wait_all(sessions, timeout=60, stack=stack)
    finally:
        celery.close()
    counts = ledger.settle(sessions, stack.worker_logs())
    assert (counts.accepted, counts.finished, counts.lost, counts.completed_twice) == (10, 10, 0, 0)
    events = event_counts(sessions, ledger.accepted)
    assert all(events[j]["job.running"] == 1 and events[j]["job.succeeded"] == 1 for j in events)
    logs = {device: worker.log() for device, worker in workers.items()}
    ran = {m.group(1): d for d, text in logs.items() for m in COMPLETED.finditer(text)}
    ignored = {m.group(1): d for d, text in logs.items() for m in IGNORED.finditer(text)}
    assert sorted(ran) == sorted(ledger.accepted)
    # Every job's second copy reached the other worker, which found the job taken.
    assert {job_id: ignored.get(job_id) for job_id in ran} == {
        job_id: ({"cpu0", "cpu1"} - {device}).pop() for job_id, device in ran.items()
    }


def test_two_thousand_concurrent_jobs_on_two_workers_all_succeed_once(
    stack: Stack, sessions: Any
) -> None:
    # No republishing while the backlog drains: every job waits its turn in Redis.
    stack.settings = stack.settings.model_copy(update={"stale_queued_s": 3600.0})
    stack.start_api()
    stack.start_sweeper()
    workers = {device: stack.start_worker(device) for device in ("cpu0", "cpu1")}
    for device, worker in workers.items():
        stack.wait_ready(sessions, worker, device)
    ledger = Ledger()
    body = caption(1, exact=False)
    with stack.client() as client, ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda _: ledger.submit(client, body), range(LOAD_JOBS)))
    ledger.wait_all(sessions, timeout=900, stack=stack)
    counts = ledger.settle(sessions, stack.worker_logs())
    assert (counts.accepted, counts.finished, counts.lost, counts.completed_twice) == (
        LOAD_JOBS,
        LOAD_JOBS,
        0,
        0,
    )
    with sessions() as session:
        assert session.scalar(select(Job.id).where(Job.status != "succeeded")) is None
    ran = Counter(m.group(1) for w in workers.values() for m in COMPLETED.finditer(w.log()))
    assert set(ran) == set(ledger.accepted) and set(ran.values()) == {1}
    per_worker = [len(COMPLETED.findall(w.log())) for w in workers.values()]
    assert all(done > 0 for done in per_worker)  # both workers took part
