"""The service benches' reading of their processes' CPU."""

from __future__ import annotations

import os
import subprocess

import pytest

from bench.stack import Stack


def test_a_process_that_has_exited_stops_the_reading_with_its_role_named() -> None:
    ended = subprocess.Popen(["true"])  # noqa: S607 - a process that is gone once waited for
    ended.wait()
    stack = Stack("http://127.0.0.1:1", {"api": os.getpid(), "worker": ended.pid})
    with pytest.raises(RuntimeError, match=rf"the worker process \({ended.pid}\) has exited"):
        stack.cpu_seconds()
    assert Stack("http://127.0.0.1:1", {"api": os.getpid()}).cpu_seconds()["api"] > 0
