"""A worker's model process SIGKILLed while jobs flow through it, and a worker whose front is
killed: no job lost, none completed twice, no model process left behind."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from tests.support.stack import Ledger, Stack, caption, model_pid

pytestmark = pytest.mark.slow

KILLS = 3
JOBS = 12
WITH_MODEL_PROCESS = {"prepare_processes": 1, "model_process": "on"}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_model_process_killed_under_load_loses_and_doubles_nothing(
    stack: Stack, sessions: Any
) -> None:
    stack.start_api()
    stack.start_sweeper()
    worker = stack.start_worker("cpu0", **WITH_MODEL_PROCESS)
    stack.wait_ready(sessions, worker, "cpu0")
    ledger = Ledger()
    exits = []
    with stack.client() as client:
        for seed in range(JOBS):
            ledger.submit(client, caption(24, seed=seed))
            if seed % 3 == 2 and len(exits) < KILLS:
                pid = model_pid(worker)  # logged before the worker said it was ready
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                # Its jobs are handed back and the worker exits non-zero, for its launcher to
                # start it again (here, the test does).
                assert worker.process is not None
                exits.append(worker.process.wait(120))
                worker = stack.start_worker("cpu0", **WITH_MODEL_PROCESS)
                stack.wait_ready(sessions, worker, "cpu0")
    ledger.wait_all(sessions, timeout=400, stack=stack)
    counts = ledger.settle(sessions, stack.worker_logs())
    assert (counts.accepted, counts.finished, counts.lost, counts.completed_twice) == (
        JOBS,
        JOBS,
        0,
        0,
    )
    assert len(exits) == KILLS and all(code != 0 for code in exits)
    assert "the model process exited" in "".join(stack.worker_logs())


def test_a_killed_worker_leaves_no_model_process(stack: Stack, sessions: Any) -> None:
    worker = stack.start_worker("cpu0", **WITH_MODEL_PROCESS)
    stack.wait_ready(sessions, worker, "cpu0")
    pid = model_pid(worker)
    assert pid is not None and alive(pid)
    os.kill(worker.pid, signal.SIGKILL)  # the front alone, not its process group
    deadline = time.monotonic() + 60
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pid)
