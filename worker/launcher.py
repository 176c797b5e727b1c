"""Starts one worker process per device (or device group) and keeps them running.

The launcher never imports torch: CUDA_VISIBLE_DEVICES must be set before a process first
touches CUDA, so each child is pinned through its environment before it starts.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from core.config import ModelSpec, Settings

log = logging.getLogger("worker.launcher")
RESTART_BACKOFF_S = (1, 2, 5, 10, 30)


@dataclass(frozen=True)
class Slot:
    """One worker process to run: its model, its device label and the GPUs it sees."""

    model: str
    device: str  # "gpu0", "gpu2-3", "cpu0"
    visible_devices: str | None  # value of CUDA_VISIBLE_DEVICES, None for CPU workers


def visible_gpus(nvidia_smi: str | None = None, proc_root: Path = Path("/proc")) -> list[str]:
    """Indexes of the GPUs on this host, found without initialising CUDA."""
    smi = nvidia_smi or shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(  # noqa: S603 - fixed arguments
                [smi, "--query-gpu=index", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            ).stdout
            return [line.strip() for line in out.splitlines() if line.strip()]
        except (OSError, subprocess.SubprocessError):
            log.warning("nvidia-smi failed; looking in /proc", exc_info=True)
    gpus = proc_root / "driver" / "nvidia" / "gpus"
    return [str(i) for i in range(len(list(gpus.iterdir())))] if gpus.is_dir() else []


def parse_devices(devices: str, available: list[str]) -> list[str]:
    """'all', '0,1,...', 'cpu' or 'cpu:N' as a list of GPU indexes or CPU labels."""
    devices = devices.strip()
    if devices.startswith("cpu"):
        _, _, count = devices.partition(":")
        if not (count or "1").isdigit() or int(count or 1) < 1:
            raise ValueError(f"'{devices}': use cpu or cpu:N with N >= 1 worker processes")
        return [f"cpu{i}" for i in range(int(count or 1))]
    if devices == "all":
        if not available:
            raise ValueError("no GPU found; use --devices cpu to run on the CPU")
        return list(available)
    chosen = [d.strip() for d in devices.split(",") if d.strip()]
    unknown = [d for d in chosen if available and d not in available]
    if unknown:
        raise ValueError(f"GPUs {unknown} not found; this host has {available}")
    return chosen


def plan_slots(models: list[ModelSpec], devices: list[str]) -> list[Slot]:
    """Split the devices into one group per worker for each model (gpus_per_worker at a time).

    Every model listed gets workers on all the devices given; to give models GPUs of their
    own, run one launcher per model with its --devices.
    """
    slots: list[Slot] = []
    for model in models:
        if devices and devices[0].startswith("cpu"):
            slots.extend(Slot(model.alias, d, None) for d in devices)
            continue
        size = model.gpus_per_worker
        if len(devices) < size:
            raise ValueError(
                f"model '{model.alias}' needs {size} GPUs per worker; only {len(devices)} given"
            )
        for start in range(0, len(devices) - size + 1, size):
            group = devices[start : start + size]
            label = f"gpu{group[0]}" if size == 1 else f"gpu{group[0]}-{group[-1]}"
            slots.append(Slot(model.alias, label, ",".join(group)))
        idle = devices[len(devices) - len(devices) % size :]
        if idle:
            log.warning("GPUs %s stay idle for '%s': groups of %d", idle, model.alias, size)
    return slots


def cpu_threads_per_worker(settings: Settings, workers: int, cores: int | None = None) -> int:
    """CPU threads each worker process may use, so several on one host do not oversubscribe it."""
    if settings.worker_cpu_threads:
        return settings.worker_cpu_threads
    available = cores if cores is not None else len(os.sched_getaffinity(0))
    return max(1, available // max(1, workers))


# Below this many cores a worker prepares in its task threads: a prepare process would take
# cores from the model loop itself (measured on 2 cores: decode steps 1.33x slower beside a
# prepare process, 1.10x beside task threads; docs/benchmarks.md).
POOL_MIN_CORES = 4


def prepare_processes_per_worker(settings: Settings, cpu_threads: int | None = None) -> int:
    """Prepare processes of one worker: the setting, else its share of the cores minus one.

    The one core left is the model loop's; each prepare process runs one thread. With fewer
    than POOL_MIN_CORES cores, or 0 set explicitly, jobs prepare in the task threads instead.
    """
    if settings.prepare_processes >= 0:
        return settings.prepare_processes
    share = cpu_threads or settings.worker_cpu_threads or len(os.sched_getaffinity(0))
    return share - 1 if share >= POOL_MIN_CORES else 0


def child_env(
    settings: Settings, slot: Slot, base: dict[str, str], *, cpu_threads: int | None = None
) -> dict[str, str]:
    """The environment of a worker process: settings, its pinned GPUs and its thread caps.

    OpenMP and BLAS read their caps once, when they load, hence environment variables; the
    worker also sets torch's own count from worker_cpu_threads (worker.threads).
    """
    env = {**base, **settings.as_env()}
    if cpu_threads is not None:
        env["INTERNVL_JOBS_WORKER_CPU_THREADS"] = str(cpu_threads)
        processes = prepare_processes_per_worker(settings, cpu_threads)
        env["INTERNVL_JOBS_PREPARE_PROCESSES"] = str(processes)
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[name] = str(cpu_threads)
    if slot.visible_devices is None:
        env["CUDA_VISIBLE_DEVICES"] = ""
    else:
        env["CUDA_VISIBLE_DEVICES"] = slot.visible_devices
    return env


def child_command(slot: Slot, loglevel: str) -> list[str]:
    """The command line of a worker process."""
    return [
        sys.executable,
        "-m",
        "worker",
        "--model",
        slot.model,
        "--device",
        slot.device,
        "--loglevel",
        loglevel,
    ]


class Supervisor:
    """Runs the slots' processes, restarts crashed ones, and stops all on SIGTERM/SIGINT."""

    def __init__(self, settings: Settings, slots: list[Slot], *, loglevel: str = "INFO") -> None:
        self.settings = settings
        self.slots = slots
        self.loglevel = loglevel
        self.children: dict[Slot, subprocess.Popen[bytes]] = {}
        self.restarts: dict[Slot, int] = dict.fromkeys(slots, 0)
        self.stopping = False

    def _spawn(self, slot: Slot) -> None:
        threads = cpu_threads_per_worker(self.settings, len(self.slots))
        env = child_env(self.settings, slot, dict(os.environ), cpu_threads=threads)
        self.children[slot] = subprocess.Popen(child_command(slot, self.loglevel), env=env)  # noqa: S603
        log.info(
            "started worker %s for %s (pid %d)", slot.device, slot.model, self.children[slot].pid
        )

    def _signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signum)

    def run(self) -> int:
        """Supervise until stopped; the exit code is 0 after a requested stop."""
        signal.signal(signal.SIGTERM, self._signal)
        signal.signal(signal.SIGINT, self._signal)
        for slot in self.slots:
            self._spawn(slot)
        while not self.stopping:
            time.sleep(0.5)
            for slot, child in list(self.children.items()):
                if child.poll() is not None and not self.stopping:
                    self._restart(slot, child.returncode)
        for child in self.children.values():
            child.wait()
        return 0

    def _restart(self, slot: Slot, code: int) -> None:
        count = self.restarts[slot]
        delay = RESTART_BACKOFF_S[min(count, len(RESTART_BACKOFF_S) - 1)]
        log.warning("worker %s exited with %s; restarting in %ss", slot.device, code, delay)
        time.sleep(delay)
        self.restarts[slot] = count + 1
        if not self.stopping:
            self._spawn(slot)
