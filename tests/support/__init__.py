"""Running the service's own processes in tests: the API, workers, the sweeper, dev mode."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from core.config import Settings
from devtools import harness
from devtools.harness import free_port


def service_env(settings: Settings | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTERNVL_JOBS_")}
    if settings is not None:
        env.update(settings.as_env())
    env.update(extra)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class ServiceProcess:
    """A child process of the service with its log in a file (shown when a test fails).

    It runs `python -m cli.main ARGS` (the `internvl-jobs` command), or another module.
    """

    def __init__(
        self, args: list[str], env: dict[str, str], log_path: Path, *, module: str = "cli.main"
    ) -> None:
        self.args = args
        self.env = env
        self.log_path = log_path
        self.module = module
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def exited(self) -> str | None:
        """Its log's tail once it has exited (None while it runs): for harness.wait_until."""
        if self.process is None or self.process.poll() is None:
            return None
        return self.log()[-4000:]

    def start(self) -> ServiceProcess:
        # The child keeps its own copy of the descriptor; ours is closed at once.
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module, *self.args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        os.killpg(self.process.pid, sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait(10)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc: tuple[type[BaseException], BaseException, TracebackType]) -> None:
        self.stop()


def wait_http(url: str, *, timeout: float = 60, process: ServiceProcess | None = None) -> None:
    """Wait until url answers 200; fail at once with its log if the process exits first."""
    harness.wait_http(url, timeout_s=timeout, exited=process.exited if process else None)


def wait_job(
    client: httpx.Client,
    job_id: str,
    *,
    timeout: float = 120,
    statuses: tuple[str, ...] = ("succeeded", "failed", "canceled"),
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish within {timeout}s: {job}")


class LiveServer:
    """An ASGI app served over real HTTP by uvicorn in a thread of the test process."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        wait_http(f"{self.url}/healthz", timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
