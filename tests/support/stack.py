"""The service as separate processes for fault tests, and the ledger that checks nothing is lost.

Every job a test gets a 202 for goes into a ledger; at the end of the test the ledger reads the
database (statuses, job.succeeded events) and the workers' logs (completions they report) and
counts jobs finished, lost and completed twice. The suite prints the totals at its end.
"""

from __future__ import annotations

import base64
import io
import os
import re
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis
from PIL import Image
from sqlalchemy import func, select

from core.config import Settings
from core.models import Job, JobEvent, Worker
from devtools.harness import free_port
from tests.support import ServiceProcess, service_env, wait_http

COMPLETION_LOG = re.compile(r"job (job_\w+) succeeded \(attempt \d+\)")
TERMINAL = ("succeeded", "failed", "canceled")


@dataclass
class FaultCounts:
    """Jobs accepted (202), finished (succeeded), lost (never terminal), completed twice."""

    accepted: int = 0
    finished: int = 0
    lost: int = 0
    completed_twice: int = 0

    def add(self, other: FaultCounts) -> None:
        for name in ("accepted", "finished", "lost", "completed_twice"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def line(self) -> str:
        return (
            f"fault suite: {self.accepted} jobs accepted, {self.finished} finished, "
            f"{self.lost} lost, {self.completed_twice} completed twice"
        )


SUITE_TOTALS = FaultCounts()


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 120) -> Any:
    """Poll until condition() is truthy; fail naming what did not happen."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting until {what}"
        time.sleep(0.1)
    return value


def image_data(seed: int = 0, size: tuple[int, int] = (64, 64)) -> str:
    buffer = io.BytesIO()
    Image.effect_noise(size, 30 + seed).convert("RGB").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def caption(tokens: int, *, seed: int = 0, exact: bool = True) -> dict[str, Any]:
    """A caption job generating `tokens` tokens (exactly, unless the model stops first)."""
    params = {"max_new_tokens": tokens, "min_new_tokens": tokens if exact else 0}
    return {"task": "caption", "images": [{"data": image_data(seed)}], "params": params}


class Ledger:
    """The jobs a test got a 202 for, settled against the database and the workers' logs."""

    def __init__(self) -> None:
        self.accepted: list[str] = []

    def submit(self, client: httpx.Client, body: dict[str, Any]) -> str:
        response = client.post("/v1/jobs", json=body)
        assert response.status_code == 202, response.text
        job_id: str = response.json()["id"]
        self.accepted.append(job_id)
        return job_id

    def unfinished(self, sessions: Any) -> int:
        with sessions() as session:
            done = session.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.id.in_(self.accepted), Job.status.in_(TERMINAL))
            )
        return len(self.accepted) - int(done or 0)

    def wait_all(self, sessions: Any, timeout: float, stack: Stack | None = None) -> None:
        deadline = time.monotonic() + timeout
        while (left := self.unfinished(sessions)) > 0:
            tail = stack.log_tail() if stack else ""
            assert time.monotonic() < deadline, f"{left} jobs unfinished after {timeout}s\n{tail}"
            time.sleep(0.25)

    def settle(self, sessions: Any, logs: list[str]) -> FaultCounts:
        """Count this test's jobs, add them to the suite's totals, and return the counts."""
        with sessions() as session:
            statuses = dict(
                session.execute(select(Job.id, Job.status).where(Job.id.in_(self.accepted))).all()
            )
            completions = Counter(
                session.scalars(
                    select(JobEvent.job_id).where(
                        JobEvent.job_id.in_(self.accepted), JobEvent.type == "job.succeeded"
                    )
                )
            )
        reported = Counter(m.group(1) for text in logs for m in COMPLETION_LOG.finditer(text))
        counts = FaultCounts(
            accepted=len(self.accepted),
            finished=sum(1 for job_id in self.accepted if statuses.get(job_id) == "succeeded"),
            lost=sum(1 for job_id in self.accepted if statuses.get(job_id) not in TERMINAL),
            completed_twice=sum(
                1 for job_id in self.accepted if max(completions[job_id], reported[job_id]) > 1
            ),
        )
        SUITE_TOTALS.add(counts)
        return counts


