"""PostgreSQL unreachable while a worker writes its result.

The worker reaches PostgreSQL through a TCP proxy process that the test kills and starts
again: that resets the worker's connections and refuses new ones, as a partition or a
failover would, without stopping the PostgreSQL server other tests share.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select
from sqlalchemy.engine import make_url

from core.models import Job, JobEvent
from devtools.harness import free_port
from tests.support import ServiceProcess, service_env
from tests.support.stack import Ledger, Stack, caption, wait_until

pytestmark = pytest.mark.slow
WRITE_RETRIED = "writing a job result failed"
LISTENING = "proxy 127.0.0.1"


class Proxy:
    """devtools.delay_proxy, with no delay, in front of the test database, on a port that
    survives restarts."""

    def __init__(self, database_url: str, logs: Path) -> None:
        target = make_url(database_url)
        self.port = free_port()
        self.args = ["--listen-port", str(self.port), "--delay-ms", "0"]
        self.args += ["--target", f"{target.host or '127.0.0.1'}:{target.port or 5432}"]
        self.url = target.set(host="127.0.0.1", port=self.port).render_as_string(
            hide_password=False
        )
        self.log_path = logs / "proxy.log"
        self.process: ServiceProcess | None = None

    def start(self) -> Proxy:
        process = ServiceProcess(
            self.args, service_env(), self.log_path, module="devtools.delay_proxy"
        )
        started = process.log().count(LISTENING)
        process.start()
        wait_until(lambda: process.log().count(LISTENING) > started, "the proxy listens")
        self.process = process
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()


def unacknowledged(stack: Stack) -> int:
    """Messages a worker received and has not acknowledged (kombu's 'unacked' hash)."""
    client = redis.Redis.from_url(stack.settings.broker_url)
    try:
        return int(client.hlen("unacked"))
    finally:
        client.close()


def job_row(sessions: Any, job_id: str) -> Job:
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def test_result_write_waits_for_the_database_and_is_acknowledged_after(
    stack: Stack, sessions: Any, db_url: str, tmp_path: Path
) -> None:
    proxy = Proxy(db_url, tmp_path).start()
    try:
        run_outage(stack, sessions, proxy)
    finally:
        proxy.kill()


def run_outage(stack: Stack, sessions: Any, proxy: Proxy) -> None:
    # A lease longer than the outage: this test is about the write, not about lease expiry.
    stack.settings = stack.settings.model_copy(update={"lease_s": 30.0})
    stack.start_api()
    stack.start_sweeper()
    worker = stack.start_worker("cpu0", database_url=proxy.url)
    stack.wait_ready(sessions, worker, "cpu0")
    ledger = Ledger()
    with stack.client() as client:
        job_id = ledger.submit(client, caption(120))
    wait_until(lambda: job_row(sessions, job_id).status == "running", "the job runs")
    proxy.kill()  # PostgreSQL is unreachable for the worker while it generates
    wait_until(lambda: WRITE_RETRIED in worker.log(), "the worker retries its result write")
    assert job_row(sessions, job_id).status == "running"
    assert unacknowledged(stack) == 1  # the message is not acknowledged before the write
    proxy.start()
    ledger.wait_all(sessions, timeout=120, stack=stack)
    wait_until(lambda: unacknowledged(stack) == 0, "the message is acknowledged")
    done = job_row(sessions, job_id)
    assert (done.status, done.attempts) == ("succeeded", 1)
    with sessions() as session:
        events = list(
            session.scalars(
                select(JobEvent.type).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
            )
        )
    assert events == ["job.queued", "job.running", "job.succeeded"]
    counts = ledger.settle(sessions, stack.worker_logs())
    assert (counts.finished, counts.lost, counts.completed_twice) == (1, 0, 0)
