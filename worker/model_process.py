"""The model's process: the engine, its batcher and the prepare cache, and nothing else.

A worker with a model process (`model_process`, worker.model_client) claims, reads, prepares
and records in its own process (the front); this child only runs the batch loop, so no
claim, Celery message, database write or result record holds the GIL beside the decode loop.

It talks to the front over one multiprocessing connection, in small messages:
- in: `announce` / `withdraw` (a job on its way, as Batcher.announce), `submit` (a Submission:
  ids as bytes, each image as a cached key, a slot of the prepare slots' shared block, or a
  shared tensor, and the cache keys to evict first), `stop` (a job's lease was lost, it was
  canceled, or its front future was canceled while it waited), `close`;
- out: `ready` (with what the front needs: control tokens, whether the device tiles), `received`
  (the job's slots are free again: their pixels were copied into the cache), `started` (the
  batcher admitted the job), `done` (its Generation, or its error), `stats` (the batcher's
  counters, every stats_interval_s, for the heartbeat, probes and metrics).

Messages go out through one sender thread, so the model thread only puts them in a queue.
The process ignores SIGTERM and SIGINT (the front decides when it stops, after draining) and
exits as soon as the front is gone.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import torch

from core.config import ModelSpec
from core.errors import ServiceError
from core.logs import setup_logging
from core.specs import GenerationParams
from worker.batcher import Batcher
from worker.device_tiles import ImagePixels
from worker.engine import Generation, InternVLEngine
from worker.health import local_gpu_memory
from worker.prepare_pool import _exit_with_parent
from worker.prepare_slots import SlotArena, SlotRef, private
from worker.schedulers import make_batcher

log = logging.getLogger("worker.model_process")

# An image of a submitted job: ("cached", key, None), or its pixels ("slot", SlotRef, key) or
# ("tensor", shared tensor, key), key being the cache key to keep them under (or None).
Part = tuple[str, Any, Hashable | None]


@dataclass
class ModelProcessConfig:
    """What the model process needs to load its model (picklable)."""

    spec: ModelSpec
    device: str
    simulated_device: str | None = None
    cpu_threads: int | None = None
    slots: tuple[str, int, int] | None = None  # the prepare slots' block: name, count, bytes
    loglevel: str = "INFO"
    log_json: bool = False
    stats_interval_s: float = 0.5


@dataclass
class Submission:
    """A job as it crosses to the model process: no pixel is pickled."""

    job_id: str
    input_ids: np.ndarray  # int64, pickled as bytes
    images: list[Part]  # in prompt order
    tiles: list[int]
    params: GenerationParams
    response_format: dict[str, Any] | None
    evict: list[Hashable]  # cache keys to drop before this job's images are stored


def load_engine(spec: ModelSpec, device: str, simulated_device: str | None = None) -> Any:
    """The engine a worker runs: the checkpoint on its device, or the simulated device."""
    if simulated_device:  # benchmarks: the real prepare, generation timed, no weights
        from worker.simulated_device import SimulatedEngine

        return SimulatedEngine(spec, device=simulated_device)
    return InternVLEngine(spec, device="cpu" if device.startswith("cpu") else "auto")


def serve_model(connection: Connection, config: ModelProcessConfig) -> None:
    """The model process's entry point: load, say ready, then serve until closed."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent()
    setup_logging(config.loglevel, json_lines=config.log_json)
    if config.cpu_threads:
        torch.set_num_threads(config.cpu_threads)
    try:
        engine = load_engine(config.spec, config.device, config.simulated_device)
        batcher = make_batcher(engine, config.spec)
    except Exception as exc:  # noqa: BLE001 - the front reports it and exits
        log.exception("loading %s failed", config.spec.checkpoint)
        connection.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    # The front decides what the cache keeps (worker.cache_index): no bound of its own here.
    engine.prepare_cache.max_bytes = 1 << 62
    engine.prepare_cache.max_entries = None
    arena = SlotArena(*config.slots[1:], name=config.slots[0]) if config.slots else None
    ModelLoop(connection, engine, batcher, arena, config.stats_interval_s).serve()


class _Admitted(Future[Generation]):
    """A future that says when the batcher admits its job (its set_running is the signal)."""

    def __init__(self, on_start: Callable[[], None]) -> None:
        super().__init__()
        self._on_start = on_start

    def set_running_or_notify_cancel(self) -> bool:
        """Start running (and say so), unless canceled."""
        running = super().set_running_or_notify_cancel()
        if running:
            self._on_start()
        return running