class Stack:
    """API, sweeper and workers as OS processes, each with its own settings and log file."""

    def __init__(self, settings: Settings, logs: Path) -> None:
        self.settings = settings
        self.logs = logs
        self.processes: list[ServiceProcess] = []
        self.base_url = ""
        self.probe_ports: dict[str, int] = {}

    def _start(self, name: str, args: list[str], overrides: dict[str, Any], **kw: Any) -> Any:
        # Probe servers on free ports only, so that tests running side by side never collide.
        defaults = {"sweeper_probe_port": 0, "webhook_probe_port": 0, "worker_probe_port": 0}
        settings = self.settings.model_copy(update={**defaults, **overrides})
        log_path = self.logs / f"{name}-{len(self.processes)}.log"
        process = ServiceProcess(args, service_env(settings), log_path, **kw).start()
        self.processes.append(process)
        return process

    def start_api(self, **overrides: Any) -> ServiceProcess:
        port = free_port()
        api = self._start("api", ["api", "--port", str(port)], overrides)
        self.base_url = f"http://127.0.0.1:{port}"
        wait_http(f"{self.base_url}/healthz", process=api)
        return api

    def start_sweeper(self, **overrides: Any) -> ServiceProcess:
        return self._start("sweeper", ["sweeper"], overrides)

    def start_worker(self, device: str = "cpu0", **overrides: Any) -> ServiceProcess:
        args = ["--model", self.settings.default_model.alias, "--device", device]
        port = self.probe_ports.setdefault(device, free_port())
        # The worker listens on base + its device index (worker.health.probe_port).
        overrides = {"worker_probe_port": port - int(device.removeprefix("cpu")), **overrides}
        return self._start(f"worker-{device}", args, overrides, module="worker")

    def worker_report(self, device: str) -> dict[str, Any]:
        """What the worker's readiness probe reports (running batch, jobs pending, ...)."""
        try:
            report: dict[str, Any] = httpx.get(
                f"http://127.0.0.1:{self.probe_ports[device]}/readyz", timeout=5
            ).json()
        except httpx.HTTPError:
            return {}
        return report

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=60)

    def worker_id(self, device: str) -> str:
        return f"{device}.{self.settings.default_model.alias}@{socket.gethostname()}"

    def wait_ready(self, sessions: Any, worker: ServiceProcess, device: str) -> None:
        """Wait until this worker process has loaded its model and reports itself ready."""

        def ready() -> bool:
            assert worker.alive(), f"worker exited:\n{worker.log()[-3000:]}"
            with sessions() as session:
                row = session.get(Worker, self.worker_id(device), populate_existing=True)
                return row is not None and row.pid == worker.pid and row.state == "ready"

        wait_until(ready, f"worker {device} is ready", timeout=180)

    def worker_logs(self) -> list[str]:
        return [p.log() for p in self.processes if p.module == "worker"]

    def log_tail(self, chars: int = 3000) -> str:
        return "\n".join(f"--- {p.log_path.name}\n{p.log()[-chars:]}" for p in self.processes)

    def stop(self) -> None:
        for process in self.processes:
            if process.alive():
                os.killpg(process.pid, signal.SIGKILL)
                try:
                    process.process.wait(10)  # type: ignore[union-attr]
                except subprocess.TimeoutExpired:
                    pass


class RedisServer:
    """A redis-server of the test's own on a free port: with an append-only file or none."""

    def __init__(self, folder: Path, *, aof: bool) -> None:
        self.folder = folder
        self.aof = aof
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.aof else []
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--dir", str(self.folder), "--save", "", *persistence]
        with (self.folder / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
        wait_until(self._answers, f"redis-server on port {self.port} answers", timeout=30)
        return self

    def _answers(self) -> bool:
        assert self.process is not None and self.process.poll() is None, "redis-server exited"
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def crash(self) -> None:
        """SIGKILL: whatever is not on disk is gone."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.crash()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)


def model_pid(worker: ServiceProcess) -> int | None:
    """The process the worker says its model runs in (its latest start), if it said yet."""
    found = re.findall(r"the model runs in process (\d+)", worker.log())
    return int(found[-1]) if found else None
