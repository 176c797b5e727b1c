"""A claim and a completion record their event with the status change, on PostgreSQL (one
statement) and SQLite (two), and a change that does not happen records none."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event, select

from core import jobs
from core.config import ModelSpec
from core.db import transaction
from core.jobs import claim_job, complete_job
from core.models import Job, JobEvent
from core.tenants import ensure_tenant, set_running_limit
from tests.support.jobs import new_job

MODEL = ModelSpec(alias="tiny", checkpoint="unused", default=True)


@pytest.fixture
def heard() -> Iterator[list[tuple[str, str, str]]]:
    """(job id, status as the listener saw it, event) for every job event listened to."""
    events: list[tuple[str, str, str]] = []

    def listener(_session: Any, job: Job, event: str) -> None:
        events.append((job.id, job.status, event))

    jobs.add_event_listener(listener)
    yield events
    jobs._listeners.remove(listener)


def events(sessions: Any, job_id: str) -> list[tuple[str, int, dict[str, Any]]]:
    with sessions() as session:
        return [
            (row.type, row.attempt, row.data)
            for row in session.execute(
                select(JobEvent.type, JobEvent.attempt, JobEvent.data)
                .where(JobEvent.job_id == job_id)
                .order_by(JobEvent.id)
            )
        ]


def test_claim_and_completion_record_their_events(
    any_sessions: Any, heard: list[tuple[str, str, str]]
) -> None:
    job_id = new_job(any_sessions, MODEL)
    with transaction(any_sessions) as session:
        claimed = claim_job(session, job_id, worker_id="w-1", lease_s=60)
        assert claimed is not None
        assert (claimed.status, claimed.attempts, claimed.worker_id) == ("running", 1, "w-1")
    with transaction(any_sessions) as session:
        done = complete_job(session, job_id, attempt=1, result={"text": "hi"}, usage={"n": 1})
        assert done is not None
        assert (done.status, done.result, done.usage) == ("succeeded", {"text": "hi"}, {"n": 1})
    assert events(any_sessions, job_id) == [
        ("job.queued", 0, {}),
        ("job.running", 1, {}),
        ("job.succeeded", 1, {}),
    ]
    assert heard[-2:] == [
        (job_id, "running", "job.running"),
        (job_id, "succeeded", "job.succeeded"),
    ]
    with any_sessions() as session:
        times = session.scalars(
            select(JobEvent.created_at).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        ).all()
        job = session.get(Job, job_id)
        assert job is not None and job.started_at is not None and job.finished_at is not None
        assert times[1] <= job.finished_at and times[1] >= job.started_at


def test_a_change_that_does_not_happen_records_nothing(
    any_sessions: Any, heard: list[tuple[str, str, str]]
) -> None:
    job_id = new_job(any_sessions, MODEL)
    with transaction(any_sessions) as session:
        assert complete_job(session, job_id, attempt=1, result={}, usage={}) is None  # queued
        assert claim_job(session, job_id, worker_id="w", lease_s=60) is not None
    with transaction(any_sessions) as session:
        assert claim_job(session, job_id, worker_id="w", lease_s=60) is None  # claimed already
        assert complete_job(session, job_id, attempt=2, result={}, usage={}) is None  # fenced
    assert [event for event, _, _ in events(any_sessions, job_id)] == ["job.queued", "job.running"]
    assert [event for _, _, event in heard] == ["job.queued", "job.running"]


def test_on_postgresql_a_claim_no_limit_applies_to_is_one_statement(
    sessions: Any, heard: list[tuple[str, str, str]]
) -> None:
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    free = new_job(sessions, MODEL, tenant="ten_free")
    limited = new_job(sessions, MODEL, tenant="ten_limited")
    with transaction(sessions) as session:
        ensure_tenant(session, "ten_limited")
        set_running_limit(session, "ten_limited", 5)
    engine = sessions.kw["bind"]
    event.listen(engine, "before_cursor_execute", seen)
    try:
        with transaction(sessions) as session:
            assert claim_job(session, free, worker_id="w", lease_s=60) is not None
        claims_free = [s for s in statements if not s.startswith(("BEGIN", "COMMIT", "select"))]
        statements.clear()
        with transaction(sessions) as session:
            assert claim_job(session, limited, worker_id="w", lease_s=60) is not None
        claims_limited = [s for s in statements if not s.startswith(("BEGIN", "COMMIT", "select"))]
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    # The owner's limit is read, locked and counted only where one applies.
    assert len(claims_free) == 1
    assert len(claims_limited) > 2
    assert [(job_id, event) for job_id, _, event in heard[-2:]] == [
        (free, "job.running"),
        (limited, "job.running"),
    ]
    assert [event for event, _, _ in events(sessions, free)] == ["job.queued", "job.running"]
