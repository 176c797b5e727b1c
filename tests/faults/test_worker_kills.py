"""Workers killed with SIGKILL mid-generation, and with jobs claimed but not started."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from core.db import utcnow
from core.models import Job, JobEvent
from tests.support import ServiceProcess
from tests.support.stack import Ledger, Stack, caption, wait_until

pytestmark = pytest.mark.slow

LONG_TOKENS = 200  # a few seconds on the tiny model: long enough to be killed mid-way
KILLS = 20
MAX_ATTEMPTS = 20
MAX_KILLS_PER_JOB = MAX_ATTEMPTS - 5  # every job can still succeed
IN_FLIGHT = 6  # jobs queued or running while the loop kills: each kill orphans a few
DEVICES = ("cpu0", "cpu1", "cpu2")  # while some restart, another one is busy


def running_jobs(sessions: Any) -> list[tuple[str, str, int, Any]]:
    """(id, worker_id, attempt, started_at) of every running job."""
    with sessions() as session:
        rows = session.execute(
            select(Job.id, Job.worker_id, Job.attempts, Job.started_at).where(
                Job.status == "running"
            )
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


def orphaned_by(sessions: Any, before: list[tuple[str, str, int, Any]], worker_id: str) -> set:
    """The jobs the killed worker held: still running, with the attempt it had claimed."""
    held = {(job_id, attempt) for job_id, owner, attempt, _ in before if owner == worker_id}
    still = {(job_id, attempt) for job_id, _, attempt, _ in running_jobs(sessions)}
    return {job_id for job_id, attempt in held & still}


def kill(process: ServiceProcess) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    assert process.process is not None
    process.process.wait(10)


def test_sigkill_mid_generation_twenty_times_loses_and_doubles_nothing(
    stack: Stack, sessions: Any
) -> None:
    stack.settings = stack.settings.model_copy(update={"max_attempts": MAX_ATTEMPTS})
    stack.start_api()
    stack.start_sweeper()
    workers = Workers(stack)
    for device in DEVICES:
        workers.start(device)
    for device, worker in workers.processes.items():
        stack.wait_ready(sessions, worker, device)
    ledger = Ledger()
    kills: Counter[str] = Counter()
    kill_count = 0
    with stack.client() as client:
        while kill_count < KILLS:
            while ledger.unfinished(sessions) < IN_FLIGHT:
                ledger.submit(client, caption(LONG_TOKENS, seed=len(ledger.accepted)))
            target = workers.victim(sessions, kills)
            if target is None:
                continue
            device, before = target
            kill(workers.processes[device])
            orphans = orphaned_by(sessions, before, stack.worker_id(device))
            workers.start(device)
            if orphans:
                kill_count += 1
                kills.update(orphans)
    ledger.wait_all(sessions, timeout=300, stack=stack)
    counts = ledger.settle(sessions, stack.worker_logs())
    assert (counts.lost, counts.completed_twice) == (0, 0)
    with sessions() as session:
        rows = session.execute(select(Job.id, Job.attempts, Job.status, Job.error_code)).all()
        requeues = Counter(
            session.scalars(
                select(JobEvent.job_id).where(
                    JobEvent.type == "job.queued",
                    JobEvent.data["reason"].as_string() == "lease_expired",
                )
            )
        )
    assert [r for r in rows if r.status != "succeeded"] == [], stack.log_tail()
    # Every kill cost its jobs an attempt, and every attempt after the first is a requeue after
    # a lease expiry (a kill, or, on a starved machine, a worker that missed its renewals).
    assert all(requeues[job_id] >= killed for job_id, killed in kills.items())
    assert {row.id: row.attempts for row in rows} == {row.id: requeues[row.id] + 1 for row in rows}


class Workers:
    """One worker process per device label, restarted after each kill."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.processes: dict[str, ServiceProcess] = {}
        self.started_at: dict[str, datetime] = {}

    def start(self, device: str) -> None:
        self.started_at[device] = utcnow()
        self.processes[device] = self.stack.start_worker(device)

    def victim(self, sessions: Any, kills: Counter[str]) -> tuple[str, list] | None:
        """A device whose live process has held a job for a second and is generating (its probe
        says so), or None for now. Every job that process holds dies with it, so none may be at
        its kill limit."""
        wait_until(lambda: running_jobs(sessions), "a job is running", timeout=120)
        before = running_jobs(sessions)
        now = utcnow()
        for device, process in self.processes.items():
            held = [
                (job_id, started_at)
                for job_id, owner, _, started_at in before
                if owner == self.stack.worker_id(device) and started_at > self.started_at[device]
            ]
            if (
                held
                and process.alive()
                and all(kills[job_id] < MAX_KILLS_PER_JOB for job_id, _ in held)
                and any(now - started_at >= timedelta(seconds=1) for _, started_at in held)
                and (self.stack.worker_report(device).get("generating_s") or 0) >= 0.5
            ):
                return device, before
        time.sleep(0.1)
        return None


def test_worker_killed_with_claimed_but_unstarted_jobs_loses_none(
    stack: Stack, sessions: Any
) -> None:
    one_at_a_time = stack.settings.default_model.model_copy(update={"max_batch_size": 1})
    overrides = {"models": [one_at_a_time], "worker_threads": 4}
    stack.start_api()
    stack.start_sweeper()
    worker = stack.start_worker("cpu0", **overrides)
    stack.wait_ready(sessions, worker, "cpu0")
    ledger = Ledger()
    with stack.client() as client:
        for seed in range(6):
            ledger.submit(client, caption(LONG_TOKENS, seed=seed))
    # Four task threads claim four jobs; the batcher runs one, three wait their turn.
    wait_until(lambda: len(running_jobs(sessions)) == 4, "the worker holds four jobs")
    wait_until(
        lambda: (
            (report := stack.worker_report("cpu0")).get("pending") == 3
            and report.get("generating_s") is not None
        ),
        "one job generates and three wait for the model",
    )
    before = running_jobs(sessions)
    kill(worker)
    orphans = orphaned_by(sessions, before, stack.worker_id("cpu0"))
    assert len(orphans) == 4
    worker = stack.start_worker("cpu0", **overrides)
    ledger.wait_all(sessions, timeout=300, stack=stack)
    counts = ledger.settle(sessions, stack.worker_logs())
    assert (counts.accepted, counts.finished, counts.lost, counts.completed_twice) == (6, 6, 0, 0)
    with sessions() as session:
        attempts = dict(session.execute(select(Job.id, Job.attempts)).all())
    assert sorted(attempts[job_id] for job_id in ledger.accepted) == [1, 1, 2, 2, 2, 2]
    assert {job_id for job_id in ledger.accepted if attempts[job_id] == 2} == orphans
