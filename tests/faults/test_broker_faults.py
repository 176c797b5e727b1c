"""Redis restarted with jobs queued (with and without persistence), and publishing failing
right after the job was committed."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select

from core.models import Job
from core.queue import queue_keys
from devtools.harness import free_port
from tests.support.stack import Ledger, RedisServer, Stack, caption, wait_until

pytestmark = pytest.mark.slow
REPUBLISHED = re.compile(r"sweep: SweepReport\(republished=[1-9]")


def queued_in_redis(server: RedisServer, queue: str) -> int:
    client = server.client()
    try:
        return sum(int(client.llen(key)) for key in queue_keys(queue))
    finally:
        client.close()


def succeeded(sessions: Any) -> int:
    with sessions() as session:
        query = select(func.count()).select_from(Job).where(Job.status == "succeeded")
        return int(session.scalar(query) or 0)


@pytest.mark.parametrize("aof", [True, False], ids=["append-only-file", "no-persistence"])
def test_redis_restart_with_jobs_queued_loses_nothing(
    stack: Stack, sessions: Any, redis_servers: Callable[..., RedisServer], aof: bool
) -> None:
    server = redis_servers(aof=aof)
    stack.settings = stack.settings.model_copy(
        update={"broker_url": server.url, "worker_threads": 2}
    )
    queue = stack.settings.default_model.queue
    stack.start_api()
    sweeper = stack.start_sweeper()
    worker = stack.start_worker("cpu0")
    stack.wait_ready(sessions, worker, "cpu0")
    ledger = Ledger()
    with stack.client() as client:
        for seed in range(12):
            ledger.submit(client, caption(60, seed=seed))
    wait_until(lambda: succeeded(sessions) >= 1, "the worker finished a job")
    waiting = queued_in_redis(server, queue)
    assert waiting >= 4  # two threads: most jobs wait in Redis
    server.crash()
    server.start()
    if aof:
        assert queued_in_redis(server, queue) >= waiting - 2  # what was queued is still there
    ledger.wait_all(sessions, timeout=180, stack=stack)
    if not aof:  # the messages were gone: the sweeper published the jobs again
        assert REPUBLISHED.search(sweeper.log()), sweeper.log()[-3000:]
    counts = ledger.settle(sessions, stack.worker_logs())
    assert (counts.accepted, counts.finished, counts.lost, counts.completed_twice) == (12, 12, 0, 0)


def test_publish_failing_right_after_commit_is_repaired_by_the_sweeper(
    stack: Stack, sessions: Any
) -> None:
    api = stack.start_api(broker_url=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens
    stack.start_sweeper()
    worker = stack.start_worker("cpu0")
    stack.wait_ready(sessions, worker, "cpu0")
    ledger = Ledger()
    with stack.client() as client:
        ids = [ledger.submit(client, caption(8, seed=seed)) for seed in range(3)]
    for job_id in ids:  # each commit was followed by a failed publish
        assert f"publishing job {job_id} failed" in api.log()
    ledger.wait_all(sessions, timeout=120, stack=stack)
    counts = ledger.settle(sessions, stack.worker_logs())
    assert (counts.accepted, counts.finished, counts.lost, counts.completed_twice) == (3, 3, 0, 0)
