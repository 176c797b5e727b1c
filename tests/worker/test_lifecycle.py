"""A worker runtime's job lifecycle with the real engine, PostgreSQL, Redis and S3: errors,
cancels, lost leases and shutdown."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from celery.exceptions import Reject
from sqlalchemy import update

from core.cancellation import request_cancel
from core.config import Settings
from core.db import transaction, utcnow
from core.models import Job, Worker, WorkerState
from core.queue import make_celery
from core.storage import ObjectStorage, open_storage
from core.sweeper import sweep_once
from devtools.harness import free_port
from tests.support.jobs import event_log, load, published_ids
from tests.support.worker import photo, queue_job
from worker.heartbeat import Heartbeat

# Seconds of generation on the tiny model, however quiet the machine: the tests act mid-way.
LONG = {"max_new_tokens": 4000, "min_new_tokens": 4000}


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


class Background:
    """run_job in a thread, as a Celery task thread would."""

    def __init__(self, runtime: Any, job_id: str) -> None:
        self.outcome: str | None = None
        self.thread = threading.Thread(target=self._run, args=(runtime, job_id))
        self.thread.start()

    def _run(self, runtime: Any, job_id: str) -> None:
        self.outcome = runtime.run_job(job_id)

    def result(self) -> str | None:
        self.thread.join(120)
        return self.outcome


@pytest.fixture
def heartbeat(worker_runtime: Any, sessions: Any, service_settings: Settings) -> Iterator[Any]:
    beat = Heartbeat(
        sessions=sessions,
        worker_id=worker_runtime.worker_id,
        device="cpu0",
        model="tiny",
        queue=worker_runtime.spec.queue,
        lease_s=service_settings.lease_s,
        interval_s=service_settings.heartbeat_s,
        held=worker_runtime.held_attempts,
        on_check=worker_runtime.apply_lease_check,
        stats=lambda: {"jobs_done": worker_runtime.jobs_done},
        cancel_poll_s=0.1,
    )
    beat.start()
    yield beat
    beat.stop()


def running(worker_runtime: Any, job_id: str) -> Callable[[], bool]:
    """True once the job's generation has been handed to the batcher."""

    def check() -> bool:
        held = worker_runtime.held.get(job_id)
        return held is not None and held.future is not None and held.future.running()

    return check


def test_storage_outage_hands_the_job_back_with_a_backoff(
    worker_runtime: Any, sessions: Any, storage: ObjectStorage, service_settings: Settings
) -> None:
    job = queue_job(sessions, storage, worker_runtime.spec, [photo()], params={"max_new_tokens": 4})
    worker_runtime.storage = open_storage(
        service_settings.storage_url, endpoint_url=f"http://127.0.0.1:{free_port()}"
    )
    worker_runtime.read_deadline_s = 0.5
    before = utcnow()
    assert worker_runtime.run_job(job.id) == "released"
    released = load(sessions, job.id)
    assert (released.status, released.attempts) == ("queued", 1)
    assert released.available_at is not None
    assert released.available_at >= before + timedelta(seconds=service_settings.retry_backoff_s)
    kind, data = event_log(sessions, job.id)[-1]
    assert kind == "job.queued" and "EndpointConnectionError" in data["reason"]
    worker_runtime.storage = storage  # storage is back
    assert worker_runtime.run_job(job.id) == "duplicate"  # too early: the backoff holds
    celery = make_celery(service_settings)
    due = utcnow() + timedelta(seconds=service_settings.retry_backoff_s + 1)
    assert sweep_once(sessions=sessions, celery=celery, settings=service_settings, now=due)
    celery.close()
    assert published_ids(service_settings) == [job.id]
    with transaction(sessions) as session:  # the backoff has passed by the time it is claimed
        session.execute(update(Job).values(available_at=utcnow()))
    assert worker_runtime.run_job(job.id) == "succeeded"
    assert load(sessions, job.id).attempts == 2


def test_error_on_the_last_attempt_fails_the_job_with_the_reason(
    worker_runtime: Any, sessions: Any, storage: ObjectStorage, service_settings: Settings
) -> None:
    job = queue_job(sessions, storage, worker_runtime.spec, [photo()])
    with transaction(sessions) as session:
        session.execute(update(Job).values(max_attempts=1))
    worker_runtime.storage = open_storage(
        service_settings.storage_url, endpoint_url=f"http://127.0.0.1:{free_port()}"
    )
    worker_runtime.read_deadline_s = 0.2
    assert worker_runtime.run_job(job.id) == "failed"
    failed = load(sessions, job.id)
    assert failed.error_code == "attempts_exhausted"
    assert failed.error_message and "EndpointConnectionError" in failed.error_message


def test_invalid_params_fail_at_once(
    worker_runtime: Any, sessions: Any, storage: ObjectStorage
) -> None:
    job = queue_job(sessions, storage, worker_runtime.spec, [photo()])
    with transaction(sessions) as session:
        bad = {**job.spec, "params": {**job.spec["params"], "max_new_tokens": 0}}
        session.execute(update(Job).values(spec=bad))
    assert worker_runtime.run_job(job.id) == "failed"
    failed = load(sessions, job.id)
    assert (failed.error_code, failed.attempts) == ("invalid_params", 1)


