"""A worker's prepare processes SIGKILLed again and again while jobs flow through it."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support import ServiceProcess
from tests.support.stack import Ledger, Stack, caption, model_pid, wait_until

pytestmark = pytest.mark.slow

KILLS = 6
JOBS = 16


def children(pid: int) -> list[int]:
    """The live children of a process, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat[1]) == pid and stat[0] != "Z":
            found.append(int(entry.name))
    return found


def prepare_processes(worker: ServiceProcess) -> list[int]:
    """The worker's prepare processes: the children of its fork server (its own child), but
    its model process when it has one (`model_process`), forked there too."""
    model = model_pid(worker)
    forked = [grandchild for child in children(worker.pid) for grandchild in children(child)]
    return [pid for pid in forked if pid != model]


def test_prepare_processes_killed_under_load_lose_and_double_nothing(
    stack: Stack, sessions: Any
) -> None:
    stack.start_api()
    stack.start_sweeper()
    worker = stack.start_worker("cpu0", prepare_processes=2)
    stack.wait_ready(sessions, worker, "cpu0")
    assert len(prepare_processes(worker)) == 2
    ledger = Ledger()
    kills = 0
    with stack.client() as client:
        for seed in range(JOBS):
            ledger.submit(client, caption(24, seed=seed))
            if seed % 2 and kills < KILLS:
                victims = wait_until(lambda: prepare_processes(worker), "a prepare process")
                os.kill(victims[0], signal.SIGKILL)
                kills += 1
                time.sleep(0.2)
    ledger.wait_all(sessions, timeout=300, stack=stack)
    counts = ledger.settle(sessions, stack.worker_logs())
    assert (counts.accepted, counts.finished, counts.lost, counts.completed_twice) == (
        JOBS,
        JOBS,
        0,
        0,
    )
    assert worker.alive()  # the worker itself never went down
    assert "a prepare process died" in "".join(stack.worker_logs())
