"""The sweeper on PostgreSQL and Redis: what it requeues, fails, cancels and publishes."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

from celery import Celery
from sqlalchemy import update

from core.config import Settings
from core.db import make_engine, make_session_factory, transaction, utcnow
from core.jobs import release_job
from core.migrations import upgrade
from core.models import Job
from core.queue import make_celery
from core.sweeper import sweep_once
from devtools.harness import free_port
from tests.support.jobs import event_log, load, new_job, published_ids, running_job


def sweep(sessions: Any, celery: Celery, settings: Settings) -> Any:
    return sweep_once(sessions=sessions, celery=celery, settings=settings)


def test_expired_lease_is_requeued_and_published_again(
    sessions: Any, celery_app: Celery, service_settings: Settings
) -> None:
    job_id = running_job(sessions, service_settings.default_model, lease_s=-1)
    report = sweep(sessions, celery_app, service_settings)
    assert (report.requeued, report.republished) == (1, 1)
    job = load(sessions, job_id)
    assert (job.status, job.attempts, job.worker_id) == ("queued", 1, None)
    assert event_log(sessions, job_id)[-1] == ("job.queued", {"reason": "lease_expired"})
    assert published_ids(service_settings) == [job_id]


def test_live_lease_is_left_alone(
    sessions: Any, celery_app: Celery, service_settings: Settings
) -> None:
    job_id = running_job(sessions, service_settings.default_model, lease_s=30)
    assert not sweep(sessions, celery_app, service_settings)
    assert load(sessions, job_id).status == "running"
    assert published_ids(service_settings) == []


def test_expired_lease_on_the_last_attempt_fails_the_job(
    sessions: Any, celery_app: Celery, service_settings: Settings
) -> None:
    job_id = running_job(sessions, service_settings.default_model, lease_s=-1, max_attempts=1)
    assert sweep(sessions, celery_app, service_settings).exhausted == 1
    job = load(sessions, job_id)
    assert (job.status, job.error_code) == ("failed", "attempts_exhausted")
    assert job.finished_at is not None


def test_expired_lease_of_a_job_being_canceled_ends_it_canceled(
    sessions: Any, celery_app: Celery, service_settings: Settings
) -> None:
    job_id = running_job(sessions, service_settings.default_model, lease_s=-1)
    with transaction(sessions) as session:
        session.execute(update(Job).where(Job.id == job_id).values(cancel_requested_at=utcnow()))
    assert sweep(sessions, celery_app, service_settings).canceled == 1
    assert load(sessions, job_id).status == "canceled"
    assert published_ids(service_settings) == []


def test_unpublished_job_is_published_by_the_next_sweep(
    sessions: Any, celery_app: Celery, service_settings: Settings
) -> None:
    job_id = new_job(sessions, service_settings.default_model)
    with transaction(sessions) as session:  # as the API leaves it when publishing failed
        session.execute(update(Job).where(Job.id == job_id).values(published_at=None))
    assert sweep(sessions, celery_app, service_settings).republished == 1
    assert published_ids(service_settings) == [job_id]
    assert load(sessions, job_id).published_at is not None
    assert sweep(sessions, celery_app, service_settings).republished == 0


def test_stale_queued_job_is_published_again_and_a_fresh_one_is_not(
    sessions: Any, celery_app: Celery, service_settings: Settings
) -> None:
    stale = new_job(sessions, service_settings.default_model)
    new_job(sessions, service_settings.default_model)
    long_ago = utcnow() - timedelta(seconds=service_settings.stale_queued_s + 1)
    with transaction(sessions) as session:
        session.execute(update(Job).where(Job.id == stale).values(published_at=long_ago))
    assert sweep(sessions, celery_app, service_settings).republished == 1
    assert published_ids(service_settings) == [stale]


def test_job_waiting_out_its_backoff_is_published_when_due(
    sessions: Any, celery_app: Celery, service_settings: Settings
) -> None:
    job_id = running_job(sessions, service_settings.default_model, lease_s=30)
    with transaction(sessions) as session:
        later = utcnow() + timedelta(seconds=60)
        assert release_job(session, job_id, attempt=1, reason="storage down", available_at=later)
    assert sweep(sessions, celery_app, service_settings).republished == 0
    assert published_ids(service_settings) == []
    due = sweep_once(
        sessions=sessions,
        celery=celery_app,
        settings=service_settings,
        now=utcnow() + timedelta(seconds=61),
    )
    assert due.republished == 1
    assert published_ids(service_settings) == [job_id]


def test_republished_jobs_keep_their_priority(
    sessions: Any, celery_app: Celery, service_settings: Settings
) -> None:
    model = service_settings.default_model
    ids = {priority: new_job(sessions, model, priority=priority) for priority in (0, 9, 4)}
    with transaction(sessions) as session:
        session.execute(update(Job).values(published_at=None))
    sweep(sessions, celery_app, service_settings)
    assert published_ids(service_settings) == [ids[9], ids[4], ids[0]]


def test_job_of_a_model_no_longer_served_stays_queued_and_blocks_nothing(
    sessions: Any, celery_app: Celery, service_settings: Settings
) -> None:
    job_id = new_job(sessions, service_settings.default_model)
    other = new_job(sessions, service_settings.default_model)
    with transaction(sessions) as session:
        session.execute(update(Job).values(published_at=None))
        session.execute(update(Job).where(Job.id == job_id).values(model="retired"))
    assert sweep(sessions, celery_app, service_settings).republished == 1
    assert published_ids(service_settings) == [other]
    assert load(sessions, job_id).status == "queued"


def test_broker_down_leaves_jobs_for_the_next_sweep(
    sessions: Any, celery_app: Celery, service_settings: Settings
) -> None:
    job_id = new_job(sessions, service_settings.default_model)
    with transaction(sessions) as session:
        session.execute(update(Job).values(published_at=None))
    down = service_settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"})
    dead_broker = make_celery(down)
    try:
        assert sweep(sessions, dead_broker, service_settings).republished == 0
    finally:
        dead_broker.close()
    assert load(sessions, job_id).published_at is None
    assert sweep(sessions, celery_app, service_settings).republished == 1
    assert published_ids(service_settings) == [job_id]


def concurrent_sweeps(database_url: str, settings: Settings, sweepers: int = 2) -> list[Any]:
    """Run sweepers at the same moment, each with its own engine and broker connection."""
    start = threading.Barrier(sweepers)
    reports: list[Any] = []
    errors: list[BaseException] = []

    def one() -> None:
        engine = make_engine(database_url)
        celery = make_celery(settings)
        try:
            start.wait()
            reports.append(
                sweep_once(sessions=make_session_factory(engine), celery=celery, settings=settings)
            )
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            celery.close()
            engine.dispose()

    threads = [threading.Thread(target=one) for _ in range(sweepers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return reports


def test_two_sweepers_at_once_requeue_and_publish_each_job_once(
    db_url: str, sessions: Any, service_settings: Settings
) -> None:
    model = service_settings.default_model
    expired = [running_job(sessions, model, lease_s=-1) for _ in range(60)]
    unpublished = [new_job(sessions, model) for _ in range(60)]
    with transaction(sessions) as session:
        session.execute(update(Job).where(Job.id.in_(unpublished)).values(published_at=None))
    reports = concurrent_sweeps(db_url, service_settings)
    assert sum(r.requeued for r in reports) == 60
    assert sum(r.republished for r in reports) == 120
    assert sorted(published_ids(service_settings)) == sorted(expired + unpublished)
    for job_id in expired:
        assert [e for e in event_log(sessions, job_id) if e[1].get("reason")] == [
            ("job.queued", {"reason": "lease_expired"})
        ]


def test_two_sweepers_on_sqlite_requeue_each_job_once(
    tmp_path: Path, service_settings: Settings
) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    expired = [running_job(sessions, service_settings.default_model, lease_s=-1) for _ in range(30)]
    reports = concurrent_sweeps(url, service_settings)
    assert sum(r.requeued for r in reports) == 30
    assert sorted(published_ids(service_settings)) == sorted(expired)
    engine.dispose()
