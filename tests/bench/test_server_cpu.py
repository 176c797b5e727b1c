"""The database and broker servers' CPU, read for the service bench's report."""

from __future__ import annotations

import time
from pathlib import Path

import redis
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from bench.server_cpu import postgres_postmaster, server_cpu_meter
from bench.simulated import format_simulated_report


def test_postgres_counts_the_work_of_a_backend_that_has_ended(pg_url: str) -> None:
    read = server_cpu_meter(pg_url, "")
    before = read()
    assert set(before) == {"postgres"}  # the server on this host was found
    engine = create_engine(pg_url, poolclass=NullPool)  # the backend exits when it closes
    try:
        with engine.connect() as connection:
            # About a second of the server's CPU on this machine.
            connection.execute(text("select sum(x) from generate_series(1, 20000000) as x"))
    finally:
        engine.dispose()
    # An ended backend's time reaches the postmaster's children's once the postmaster has
    # reaped it, which on a busy machine can take a while: this test's backend, and any
    # backend of an earlier test that ends meanwhile (counted live before, then nowhere until
    # reaped, which can make the difference fall short for a moment).
    deadline = time.monotonic() + 10
    while True:
        after = read()
        counted = after["postgres"] - before["postgres"]
        if counted >= 0.3 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert set(after) == {"postgres"}
    assert counted >= 0.3, counted


def test_redis_counts_by_its_own_info(redis_url: str) -> None:
    read = server_cpu_meter("sqlite:///unused.db", redis_url)
    before = read()
    client = redis.Redis.from_url(redis_url)
    for _ in range(20):
        pipe = client.pipeline(transaction=False)
        for i in range(5000):
            pipe.set(f"server-cpu:{i}", "x" * 64)
        pipe.execute()
    client.close()
    after = read()
    assert set(after) == {"redis"}
    assert after["redis"] > before["redis"]


def test_servers_that_are_not_these_are_absent(tmp_path: Path) -> None:
    assert postgres_postmaster(f"sqlite:///{tmp_path / 'jobs.db'}") is None
    assert server_cpu_meter(f"sqlite:///{tmp_path / 'jobs.db'}", "filesystem:///tmp/q")() == {}


def test_the_report_shows_the_servers_in_columns_of_their_own() -> None:
    row = {
        "size": "640x480",
        "tiles": 13,
        "succeeded": 300,
        "jobs_per_s": 37.4,
        "device_busy_fraction": 0.9,
        "gpu_utilization": None,
        "device_ms_per_job": 24.2,
        "host_cpu_ms_per_job": {"api": 7.7, "worker": 8.8, "s3": 4.3},
        "server_cpu_ms_per_job": {"postgres": 3.3, "redis": 0.5},
        "cores_per_device": 0.9,
        "prepare_ms_per_job": 1.9,
        "loop_ms_per_job": 0.1,
        "overhead_ms_per_job": 14.6,
    }
    report = {
        "device": "simulated h100",
        "stack": "servers",
        "jobs": 300,
        "new_tokens": 32,
        "model_process": "auto",
        "worker_threads": 0,
        "rows": [row],
    }
    header, _, line = format_simulated_report(report).splitlines()[1:]
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    values = [cell.strip() for cell in line.strip("|").split("|")]
    assert len(columns) == len(values)
    shown = dict(zip(columns, values, strict=True))
    assert shown["postgres"] == "3.3" and shown["redis"] == "0.5"
    assert shown["s3"] == "4.3" and shown["overhead"] == "14.6"
