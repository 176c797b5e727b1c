"""Dynamic batching across jobs: task threads submit, one thread owns the model and runs batches."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.errors import PermanentJobError
from worker.engine import Generation, PreparedJob

if TYPE_CHECKING:
    from worker.staging import Stager

log = logging.getLogger("worker.batcher")

GenerateFn = Callable[[Sequence[PreparedJob]], list[Generation]]


class OutOfMemory(PermanentJobError):
    """A job does not fit on the device even alone."""

    code = "out_of_memory"


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA (or other accelerator) out-of-memory errors."""
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


@dataclass
class BatchStats:
    """Counters a worker reports in its heartbeat and metrics."""

    batches: int = 0  # generate() calls (static), groups prefilled (continuous)
    jobs: int = 0
    completion_tokens: int = 0
    tiles: int = 0
    busy_s: float = 0.0
    last_batch_size: int = 0
    last_batch_at: float | None = None
    running_since: float | None = None  # unix time the generate() call (or step) in progress began
    # Unix time since which the model has had jobs in hand without a break (static: the
    # generate() call; continuous: rows or a prefill in the running batch); None when idle.
    generating_since: float | None = None
    oom_splits: int = 0
    scheduler: str = "static"
    steps: int = 0  # continuous batching: model steps, of which prefill_steps prefilled a group
    prefill_steps: int = 0
    row_steps: int = 0  # rows decoded, summed over steps: row_steps / steps is the occupancy
    waits: int = 0  # jobs started, and their total wait from submission to their first step
    wait_s: float = 0.0
    # The CPU clock of the model's thread (the batch loop), read whenever the stats are: the
    # host's share of generating (admission, steps, choosing tokens, ending rows), which the
    # benchmarks tell apart from the service's own work per job. None before the thread runs,
    # and in a copy sent to another process, where loop_cpu_base_s carries the reading.
    loop_clock: int | None = None
    loop_cpu_base_s: float = 0.0

    def record_wait(self, wait_s: float) -> None:
        """A job left the queue for the model after waiting wait_s."""
        self.waits += 1
        self.wait_s += wait_s

    def record_step(self, rows: int, *, prefill: bool, elapsed_s: float) -> None:
        """One continuous-batching step: rows decoded, and whether it prefilled a group."""
        self.steps += 1
        self.prefill_steps += int(prefill)
        self.row_steps += rows
        self.busy_s += elapsed_s
        self.last_batch_size = rows
        self.last_batch_at = time.time()

    def record_job(self, completion_tokens: int) -> None:
        """A job left the running batch with its result."""
        self.jobs += 1
        self.completion_tokens += completion_tokens

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        steps = self.steps
        return {
            "scheduler": self.scheduler,
            "batches": self.batches,
            "jobs": self.jobs,
            "completion_tokens": self.completion_tokens,
            "tiles": self.tiles,
            "busy_s": round(self.busy_s, 3),
            "last_batch_size": self.last_batch_size,
            "last_batch_at": self.last_batch_at,
            "oom_splits": self.oom_splits,
            "mean_batch_size": round(self.jobs / self.batches, 2) if self.batches else 0.0,
            "steps": steps,
            "prefill_steps": self.prefill_steps,
            "prefill_step_share": round(self.prefill_steps / steps, 3) if steps else 0.0,
            "mean_occupancy": round(self.row_steps / steps, 2) if steps else 0.0,
            "steps_per_s": round(steps / self.busy_s, 2) if steps and self.busy_s else 0.0,
            "mean_queue_wait_s": round(self.wait_s / self.waits, 3) if self.waits else 0.0,
            "loop_cpu_s": round(self.loop_cpu_s(), 3),
        }

    def loop_cpu_s(self) -> float:
        """CPU seconds the model's thread has used so far (0 before it started, or once gone)."""
        if self.loop_clock is None:
            return self.loop_cpu_base_s
        try:
            return self.loop_cpu_base_s + time.clock_gettime(self.loop_clock)
        except OSError:  # the thread has ended: its clock is gone
            return self.loop_cpu_base_s

    def portable(self) -> dict[str, Any]:
        """The fields, for another process: the loop's CPU as a reading, not as this
        process's clock."""
        fields = dataclasses.asdict(self)
        fields.update(loop_clock=None, loop_cpu_base_s=self.loop_cpu_s())
        return fields


@dataclass
class _Waiting:
    job: PreparedJob
    future: Future[Generation]
    key: tuple[Any, ...]
    arrived: float
    started: bool = False  # its future runs (continuous batching may evict and restart it)


