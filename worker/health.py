"""A worker process's probes and metrics: model loaded, last batch, stuck-generation watchdog.

Readiness (GET /readyz) is 200 once the model is loaded and the worker consumes its queue.
Liveness (GET /livez, also /healthz) is 503 when a generate() call has run longer than
generation_stuck_s or the model failed to load: an orchestrator should restart the process.
A watchdog thread can also end the process itself, so the launcher restarts it even where no
orchestrator probes it; the jobs it held are requeued by the sweeper once their leases lapse.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from core import metrics
from core.models import WorkerState
from core.probe_server import Probe

log = logging.getLogger("worker.health")
STUCK_EXIT_CODE = 70  # EX_SOFTWARE: the launcher restarts the process


class WorkerHealth(Collector):
    """What a worker's probes and its /metrics report, read from its batcher and heartbeat."""

    def __init__(
        self,
        *,
        worker_id: str,
        model: str,
        stuck_after_s: float,
        exit_when_stuck: bool = False,
        exit_process: Callable[[int], None] = os._exit,
    ) -> None:
        self.worker_id = worker_id
        self.model = model
        self.stuck_after_s = stuck_after_s
        self.exit_when_stuck = exit_when_stuck
        self._exit_process = exit_process
        self.state = WorkerState.STARTING
        self.batcher: Any = None  # set once the model is loaded
        self.heartbeat: Any = None
        self.jobs_done: Callable[[], int] = lambda: 0
        self.prepare_cache: Callable[[], dict[str, int]] | None = None  # set with the model
        self._stop = threading.Event()

    # -- probes ---------------------------------------------------------------------------

    def running_batch_s(self) -> float | None:
        """How long the generate() call in progress has run; None when the model is idle."""
        since = getattr(getattr(self.batcher, "stats", None), "running_since", None)
        return max(time.time() - since, 0.0) if since is not None else None

    def generating_s(self) -> float | None:
        """How long the model has had jobs in hand without a break; None when it is idle.

        Continuous batching runs many short steps: one step is what the watchdog times
        (running_batch_s), this is how long the work around them has gone on.
        """
        since = getattr(getattr(self.batcher, "stats", None), "generating_since", None)
        return max(time.time() - since, 0.0) if since is not None else None

    def is_stuck(self) -> bool:
        """True when one generate() call has run longer than the watchdog allows."""
        running = self.running_batch_s()
        return running is not None and running > self.stuck_after_s

    def report(self) -> dict[str, Any]:
        """The state both probes show."""
        stats = self.batcher.stats if self.batcher is not None else None
        last = stats.last_batch_at if stats is not None else None
        return {
            "worker": self.worker_id,
            "model": self.model,
            "state": self.state,
            "model_loaded": self.batcher is not None and self.state != WorkerState.DEFUNCT,
            "last_batch_at": last,
            "last_batch_age_s": round(time.time() - last, 3) if last else None,
            "running_batch_s": _rounded(self.running_batch_s()),
            "generating_s": _rounded(self.generating_s()),
            "stuck": self.is_stuck(),
            "pending": self.batcher.pending if self.batcher is not None else 0,
            "jobs_done": self.jobs_done(),
        }

    def readiness(self) -> tuple[int, dict[str, Any]]:
        """200 when the model is loaded and the worker takes jobs."""
        report = self.report()
        ready = self.state == WorkerState.READY and report["model_loaded"] and not report["stuck"]
        return (200 if ready else 503), {"status": "ok" if ready else "unavailable", **report}

    def liveness(self) -> tuple[int, dict[str, Any]]:
        """200 unless the model failed to load or a generation is stuck."""
        report = self.report()
        alive = self.state != WorkerState.DEFUNCT and not report["stuck"]
        return (200 if alive else 503), {"status": "ok" if alive else "unhealthy", **report}

    def probes(self) -> dict[str, Probe]:
        """The HTTP paths of the probe server."""
        return {"/livez": self.liveness, "/healthz": self.liveness, "/readyz": self.readiness}

    def registry(self) -> CollectorRegistry:
        """A registry holding this worker's scrape-time gauges and counters."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        return registry

    def watch(self, runtime: Any, *, watchdog_interval_s: float | None = 5.0) -> None:
        """Report on a loaded worker runtime: its batcher, its jobs, and check it for stalls."""
        self.batcher = runtime.batcher
        self.jobs_done = lambda: int(runtime.jobs_done)
        self.prepare_cache = runtime.model.cache_counts
        runtime.batcher.on_batch = self.on_batch
        if watchdog_interval_s is not None:
            self.start_watchdog(watchdog_interval_s)

    # -- watchdog -------------------------------------------------------------------------

    def start_watchdog(self, interval_s: float = 5.0) -> None:
        """Check for a stuck generation every interval; exit the process if configured to."""
        threading.Thread(
            target=self._watch, args=(interval_s,), name="watchdog", daemon=True
        ).start()

    def stop_watchdog(self) -> None:
        """Stop checking (the worker is shutting down)."""
        self._stop.set()

    def _watch(self, interval_s: float) -> None:
        warned = False
        while not self._stop.wait(interval_s):
            if not self.is_stuck():
                warned = False
                continue
            if not warned:
                log.error(
                    "generation stuck for %.0fs (limit %.0fs)",
                    self.running_batch_s() or 0.0,
                    self.stuck_after_s,
                    extra={"worker": self.worker_id},
                )
                warned = True
            if self.exit_when_stuck:
                logging.shutdown()
                self._exit_process(STUCK_EXIT_CODE)
                return

    # -- metrics --------------------------------------------------------------------------

    def on_batch(self, size: int, elapsed_s: float) -> None:
        """The batcher's callback after each generate() call."""
        metrics.BATCH_SIZE.labels(self.model).observe(size)
        metrics.BATCH_DURATION.labels(self.model).observe(elapsed_s)

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """Scrape-time metrics of this worker."""
        labels = ["worker", "model"]
        values = [self.worker_id, self.model]
        report = self.report()
        yield _gauge(
            "internvl_jobs_worker_ready",
            "1 when ready.",
            labels,
            values,
            1.0 if self.readiness()[0] == 200 else 0.0,
        )
        yield _gauge(
            "internvl_jobs_worker_model_loaded",
            "1 once the model is loaded.",
            labels,
            values,
            1.0 if report["model_loaded"] else 0.0,
        )
        yield _gauge(
            "internvl_jobs_worker_stuck",
            "1 while a generation is stuck.",
            labels,
            values,
            1.0 if report["stuck"] else 0.0,
        )
        yield _gauge(
            "internvl_jobs_worker_pending_jobs",
            "Jobs waiting for the next batch.",
            labels,
            values,
            float(report["pending"]),
        )
        if report["last_batch_at"]:
            yield _gauge(
                "internvl_jobs_worker_last_batch_timestamp_seconds",
                "When the last batch finished (unix time).",
                labels,
                values,
                float(report["last_batch_at"]),
            )
        beat = getattr(self.heartbeat, "last_beat_at", None)
        if beat is not None:
            yield _gauge(
                "internvl_jobs_worker_last_heartbeat_timestamp_seconds",
                "When the last heartbeat was recorded (unix time).",
                labels,
                values,
                beat,
            )
        yield from self._batch_counters(labels, values)
        yield from self._prepare_cache(labels, values)
        # With a model process, the memory is its devices', sent with its statistics.
        yield from _gpu_memory(labels, values, getattr(self.batcher, "gpu_memory", None))

    def _batch_counters(
        self, labels: list[str], values: list[str]
    ) -> Iterator[CounterMetricFamily]:
        stats = self.batcher.stats if self.batcher is not None else None
        counters = {
            "internvl_jobs_worker_jobs_done": ("Jobs this worker completed.", self.jobs_done()),
            "internvl_jobs_generated_tokens": (
                "Tokens generated (rate() gives tokens per second).",
                stats.completion_tokens if stats else 0,
            ),
            "internvl_jobs_image_tiles": (
                "Image tiles encoded (rate() gives tiles per second).",
                stats.tiles if stats else 0,
            ),
            "internvl_jobs_worker_busy_seconds": (
                "Seconds spent in generate(); tokens / busy seconds is generation speed.",
                stats.busy_s if stats else 0.0,
            ),
            "internvl_jobs_worker_batches": ("generate() calls.", stats.batches if stats else 0),
            "internvl_jobs_worker_oom_splits": (
                "Batches split after running out of device memory.",
                stats.oom_splits if stats else 0,
            ),
            # Continuous batching: rate(row_steps) / rate(steps) is the batch occupancy (rows
            # per step), rate(prefill_steps) / rate(steps) the share of steps that prefilled.
            "internvl_jobs_worker_steps": ("Model steps.", stats.steps if stats else 0),
            "internvl_jobs_worker_prefill_steps": (
                "Model steps that prefilled new jobs.",
                stats.prefill_steps if stats else 0,
            ),
            "internvl_jobs_worker_row_steps": (
                "Rows decoded, summed over steps.",
                stats.row_steps if stats else 0,
            ),
            "internvl_jobs_worker_queue_wait_seconds": (
                "Seconds jobs waited in the batcher before their first step (sum).",
                stats.wait_s if stats else 0.0,
            ),
            "internvl_jobs_worker_queue_waits": (
                "Jobs that left the batcher's queue for the model.",
                stats.waits if stats else 0,
            ),
        }
        for name, (text, value) in counters.items():
            family = CounterMetricFamily(name, text, labels=labels)
            family.add_metric(values, float(value))
            yield family

    def _prepare_cache(
        self, labels: list[str], values: list[str]
    ) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """Hits over hits and misses is the share of images prepared once and used again."""
        if self.prepare_cache is None:
            return
        counts = self.prepare_cache()
        for name, text in (
            ("hits", "Images found prepared in the prepare cache."),
            ("misses", "Images looked up in the prepare cache and not found."),
        ):
            family = CounterMetricFamily(f"internvl_jobs_prepare_cache_{name}", text, labels=labels)
            family.add_metric(values, float(counts[name]))
            yield family
        yield _gauge(
            "internvl_jobs_prepare_cache_bytes",
            "Bytes of prepared images the prepare cache keeps.",
            labels,
            values,
            float(counts["bytes"]),
        )
        yield _gauge(
            "internvl_jobs_prepare_cache_max_bytes",
            "The prepare cache's bound in bytes (prepare_cache_mb).",
            labels,
            values,
            float(counts["max_bytes"]),
        )