def test_cancel_stops_a_running_generation(
    worker_runtime: Any, heartbeat: Any, sessions: Any, storage: ObjectStorage
) -> None:
    job = queue_job(sessions, storage, worker_runtime.spec, [photo()], params=LONG)
    task = Background(worker_runtime, job.id)
    wait_until(running(worker_runtime, job.id), "the job generates")
    with transaction(sessions) as session:
        request_cancel(session, job.id, tenant_id=job.tenant_id)
    assert task.result() == "canceled"
    canceled = load(sessions, job.id)
    assert canceled.status == "canceled" and canceled.result is None
    assert canceled.usage is not None
    assert canceled.usage["completion_tokens"] < LONG["max_new_tokens"]
    assert [kind for kind, _ in event_log(sessions, job.id)][-1] == "job.canceled"


def test_lost_lease_stops_the_generation_and_writes_nothing(
    worker_runtime: Any,
    heartbeat: Any,
    sessions: Any,
    storage: ObjectStorage,
    service_settings: Settings,
) -> None:
    job = queue_job(sessions, storage, worker_runtime.spec, [photo()], params=LONG)
    task = Background(worker_runtime, job.id)
    wait_until(running(worker_runtime, job.id), "the job generates")
    with transaction(sessions) as session:  # as if the heartbeat had been stuck past the lease
        session.execute(update(Job).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    celery = make_celery(service_settings)
    assert sweep_once(sessions=sessions, celery=celery, settings=service_settings).requeued == 1
    celery.close()
    assert task.result() == "superseded"
    requeued = load(sessions, job.id)
    assert (requeued.status, requeued.attempts, requeued.result) == ("queued", 1, None)


def test_shutdown_lets_the_running_batch_finish_and_hands_back_waiting_jobs(
    worker_runtime: Any, sessions: Any, storage: ObjectStorage, service_settings: Settings
) -> None:
    worker_runtime.batcher.max_batch_size = 1
    worker_runtime.celery = make_celery(service_settings)
    jobs = [
        queue_job(sessions, storage, worker_runtime.spec, [photo(seed=i)], params=LONG).id
        for i in range(3)
    ]
    tasks = {job_id: Background(worker_runtime, job_id) for job_id in jobs}
    wait_until(
        lambda: (
            len(worker_runtime.held) == 3
            and all(h.future is not None for h in list(worker_runtime.held.values()))
        ),
        "the three jobs are claimed and handed to the batcher",
    )
    generating = next(j for j in jobs if worker_runtime.held[j].future.running())
    worker_runtime.begin_shutdown(grace_s=60)
    outcomes = {job_id: task.result() for job_id, task in tasks.items()}
    worker_runtime.celery.close()
    assert outcomes[generating] == "succeeded"
    handed_back = sorted(j for j in jobs if j != generating)
    assert sorted(j for j, o in outcomes.items() if o == "released") == handed_back
    for job_id in handed_back:
        assert load(sessions, job_id).status == "queued"
        assert event_log(sessions, job_id)[-1] == ("job.queued", {"reason": "worker_shutdown"})
    assert sorted(published_ids(service_settings)) == handed_back


def test_shutdown_grace_hands_back_a_batch_that_runs_too_long(
    worker_runtime: Any, sessions: Any, storage: ObjectStorage, service_settings: Settings
) -> None:
    job = queue_job(sessions, storage, worker_runtime.spec, [photo()], params=LONG)
    with transaction(sessions) as session:  # its last attempt
        session.execute(update(Job).where(Job.id == job.id).values(max_attempts=1))
    task = Background(worker_runtime, job.id)
    wait_until(running(worker_runtime, job.id), "the job generates")
    worker_runtime.begin_shutdown(grace_s=0.2)
    assert task.result() == "released"
    assert load(sessions, job.id).status == "queued"
    with pytest.raises(Reject):  # a message arriving now goes back to the broker unclaimed
        worker_runtime.run_job(job.id)
    handed_back = load(sessions, job.id)
    # The shutdown was not the job's fault: its attempt is refunded, so it runs again.
    assert (handed_back.attempts, handed_back.max_attempts) == (1, 2)
    celery = make_celery(service_settings)
    assert sweep_once(sessions=sessions, celery=celery, settings=service_settings).exhausted == 0
    celery.close()
    assert load(sessions, job.id).status == "queued"


def test_a_new_state_is_recorded_at_once_not_at_the_next_beat(sessions: Any) -> None:
    heartbeat = Heartbeat(
        sessions=sessions,
        worker_id="cpu0.tiny@host-a",
        device="cpu0",
        model="tiny",
        queue="internvl.tiny",
        lease_s=300,
        interval_s=60,  # no regular beat comes during this test
        held=dict,
        on_check=lambda check: None,
        stats=dict,
    )

    def recorded() -> str:
        with sessions() as session:
            return str(session.get(Worker, "cpu0.tiny@host-a").state)

    heartbeat.start()
    try:
        assert recorded() == WorkerState.STARTING
        heartbeat.record_state(WorkerState.READY)
        wait_until(lambda: recorded() == WorkerState.READY, "the ready state is recorded", 10)
    finally:
        heartbeat.stop()
    assert recorded() == WorkerState.STOPPED
