"""Group commit: changes that arrive while a transaction commits go in the next one, together,
and one change's failure is never another's (on PostgreSQL and SQLite)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from bench.commits import claim_and_complete
from core.config import Settings
from core.db import transaction
from core.job_telemetry import install_job_telemetry
from core.jobs import claim_job, insert_job, new_job
from core.logs import current_log_context, log_context
from core.models import Job, JobEvent
from core.tenants import ensure_default_tenant
from worker.group_commit import GroupCommitter


def queued_jobs(sessions: Any, count: int) -> list[str]:
    spec = {"task": "caption", "images": [], "params": {"max_new_tokens": 4}}
    with transaction(sessions) as session:
        tenant = ensure_default_tenant(session).id
        return [
            insert_job(
                session,
                new_job(
                    tenant_id=tenant, model=Settings().default_model, spec=spec, max_attempts=3
                ),
                image_shas=[],
            ).id
            for _ in range(count)
        ]


def claim(job_id: str) -> Callable[[Session], Job | None]:
    return lambda session: claim_job(session, job_id, worker_id="w1", lease_s=60)


def statuses(sessions: Any, job_ids: list[str]) -> list[str]:
    with sessions() as session:
        found = dict(session.execute(select(Job.id, Job.status).where(Job.id.in_(job_ids))).all())
    return [found[job_id] for job_id in job_ids]


class HeldCommit:
    """A committer whose first change holds its transaction open until released, so that the
    changes submitted meanwhile queue up behind it, as they do behind a slow COMMIT."""

    def __init__(self, committer: GroupCommitter, pool: ThreadPoolExecutor) -> None:
        self.committer = committer
        self.pool = pool
        self.entered = threading.Event()
        self.release = threading.Event()

    def start(self, job_id: str) -> Future[Job | None]:
        def held(session: Session) -> Job | None:
            claimed = claim_job(session, job_id, worker_id="w1", lease_s=60)
            self.entered.set()
            assert self.release.wait(30)
            return claimed

        first = self.pool.submit(self.committer.run, held)
        assert self.entered.wait(30)
        return first

    def submit_behind(self, changes: list[Callable[[Session], Any]]) -> list[Future[Any]]:
        """Run each change in a thread of its own, then release the held one."""
        return self.call_behind(
            [lambda change=change: self.committer.run(change) for change in changes]
        )

    def call_behind(self, calls: list[Callable[[], Any]]) -> list[Future[Any]]:
        """Start calls that each run one change, wait until all are queued, release the held one."""
        futures = [self.pool.submit(call) for call in calls]
        deadline = time.monotonic() + 30
        while len(self.committer._pending) < len(calls):
            assert time.monotonic() < deadline, "the changes never queued"
            time.sleep(0.005)
        self.release.set()
        return futures


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(8) as executor:
        yield executor


@pytest.fixture
def commits(any_sessions: Any) -> Iterator[list[int]]:
    """The COMMITs the database is sent, counted at the connection: one entry per commit."""
    engine = any_sessions.kw["bind"]
    committed: list[int] = []

    def count(connection: Any) -> None:
        committed.append(1)

    event.listen(engine, "commit", count)
    yield committed
    event.remove(engine, "commit", count)


def test_changes_that_arrive_during_a_commit_share_the_next(
    any_sessions: Any, pool: ThreadPoolExecutor, commits: list[int]
) -> None:
    job_ids = queued_jobs(any_sessions, 6)
    committer = GroupCommitter(any_sessions)
    commits.clear()
    held = HeldCommit(committer, pool)
    first = held.start(job_ids[0])
    behind = held.submit_behind([claim(job_id) for job_id in job_ids[1:]])
    claimed = [first.result(30)] + [future.result(30) for future in behind]
    # Each caller gets its own job back, claimed for its first attempt.
    assert [job.id if job else None for job in claimed] == job_ids
    assert all(job is not None and job.attempts == 1 for job in claimed)
    assert statuses(any_sessions, job_ids) == ["running"] * 6
    # The held change alone, then the five that queued behind it together.
    assert len(commits) == 2
    assert (committer.transactions, committer.changes) == (2, 6)
    with any_sessions() as session:
        running = session.scalars(select(JobEvent.job_id).where(JobEvent.type == "job.running"))
        assert sorted(running) == sorted(job_ids)


def test_threads_claiming_and_completing_back_to_back_keep_forming_groups(
    any_sessions: Any,
) -> None:
    # Each thread's next change arrives as soon as its last one committed, as a worker's task
    # threads do at saturation. A thread whose change another took must not compete for the
    # next transaction: it would find nothing to take, and the changes arriving meanwhile
    # would commit one at a time (about 1.1 changes a transaction, before).
    job_ids = queued_jobs(any_sessions, 160)
    committer = GroupCommitter(any_sessions)
    assert claim_and_complete(committer, job_ids, threads=16) == []
    assert statuses(any_sessions, job_ids) == ["succeeded"] * 160
    assert committer.changes == 320
    assert committer.changes / committer.transactions >= 3, committer.transactions


def test_a_change_that_raises_fails_only_its_own_caller(
    any_sessions: Any, pool: ThreadPoolExecutor
) -> None:
    job_ids = queued_jobs(any_sessions, 4)
    committer = GroupCommitter(any_sessions)

    def claims_then_raises(session: Session) -> None:
        claim_job(session, job_ids[2], worker_id="w1", lease_s=60)
        raise ValueError("this job's own error")

    held = HeldCommit(committer, pool)
    held.start(job_ids[0])
    behind = held.submit_behind([claim(job_ids[1]), claims_then_raises, claim(job_ids[3])])
    assert behind[0].result(30) is not None and behind[2].result(30) is not None
    with pytest.raises(ValueError, match="this job's own error"):
        behind[1].result(30)
    # Its claim was rolled back; the others', in the same group at first, were not.
    assert statuses(any_sessions, job_ids) == ["running", "running", "queued", "running"]


def test_an_error_of_the_transaction_reaches_every_caller_in_it(
    any_sessions: Any, pool: ThreadPoolExecutor
) -> None:
    job_ids = queued_jobs(any_sessions, 4)
    committer = GroupCommitter(any_sessions)

    def connection_lost(session: Session) -> None:
        raise OperationalError("COMMIT", {}, ConnectionError("server closed the connection"))

    held = HeldCommit(committer, pool)
    held.start(job_ids[0])
    behind = held.submit_behind([claim(job_ids[1]), connection_lost, claim(job_ids[2])])
    for future in behind:  # each caller retries it as it would its own (core.retry)
        with pytest.raises(OperationalError):
            future.result(30)
    assert statuses(any_sessions, job_ids) == ["running", "queued", "queued", "queued"]
    assert committer.run(claim(job_ids[1])) is not None  # the next try commits


def test_each_change_runs_in_its_callers_log_context(
    any_sessions: Any, pool: ThreadPoolExecutor
) -> None:
    install_job_telemetry()  # a claim binds its tenant to the log context of its own job
    job_ids = queued_jobs(any_sessions, 4)
    committer = GroupCommitter(any_sessions)
    ran_in: dict[str, int] = {}

    def claim_in_its_context(job_id: str) -> tuple[dict[str, Any], int]:
        def claiming(session: Session) -> Job | None:
            ran_in[job_id] = threading.get_ident()
            return claim_job(session, job_id, worker_id="w1", lease_s=60)

        with log_context(job_id=job_id):
            committer.run(claiming)
            return current_log_context(), threading.get_ident()

    held = HeldCommit(committer, pool)
    held.start(job_ids[0])
    callers = held.call_behind(
        [lambda job_id=job_id: claim_in_its_context(job_id) for job_id in job_ids[1:]]
    )
    with transaction(any_sessions) as session:
        tenant = ensure_default_tenant(session).id
    callers_threads = []
    for job_id, caller in zip(job_ids[1:], callers, strict=True):
        context, thread = caller.result(30)
        assert context == {"job_id": job_id, "tenant": tenant}
        callers_threads.append(thread)
    # One thread committed all three, so two of them ran elsewhere, in their callers' contexts.
    assert len({ran_in[job_id] for job_id in job_ids[1:]}) == 1
    elsewhere = [
        ran_in[job_id] != t for job_id, t in zip(job_ids[1:], callers_threads, strict=True)
    ]
    assert sum(elsewhere) == 2


def test_with_two_slots_a_change_commits_beside_a_slow_one_and_later_ones_group(
    sessions: Any, pool: ThreadPoolExecutor
) -> None:
    job_ids = queued_jobs(sessions, 6)
    committer = GroupCommitter(sessions, concurrency=2)
    held = HeldCommit(committer, pool)
    first = held.start(job_ids[0])
    # The other slot is free: the next change commits at once, the held one still open.
    beside = committer.run(claim(job_ids[1]))
    assert beside is not None and beside.id == job_ids[1]
    assert not first.done() and committer.transactions == 1
    # Both slots busy: the changes made meanwhile wait, then commit together.
    second = HeldCommit(committer, pool)
    second_first = second.start(job_ids[2])
    behind = second.submit_behind([claim(job_id) for job_id in job_ids[3:]])
    held.release.set()
    claimed = [first.result(30), second_first.result(30)] + [f.result(30) for f in behind]
    assert [job.id if job else None for job in claimed] == [job_ids[0], *job_ids[2:]]
    assert statuses(sessions, job_ids) == ["running"] * 6
    assert (committer.transactions, committer.changes) == (4, 6)


def test_on_sqlite_one_transaction_at_a_time_whatever_the_setting(
    any_sessions: Any, pool: ThreadPoolExecutor
) -> None:
    job_ids = queued_jobs(any_sessions, 2)
    committer = GroupCommitter(any_sessions, concurrency=4)
    held = HeldCommit(committer, pool)
    first = held.start(job_ids[0])
    second = pool.submit(committer.run, claim(job_ids[1]))
    if any_sessions.kw["bind"].dialect.name == "sqlite":
        time.sleep(0.3)  # queued behind the held transaction, not in one of its own
        assert not second.done() and len(committer._pending) == 1
    else:
        assert second.result(30) is not None  # a second slot: beside the held one
    held.release.set()
    assert first.result(30) is not None and second.result(30) is not None
    assert statuses(any_sessions, job_ids) == ["running"] * 2
