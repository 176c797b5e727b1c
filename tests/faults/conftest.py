"""Fault tests: the service's real processes against real PostgreSQL, Redis and S3.

Timings are short (leases of seconds, sweeps twice a second) so each fault recovers quickly;
the whole suite prints, at its end, how many jobs were accepted, finished, lost and completed
twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from core.config import Settings
from tests.support.stack import SUITE_TOTALS, RedisServer, Stack


@pytest.fixture
def fault_settings(service_settings: Settings) -> Settings:
    return service_settings.model_copy(
        update={
            "lease_s": 5.0,
            "heartbeat_s": 1.0,
            "sweep_interval_s": 0.5,
            "stale_queued_s": 5.0,
            "cancel_poll_s": 0.5,
            "max_attempts": 10,
            "retry_backoff_s": 0.5,
            "shutdown_grace_s": 10.0,
        }
    )


@pytest.fixture
def redis_servers(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start redis-server instances of the test's own; all are stopped after the test."""
    servers: list[RedisServer] = []

    def start(*, aof: bool) -> RedisServer:
        server = RedisServer(tmp_path / f"redis-{len(servers)}", aof=aof)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def stack(fault_settings: Settings, sessions: Any, tmp_path: Path) -> Iterator[Stack]:
    running = Stack(fault_settings, tmp_path)
    yield running
    running.stop()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if SUITE_TOTALS.accepted:
        terminalreporter.write_line(SUITE_TOTALS.line())