def _gauge(
    name: str, text: str, labels: list[str], values: list[str], value: float
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, text, labels=labels)
    family.add_metric(values, value)
    return family


def _gpu_memory(
    labels: list[str], values: list[str], reported: list[tuple[int, int, int]] | None
) -> Iterator[GaugeMetricFamily]:
    """(allocated, peak, reserved) per device: reported by the model process, or read here."""
    if reported is None:
        reported = local_gpu_memory()
    if not reported:
        return
    in_use = GaugeMetricFamily(
        "internvl_jobs_gpu_memory_allocated_bytes",
        "Tensor memory in use on each device.",
        labels=[*labels, "device"],
    )
    peak = GaugeMetricFamily(
        "internvl_jobs_gpu_memory_peak_bytes",
        "Most tensor memory in use since the start.",
        labels=[*labels, "device"],
    )
    reserved = GaugeMetricFamily(
        "internvl_jobs_gpu_memory_reserved_bytes",
        "Memory held by PyTorch's caching allocator.",
        labels=[*labels, "device"],
    )
    for index, (allocated, most, held) in enumerate(reported):
        device = [*values, str(index)]
        in_use.add_metric(device, float(allocated))
        peak.add_metric(device, float(most))
        reserved.add_metric(device, float(held))
    yield from (in_use, peak, reserved)


def local_gpu_memory() -> list[tuple[int, int, int]]:
    import torch  # already loaded by the engine in this process

    if not torch.cuda.is_available():
        return []
    return [
        (
            torch.cuda.memory_allocated(index),
            torch.cuda.max_memory_allocated(index),
            torch.cuda.memory_reserved(index),
        )
        for index in range(torch.cuda.device_count())
    ]


def _rounded(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None


def probe_port(base: int, *, device: str, model_position: int) -> int:
    """A worker process's probe port: base + device index + 100 x model position (0: off)."""
    if base <= 0:
        return 0
    match = re.match(r"^[a-z]+(\d+)", device)
    index = int(match.group(1)) if match else 0
    return base + index + 100 * model_position
