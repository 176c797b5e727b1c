"""Starting the service's processes and helpers for a run: the benchmarks' and tests' harness.

One copy of what every harness needs: a free TCP port, polling until something is up (and
failing early, with its log, when the process died first), and a moto S3 server in a child
process for machines without an S3 service.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    """A TCP port nobody listens on right now (loopback)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    check: Callable[[], Any],
    what: str,
    *,
    timeout_s: float = 180,
    exited: Callable[[], str | None] | None = None,
    interval_s: float = 0.2,
) -> Any:
    """Poll check() until it returns something truthy, and return that.

    Connection errors count as "not yet". exited() returns why the watched process is gone
    (None while it runs), so a crash fails at once instead of after the whole timeout.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if exited is not None and (reason := exited()) is not None:
            raise RuntimeError(f"{what}: the process exited first\n{reason}")
        try:
            if value := check():
                return value
        except (httpx.HTTPError, OSError):
            pass
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} did not happen within {timeout_s:.0f}s")
        time.sleep(interval_s)


def wait_http(
    url: str, *, timeout_s: float = 60, exited: Callable[[], str | None] | None = None
) -> None:
    """Wait until url answers 200."""
    wait_until(
        lambda: httpx.get(url, timeout=2).status_code == 200,
        f"{url} answers",
        timeout_s=timeout_s,
        exited=exited,
    )


def popen_exited(process: subprocess.Popen[bytes]) -> Callable[[], str | None]:
    """An `exited` callback for wait_until: the exit status of a child, once it has one."""
    return lambda: None if process.poll() is None else f"exit status {process.returncode}"


@contextmanager
def moto_server(log_dir: Path | None = None) -> Iterator[tuple[str, int]]:
    """An S3-protocol server (moto, a dev dependency) in a child process: (URL, pid).

    It keeps clients' connections open between requests, as S3 does (devtools.s3_server).
    Its output goes to log_dir/s3.log, or nowhere without a log_dir.
    """
    port = free_port()
    command = [sys.executable, "-m", "devtools.s3_server", "-H", "127.0.0.1", "-p", str(port)]
    with open(log_dir / "s3.log" if log_dir else os.devnull, "wb") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: httpx.get(endpoint, timeout=2).status_code < 500,
            "the S3 server starts",
            timeout_s=120,
            exited=popen_exited(child),
        )
        yield endpoint, child.pid
    finally:
        child.terminate()
        child.wait(30)