class ModelLoop:
    """The model process's side of the connection: jobs in, events and statistics out."""

    def __init__(
        self,
        connection: Connection,
        engine: Any,
        batcher: Batcher,
        arena: SlotArena | None,
        stats_interval_s: float,
    ) -> None:
        self.connection = connection
        self.engine = engine
        self.batcher = batcher
        self.arena = arena
        self.stats_interval_s = stats_interval_s
        self._outbox: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._jobs: dict[str, tuple[threading.Event, Future[Generation]]] = {}
        self._announced: list[Any] = []
        self._batches: list[tuple[int, float]] = []  # (size, seconds) since the last stats
        self._closed = threading.Event()
        batcher.on_batch = lambda size, seconds: self._batches.append((size, seconds))

    def serve(self) -> None:
        """Start the batcher, say ready, and handle messages until closed (or the front went)."""
        sender = threading.Thread(target=self._send_all, name="model-sender", daemon=True)
        sender.start()
        threading.Thread(target=self._report, name="model-stats", daemon=True).start()
        self.batcher.start()
        info = {
            "control_tokens": self.engine.control_tokens,
            "resize_on_device": bool(self.engine.resize_on_device),
        }
        self._outbox.put(("ready", info))
        handlers: dict[str, Callable[..., None]] = {
            "announce": self._announce,
            "withdraw": self._withdraw,
            "submit": self._submit,
            "stop": self._stop,
        }
        while True:
            try:
                message = self.connection.recv()
            except (EOFError, OSError):
                return  # the front is gone; so is this process (see _exit_with_parent)
            if message[0] == "close":
                break
            handlers[message[0]](*message[1:])
        self.batcher.stop()
        self._closed.set()
        self._outbox.put(("stats", self._snapshot()))
        self._outbox.put(None)
        sender.join()

    # -- messages in -----------------------------------------------------------------------

    def _announce(self) -> None:
        self._announced.append(self.batcher.announce())

    def _withdraw(self) -> None:
        if self._announced:
            self._announced.pop().withdraw()

    def _submit(self, submission: Submission) -> None:
        job_id = submission.job_id
        future = _Admitted(lambda: self._outbox.put(("started", job_id)))
        cancel = threading.Event()
        self._jobs[job_id] = (cancel, future)
        future.add_done_callback(lambda done: self._done(job_id, done))
        try:
            try:
                pixels = self._images(submission)
            finally:
                self._outbox.put(("received", job_id))  # its slots are free again
            job = self.engine.prepared(
                job_id,
                torch.from_numpy(submission.input_ids),
                pixels,
                submission.tiles,
                submission.params,
            )
            job.cancel = cancel
            job.constraint = self.engine.constraint_for(submission.response_format)
            self.batcher.submit(job, future=future)
        except Exception as exc:  # noqa: BLE001 - every error ends in the job's outcome
            if future.set_running_or_notify_cancel():
                future.set_exception(exc)

    def _images(self, submission: Submission) -> list[ImagePixels]:
        """Each image's pixels: from the cache, or copied out of its slot (kept if keyed)."""
        cache = self.engine.prepare_cache
        for key in submission.evict:
            cache.discard(key)
        pixels: list[ImagePixels] = []
        for kind, value, key in submission.images:
            if kind == "cached":
                image = cache.get(value)
                if image is None:
                    raise RuntimeError(f"the prepare cache has no image {value}")
            else:
                # Out of the slot (or the shared tensor, which holds a file descriptor) into
                # private memory at once: the cache keeps this copy, the slot goes back now.
                shared = self._view(value) if kind == "slot" else value
                image = private(shared)
                if key is not None:
                    cache.put(key, image)
            pixels.append(image)
        return pixels

    def _view(self, ref: SlotRef) -> ImagePixels:
        if self.arena is None:
            raise RuntimeError("a slot reached a model process without the slots' block")
        return self.arena.view(ref)

    def _stop(self, job_id: str) -> None:
        entry = self._jobs.get(job_id)
        if entry is not None:
            cancel, future = entry
            cancel.set()  # running: it leaves the batch at its next step
            future.cancel()  # waiting: it never starts

    # -- messages out ----------------------------------------------------------------------

    def _done(self, job_id: str, future: Future[Generation]) -> None:
        self._jobs.pop(job_id, None)
        self._outbox.put(("done", job_id, outcome(future)))

    def _snapshot(self) -> dict[str, Any]:
        batches, self._batches = self._batches, []
        return {
            "stats": self.batcher.stats.portable(),
            "pending": self.batcher.pending,
            "batches": batches,
            "gpu_memory": local_gpu_memory(),
        }

    def _report(self) -> None:
        while not self._closed.wait(self.stats_interval_s):
            self._outbox.put(("stats", self._snapshot()))

    def _send_all(self) -> None:
        while (message := self._outbox.get()) is not None:
            try:
                self.connection.send(message)
            except (OSError, ValueError):
                return  # the front is gone


def outcome(future: Future[Generation]) -> Generation | tuple[Any, ...]:
    """What a job's future ended with, as it crosses back: a Generation, or why not."""
    if future.cancelled():
        return ("canceled",)
    error = future.exception()
    if error is None:
        return future.result()
    if isinstance(error, ServiceError):
        return ("error", error.permanent, error.code, error.detail)
    return ("error", False, "model_error", f"{type(error).__name__}: {error}")
