"""`internvl-jobs bench commits`: how many jobs a worker's group commit records, database far away.

A worker's task threads send every claim and every outcome through one
`worker.group_commit.GroupCommitter`: `database_commit_concurrency` transactions at once, each
a group of n changes in about n + 2 round trips. With the database on another host those round
trips, not CPU, bound how many jobs a worker can record a second. This bench measures that
bound: `--threads` task threads claim a job and record its outcome back to back (no model in
between, so the committer is the only limit), through a proxy that delays every byte each way
(devtools.delay_proxy: PostgreSQL on loopback, made distant), for each round trip and each
concurrency. It reports the round trip measured through the proxy (a `select 1`), jobs/s, the
changes in a transaction, and this process's CPU per job.
"""

from __future__ import annotations

import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

from sqlalchemy import make_url, text
from sqlalchemy.orm import Session

from core.config import ModelSpec
from core.db import make_engine, make_session_factory, transaction
from core.jobs import claim_job, complete_job, insert_job, new_job
from core.models import Job
from core.tenants import ensure_tenant
from devtools.harness import free_port, popen_exited, wait_until
from worker.group_commit import GroupCommitter

RESULT = {"text": "a red circle", "finish_reason": "length"}
USAGE = {"prompt_tokens": 3358, "completion_tokens": 32, "image_tiles": [13]}


def run_commits(
    *,
    database_url: str,
    rtts_ms: list[float],
    concurrencies: list[int],
    jobs: int,
    threads: int,
) -> list[dict[str, Any]]:
    """One row per (round trip, concurrency): the measured round trip, jobs/s, grouping, CPU."""
    from core.migrations import upgrade

    upgrade(database_url)
    model = ModelSpec(alias="bench", checkpoint="bench")
    rows = []
    for rtt_ms in rtts_ms:
        with _distant(database_url, rtt_ms) as url:
            measured = _round_trip_ms(url)
            for concurrency in concurrencies:
                ids = _queued_jobs(database_url, model, jobs)
                row = _record(url, ids, concurrency=concurrency, threads=threads)
                rows.append({"rtt_ms": rtt_ms, "measured_rtt_ms": measured, **row})
    return rows


@contextmanager
def _distant(database_url: str, rtt_ms: float) -> Iterator[str]:
    """database_url itself for 0, else the URL of a proxy adding rtt_ms / 2 each way."""
    if not rtt_ms:
        yield database_url
        return
    url = make_url(database_url)
    port = free_port()
    command = [
        sys.executable, "-m", "devtools.delay_proxy", "--listen-port", str(port),
        "--target", f"{url.host or '127.0.0.1'}:{url.port or 5432}", "--delay-ms", str(rtt_ms / 2),
    ]  # fmt: skip
    proxy = subprocess.Popen(command)  # noqa: S603
    try:
        distant = url.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
        wait_until(lambda: _accepts(port), "the proxy listens", exited=popen_exited(proxy))
        yield distant
    finally:
        proxy.terminate()
        proxy.wait(10)


def _accepts(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        return True


def _round_trip_ms(url: str, times: int = 200) -> float:
    """The median wall time of a `select 1` on one open connection."""
    engine = make_engine(url, pool_size=1)
    try:
        with engine.connect() as connection:
            samples = []
            for _ in range(times):
                started = time.perf_counter()
                connection.execute(text("select 1")).scalar()
                samples.append(1000 * (time.perf_counter() - started))
        return round(statistics.median(samples), 2)
    finally:
        engine.dispose()


def _queued_jobs(database_url: str, model: ModelSpec, count: int) -> list[str]:
    """`count` new queued jobs (inserted directly, not through the proxy)."""
    engine = make_engine(database_url, pool_size=1)
    try:
        with transaction(make_session_factory(engine)) as session:
            return insert_queued_jobs(session, tenant="bench-commits", model=model, count=count)
    finally:
        engine.dispose()


def insert_queued_jobs(session: Session, *, tenant: str, model: ModelSpec, count: int) -> list[str]:
    """The ids of `count` queued caption jobs of `tenant` (made if new), inserted directly: jobs
    for benches of claiming and completing, with no images and no message published."""
    spec = {"task": "caption", "images": [], "params": {"max_new_tokens": 32}}
    tenant_id = ensure_tenant(session, tenant).id
    return [
        insert_job(
            session,
            new_job(tenant_id=tenant_id, model=model, spec=spec, max_attempts=3),
            image_shas=[],
        ).id
        for _ in range(count)
    ]


def _record(url: str, ids: list[str], *, concurrency: int, threads: int) -> dict[str, Any]:
    """Claim and complete every job from `threads` threads through one group committer."""
    engine = make_engine(url, pool_size=max(concurrency, 1))
    committer = GroupCommitter(make_session_factory(engine), concurrency=concurrency)
    cpu, started = time.process_time(), time.perf_counter()
    failures = claim_and_complete(committer, ids, threads=threads)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    engine.dispose()
    if failures:
        raise RuntimeError(f"{len(failures)} jobs were not claimed and completed: {failures[:3]}")
    return {
        "concurrency": concurrency,
        "jobs": len(ids),
        "jobs_per_s": round(len(ids) / wall, 1),
        "changes_per_transaction": round(committer.changes / committer.transactions, 1),
        "cpu_ms_per_job": round(1000 * cpu / len(ids), 2),
    }


def claim_and_complete(committer: GroupCommitter, ids: list[str], *, threads: int) -> list[str]:
    """Each of `threads` threads claims a job and records its outcome through `committer`, back
    to back, until none is left (a worker's task threads at saturation, with no model in
    between); the jobs not claimed or not completed."""
    todo = list(reversed(ids))
    lock = threading.Lock()
    failures: list[str] = []

    def task_thread() -> None:
        while True:
            with lock:
                if not todo:
                    return
                job_id = todo.pop()
            claimed = committer.run(partial(_claim, job_id))
            done = committer.run(partial(_complete, job_id))
            if claimed is None or done is None:
                failures.append(job_id)

    workers = [threading.Thread(target=task_thread) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return failures


def _claim(job_id: str, session: Session) -> Job | None:
    return claim_job(session, job_id, worker_id="bench", lease_s=60)


def _complete(job_id: str, session: Session) -> Job | None:
    return complete_job(session, job_id, attempt=1, result=RESULT, usage=USAGE)


def format_commits(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| round trip set ms | measured ms | transactions at once | jobs | jobs/s "
        "| changes a transaction | CPU ms a job (this process) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['rtt_ms']} | {r['measured_rtt_ms']} | {r['concurrency']} | {r['jobs']} "
        f"| {r['jobs_per_s']} | {r['changes_per_transaction']} | {r['cpu_ms_per_job']} |"
        for r in rows
    ]
    return "\n".join(lines)
