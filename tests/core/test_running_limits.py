"""A tenant's running-jobs limit, enforced when a worker claims: on PostgreSQL and SQLite."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

from celery import Celery
from sqlalchemy import func, select, text

from core.config import ModelSpec, Settings
from core.db import transaction, utcnow
from core.jobs import claim_job, complete_job
from core.models import Job, JobEvent
from core.sweeper import sweep_once
from core.tenants import ensure_tenant, set_running_limit
from tests.support.jobs import load, new_job, published_ids

MODEL = ModelSpec(alias="tiny", checkpoint="unused", default=True)
HOLD_S = 2.0


def limit(sessions: Any, tenant: str, value: int | None) -> None:
    with transaction(sessions) as session:
        ensure_tenant(session, tenant)
        set_running_limit(session, tenant, value)


def claim(sessions: Any, job_id: str, *, default: int = 0, now: Any = None) -> Job | None:
    with transaction(sessions) as session:
        return claim_job(
            session,
            job_id,
            worker_id="w",
            lease_s=60,
            now=now,
            running_limit=default,
            hold_s=HOLD_S,
        )


def finish(sessions: Any, job: Job) -> None:
    with transaction(sessions) as session:
        assert complete_job(session, job.id, attempt=job.attempts, result={}, usage={})


def event_types(sessions: Any, job_id: str) -> list[str]:
    with sessions() as session:
        return list(
            session.scalars(
                select(JobEvent.type).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
            )
        )


def test_a_claim_over_the_limit_leaves_the_job_queued_without_using_an_attempt(
    any_sessions: Any,
) -> None:
    limit(any_sessions, "acme", 1)
    first, second = (
        new_job(any_sessions, MODEL, tenant="acme"),
        new_job(any_sessions, MODEL, tenant="acme"),
    )
    assert claim(any_sessions, first) is not None
    before = utcnow()
    assert claim(any_sessions, second) is None
    held = load(any_sessions, second)
    assert (held.status, held.attempts, held.worker_id, held.started_at) == (
        "queued", 0, None, None,
    )  # fmt: skip
    assert held.published_at is None  # the sweeper publishes it again once available
    assert held.available_at is not None
    assert before + timedelta(seconds=HOLD_S) <= held.available_at
    assert event_types(any_sessions, second) == ["job.queued"]


def test_the_held_job_runs_once_a_slot_frees(any_sessions: Any) -> None:
    limit(any_sessions, "acme", 1)
    first, second = (new_job(any_sessions, MODEL, tenant="acme") for _ in range(2))
    running = claim(any_sessions, first)
    assert running is not None and claim(any_sessions, second) is None
    finish(any_sessions, running)
    # Not before it is available again (the sweeper publishes it then)...
    assert claim(any_sessions, second) is None
    later = utcnow() + timedelta(seconds=HOLD_S + 1)
    claimed = claim(any_sessions, second, now=later)
    # ...then it runs, on its first attempt.
    assert claimed is not None and claimed.attempts == 1 and claimed.status == "running"


def test_the_default_limit_applies_to_tenants_without_their_own(any_sessions: Any) -> None:
    jobs = [new_job(any_sessions, MODEL, tenant="acme") for _ in range(3)]
    assert [claim(any_sessions, j, default=2) is not None for j in jobs] == [True, True, False]


def test_a_tenants_own_limit_overrides_the_default(any_sessions: Any) -> None:
    limit(any_sessions, "big", 0)  # no limit for this tenant, whatever the default
    limit(any_sessions, "small", 1)
    big = [new_job(any_sessions, MODEL, tenant="big") for _ in range(3)]
    small = [new_job(any_sessions, MODEL, tenant="small") for _ in range(2)]
    assert all(claim(any_sessions, j, default=2) is not None for j in big)
    assert [claim(any_sessions, j, default=2) is not None for j in small] == [True, False]


def test_another_tenants_jobs_are_not_held_back(any_sessions: Any) -> None:
    limit(any_sessions, "acme", 1)
    assert claim(any_sessions, new_job(any_sessions, MODEL, tenant="acme")) is not None
    assert claim(any_sessions, new_job(any_sessions, MODEL, tenant="acme")) is None
    assert claim(any_sessions, new_job(any_sessions, MODEL, tenant="globex")) is not None


def test_a_job_past_its_deadline_still_expires_at_the_limit(any_sessions: Any) -> None:
    limit(any_sessions, "acme", 1)
    first, second = (new_job(any_sessions, MODEL, tenant="acme") for _ in range(2))
    with transaction(any_sessions) as session:
        session.get(Job, second).expires_at = utcnow() + timedelta(seconds=30)  # type: ignore[union-attr]
    assert claim(any_sessions, first) is not None
    assert claim(any_sessions, second, now=utcnow() + timedelta(seconds=60)) is None
    assert load(any_sessions, second).status == "expired"


def test_the_sweeper_publishes_a_held_job_when_it_is_due(
    sessions: Any, celery_app: Celery, service_settings: Settings
) -> None:
    model = service_settings.default_model
    limit(sessions, "acme", 1)
    first, second = (new_job(sessions, model, tenant="acme") for _ in range(2))
    assert claim(sessions, first) is not None and claim(sessions, second) is None
    assert (
        sweep_once(sessions=sessions, celery=celery_app, settings=service_settings).republished == 0
    )
    later = utcnow() + timedelta(seconds=HOLD_S + 1)
    report = sweep_once(sessions=sessions, celery=celery_app, settings=service_settings, now=later)
    assert report.republished == 1 and published_ids(service_settings) == [second]


def _waiting_on_a_lock(sessions: Any) -> bool:
    with sessions() as session:
        waiting = session.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
    return bool(waiting)


def test_a_second_claim_waits_for_the_first_to_commit_on_postgresql(sessions: Any) -> None:
    """Two workers claim two jobs of a tenant limited to 1 at the same moment: one runs."""
    limit(sessions, "acme", 1)
    first, second = (new_job(sessions, MODEL, tenant="acme") for _ in range(2))
    outcome: dict[str, Job | None] = {}
    with transaction(sessions) as session:
        # The first claim is made, not yet committed, when the second one starts.
        assert claim_job(session, first, worker_id="a", lease_s=60) is not None
        other = threading.Thread(target=lambda: outcome.update(b=claim(sessions, second)))
        other.start()
        deadline = time.monotonic() + 30
        while other.is_alive() and not _waiting_on_a_lock(sessions):
            assert time.monotonic() < deadline, "the second claim neither waited nor ended"
            time.sleep(0.05)
        # Without the tenant lock the second claim would already have counted 0 running.
    other.join(timeout=60)
    assert outcome == {"b": None}
    assert load(sessions, second).status == "queued" and load(sessions, second).attempts == 0


def test_many_claimers_at_once_never_exceed_the_limit_on_postgresql(sessions: Any) -> None:
    limit(sessions, "acme", 2)
    jobs = [new_job(sessions, MODEL, tenant="acme") for _ in range(8)]
    start = threading.Barrier(len(jobs))
    claimed: list[bool] = []

    def claimer(job_id: str) -> None:
        start.wait(timeout=30)
        claimed.append(claim(sessions, job_id) is not None)

    threads = [threading.Thread(target=claimer, args=(job_id,)) for job_id in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(claimed) == [False] * 6 + [True] * 2
    with sessions() as session:
        statuses = dict(
            session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
        )
        attempts = sum(session.scalars(select(Job.attempts)))
    assert statuses == {"running": 2, "queued": 6} and attempts == 2