class Announcement:
    """A job a task thread is still preparing; it is submitted or withdrawn, once."""

    def __init__(self, on_close: Callable[[], None]) -> None:
        self._on_close = on_close  # tells the batcher (here, or in the model process)
        self._open = True
        self._lock = threading.Lock()

    def close(self) -> None:
        """The job was submitted, or will not be: batches stop waiting for it."""
        with self._lock:
            if not self._open:
                return
            self._open = False
        self._on_close()

    withdraw = close


class Batcher:
    """Collects prepared jobs and runs compatible ones together on the model's thread.

    A batch starts when it is full (max_batch_size jobs, or max_batch_tiles tiles), when its
    oldest job has waited max_wait_ms, or as soon as no job has arrived for gap_ms and none
    that a task thread announced is still being prepared.

    With a stager (a GPU, `stage_pixels_mb`), as a batch starts the pixels of the batch that
    would follow it (the compatible jobs waiting then) are copied to the device on the side
    stream while it generates (worker.staging); jobs that arrive during it are copied when
    their own batch starts.
    """

    def __init__(
        self,
        generate: GenerateFn,
        *,
        max_batch_size: int,
        max_wait_ms: int,
        max_batch_tiles: int,
        gap_ms: int | None = None,
        on_batch: Callable[[int, float], None] | None = None,
        stager: Stager | None = None,
    ) -> None:
        self._generate = generate
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.gap_s = min(max_wait_ms if gap_ms is None else gap_ms, max_wait_ms) / 1000
        self.max_batch_tiles = max_batch_tiles
        self.on_batch = on_batch  # (batch size, seconds) after each batch: metrics
        # (rows decoded, seconds, prefilled) after each continuous-batching step: metrics
        self.on_step: Callable[[int, float, bool], None] | None = None
        self._waiting: list[_Waiting] = []
        self._incoming = 0  # jobs announced by task threads and still being prepared
        self._last_arrival = 0.0  # when a job was last announced or submitted
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="model", daemon=True)
        self.stats = BatchStats()
        self.stager = stager  # copies the next batch's pixels to the device ahead (a GPU)

    def start(self) -> None:
        """Start the model thread."""
        self._thread.start()
        assert self._thread.ident is not None
        self.stats.loop_clock = time.pthread_getcpuclockid(self._thread.ident)

    def announce(self) -> Announcement:
        """A task thread has a job on its way (claiming, reading, tiling): batches wait for it."""
        with self._cond:
            self._incoming += 1
            self._last_arrival = time.monotonic()
        return Announcement(self._arrived_or_gone)

    def _arrived_or_gone(self) -> None:
        with self._cond:
            self._incoming -= 1
            self._cond.notify_all()

    def submit(
        self,
        job: PreparedJob,
        *,
        announcement: Announcement | None = None,
        future: Future[Generation] | None = None,
    ) -> Future[Generation]:
        """Queue a job for the next compatible batch; the future (given, or made) gets its
        Generation."""
        future = future or Future()
        if announcement is not None:
            announcement.close()
        with self._cond:
            if self._stopping:
                raise RuntimeError("the batcher is stopping")
            self._last_arrival = time.monotonic()
            self._waiting.append(_Waiting(job, future, job.key, self._last_arrival))
            self._cond.notify_all()
        return future

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finish what was submitted (bounded by timeout_s), then stop the model thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout_s)

    @property
    def pending(self) -> int:
        """Jobs submitted and not yet started."""
        with self._cond:
            return len(self._waiting)

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                break
            self._execute(batch)
            del batch  # not kept while waiting: a finished job's pixels go (a prepare slot)
        if self.stager is not None:
            self.stager.drop()

    def _next_batch(self) -> list[_Waiting] | None:
        with self._cond:
            while not self._waiting:
                if self._stopping:
                    return None
                self._cond.wait()
            while not self._stopping and not self._ready_to_start():
                self._cond.wait(self._until_ready())
            batch = self._compatible()
            for item in batch:
                self._waiting.remove(item)
            return batch

    def _ready_to_start(self) -> bool:
        # Start when the batch is full, when its oldest job has waited max_wait_s, or when no
        # job is on its way: none arrived for gap_s and none is still being prepared.
        now = time.monotonic()
        if len(self._compatible()) >= self.max_batch_size:
            return True
        if now - self._waiting[0].arrived >= self.max_wait_s:
            return True
        return not self._incoming and now - self._last_arrival >= self.gap_s

    def _until_ready(self) -> float:
        now = time.monotonic()
        deadline = self._waiting[0].arrived + self.max_wait_s
        if not self._incoming:
            deadline = min(deadline, self._last_arrival + self.gap_s)
        return max(deadline - now, 0.0005)

    def _compatible(self) -> list[_Waiting]:
        # The oldest job decides the key, so no job waits behind newer ones forever.
        key = self._waiting[0].key
        chosen: list[_Waiting] = []
        tiles = 0
        for item in self._waiting:
            if item.key != key or len(chosen) >= self.max_batch_size:
                continue
            if chosen and tiles + item.job.tiles > self.max_batch_tiles:
                continue
            chosen.append(item)
            tiles += item.job.tiles
        return chosen

    def _execute(self, batch: list[_Waiting]) -> None:
        live = [item for item in batch if item.future.set_running_or_notify_cancel()]
        now = time.monotonic()
        for item in live:
            self.stats.record_wait(now - item.arrived)
        if live:
            jobs = self._on_device([item.job for item in live])
            self._stage_next()  # the next batch's copies run beside this one's generate
            self._run_batch(live, jobs)

    def _run_batch(self, batch: list[_Waiting], jobs: list[PreparedJob] | None = None) -> None:
        """Generate for `batch`; `jobs` are its jobs as the model gets them (their pixels
        perhaps already on the device), the items' own by default."""
        jobs = jobs or [item.job for item in batch]
        started = time.monotonic()
        try:
            self.stats.running_since = time.time()  # what the stuck-generation watchdog reads
            self.stats.generating_since = self.stats.running_since
            results = self._generate(jobs)
        except Exception as exc:  # noqa: BLE001 - every failure is handed to the jobs' futures
            self.stats.running_since = self.stats.generating_since = None
            self._recover(batch, jobs, exc)
            return
        self.stats.running_since = self.stats.generating_since = None
        elapsed = time.monotonic() - started
        self._record(batch, results, elapsed)
        for item, result in zip(batch, results, strict=True):
            item.future.set_result(result)

    def _recover(self, batch: list[_Waiting], jobs: list[PreparedJob], exc: Exception) -> None:
        if is_out_of_memory(exc) and self.stager is not None:
            self.stager.drop()  # the next batch's staged pixels: copied again when it starts
        if len(batch) == 1:
            item = batch[0]
            if is_out_of_memory(exc):
                _free_accelerator_memory()
                exc = OutOfMemory(f"job {item.job.job_id} does not fit in device memory alone")
            item.future.set_exception(exc)
            return
        if is_out_of_memory(exc):
            self.stats.oom_splits += 1
            _free_accelerator_memory()
            log.warning("out of memory with %d jobs; splitting the batch", len(batch))
        else:
            log.warning("batch of %d failed (%s); running its jobs one by one", len(batch), exc)
        half = len(batch) // 2 if is_out_of_memory(exc) else 1
        cuts = (
            [(0, half), (half, len(batch))] if half > 1 else [(i, i + 1) for i in range(len(batch))]
        )
        for start, end in cuts:
            self._run_batch(batch[start:end], jobs[start:end])

    # -- staging (a GPU's copies ahead of the model: worker.staging) ---------------------------

    def _on_device(self, jobs: list[PreparedJob]) -> list[PreparedJob]:
        """The jobs with their pixels on the device, staged or copied now; as they are without
        a stager, or when the copies fail: the model then copies them itself, where running
        out of memory is handled as for any batch."""
        if self.stager is None:
            return jobs
        try:
            return self.stager.take(jobs)
        except Exception:  # noqa: BLE001 - staging saves time only
            log.warning("copying a batch's pixels to the device failed", exc_info=True)
            self.stager.drop()
            return jobs

    def _stage_next(self) -> None:
        """Start copying the pixels of the batch expected to start next (worker.staging)."""
        if self.stager is None:
            return
        with self._cond:
            jobs = self._expected_group()
        try:
            self.stager.stage(jobs)
        except Exception:  # noqa: BLE001 - staging saves time only: a batch copies what it lacks
            log.warning("staging the next batch's pixels failed", exc_info=True)
            self.stager.drop()

    def _expected_group(self) -> list[PreparedJob]:
        """The jobs of the batch that would start next if it started now (under the lock);
        canceled jobs left out."""
        if not self._waiting:
            return []
        return [item.job for item in self._compatible() if not item.future.cancelled()]

    def _record(self, batch: list[_Waiting], results: list[Generation], elapsed: float) -> None:
        stats = self.stats
        stats.batches += 1
        stats.jobs += len(batch)
        stats.completion_tokens += sum(r.completion_tokens for r in results)
        stats.tiles += sum(item.job.tiles for item in batch)
        stats.busy_s += elapsed
        stats.last_batch_size = len(batch)
        stats.last_batch_at = time.time()
        if self.on_batch is not None:
            self.on_batch(len(batch), elapsed)


def _free_accelerator_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
