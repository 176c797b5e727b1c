"""The running stack of the service benchmark: API and worker processes, an S3 server.

Each process is started as operators start it (`internvl-jobs api`, `internvl-jobs worker`),
and its CPU time can be read from /proc, the figure least disturbed by other work on a
shared machine.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from core.config import Settings
from devtools.harness import wait_until


@dataclass
class Stack:
    """Where the started API answers, and the pids of the stack's processes by role."""

    base: str
    pids: dict[str, int] = field(default_factory=dict)
    worker_log: Path | None = None

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) each process has used so far; "prepare" is the worker's
        prepare processes (its descendants: the fork server and the processes it forked),
        "model" its model process when it has one (`model_process`), not counted in prepare."""
        seconds = {}
        for role, pid in self.pids.items():
            try:
                seconds[role] = cpu_seconds(pid)
            except OSError as exc:  # a figure without this process's CPU would be wrong
                raise RuntimeError(
                    f"the {role} process ({pid}) has exited (a worker restarted by its "
                    "launcher, say): see its log; the figures of this run would not count it"
                ) from exc
        if "worker" in self.pids:
            below = descendants(self.pids["worker"])
            model = self.model_pid()
            if model is not None and model in below:
                seconds["model"] = cpu_seconds_if_alive(model)
            seconds["prepare"] = sum(cpu_seconds_if_alive(pid) for pid in below if pid != model)
        return seconds

    def model_pid(self) -> int | None:
        """The worker's model process, as its log names it (None: the model is in the worker)."""
        if self.worker_log is None or not self.worker_log.exists():
            return None
        found = re.findall(r"the model runs in process (\d+)", self.worker_log.read_text())
        return int(found[-1]) if found else None


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """Every live process below pid (children, their children, ...), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _alive(int(entry.name)):
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").exists()


def cpu_seconds_if_alive(pid: int) -> float:
    """cpu_seconds, or 0 for a process that has ended."""
    try:
        return cpu_seconds(pid)
    except (OSError, IndexError, ValueError):  # it exited meanwhile
        return 0.0


@contextmanager
def service_processes(
    settings: Settings,
    port: int,
    log_dir: Path,
    extra_env: dict[str, str],
    *,
    sweeper: bool = False,
    devices: str = "cpu",
) -> Iterator[Stack]:
    """`internvl-jobs api`, `worker --devices DEVICES` (and `sweeper`) until the block ends."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTERNVL_JOBS_")}
    env.update(settings.as_env())
    env.update(extra_env)
    commands = {
        "api": ["api", "--host", "127.0.0.1", "--port", str(port)],
        "worker": ["worker", "--devices", devices],
    }
    if sweeper:
        commands["sweeper"] = ["sweeper"]
    children = []
    for name, args in commands.items():
        with (log_dir / f"{name}.log").open("wb") as out:
            children.append(
                subprocess.Popen(  # noqa: S603 - our own command line
                    [sys.executable, "-m", "cli.main", *args],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{base}/readyz", timeout=2).status_code == 200, "API ready")
        wait_until(lambda: _ready_workers(base) >= 1, "a ready worker", timeout_s=300)
        worker = httpx.get(f"{base}/v1/workers", timeout=5).json()["workers"][0]
        pids = {"api": children[0].pid, "worker": worker["pid"]}
        if sweeper:
            pids["sweeper"] = children[2].pid
        yield Stack(base, pids, worker_log=log_dir / "worker.log")
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait(60)


def _ready_workers(base: str) -> int:
    workers = httpx.get(f"{base}/v1/workers", timeout=5).json()["workers"]
    return sum(worker["state"] == "ready" for worker in workers)
