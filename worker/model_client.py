"""The worker's side of its model process: a ModelHost and a batcher's surface over one pipe.

The model process (worker.model_process) is started with 'forkserver' (this process has
threads, so it must not fork) and runs the engine, the batcher and the prepare cache. This
client gives the runtime what the engine and batcher gave it in one process:

- `submit` sends a job and returns a Future that stays pending until the model process says
  the batcher admitted it (`started`), so a shutdown still hands back, with future.cancel(),
  exactly the jobs that had not started; a future canceled here sends `stop`, and a late
  result for it is ignored (the runtime has handed the job back with a fenced write).
- `cancel_event` is an event whose set() also sends `stop`: lease checks and cancels stop a
  running generation at its next step, as the shared event did.
- Pixels are never pickled: an image in a prepare slot travels as its SlotRef (the model
  process maps the same block) and the slot goes back once the model process says it copied
  it (`received`); an image outside the slots (it did not fit, or no slot was free, or jobs
  prepare in this process) travels as a shared tensor
  (torch.multiprocessing's reductions, as the prepare pool's). Cached images travel as keys.
- The prepare cache: this process keeps its index (worker.cache_index) and tells the model
  process, in the job messages themselves, what to keep and what to evict. The front knows a
  job's images before it prepares them, so the decision needs no round trip, and the one
  ordered connection keeps both sides in step.
- `stats`, `pending` and `on_batch` follow the statistics the model process sends every half
  second, for the heartbeat, the probes (stuck generation) and the metrics.

How jobs and their outcomes cross the pipe on this side is worker.model_messages'.

If the model process dies, every job in flight fails with ModelProcessDied (a transient
error: the runtime hands it back with a backoff) and `on_death` runs (the worker stops and
exits non-zero, so its launcher restarts it). If this process dies, the model process exits.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from multiprocessing.connection import Connection
from typing import Any

import torch.multiprocessing  # noqa: F401 - registers the reductions that share tensors

from worker.batcher import Announcement, BatchStats
from worker.cache_index import CacheIndex
from worker.engine import Generation
from worker.model_host import Announced, CachedImage, ModelRequest
from worker.model_messages import (
    InFlight,
    ModelError,
    ModelProcessDied,
    image_parts,
    settle,
)
from worker.model_process import ModelProcessConfig, Submission, serve_model
from worker.prepare_cache import cache_counts
from worker.prepare_slots import SlotArena

log = logging.getLogger("worker.model_client")

START_METHOD = "forkserver"


class _RemoteCancel(threading.Event):
    """A job's cancel event whose set() also stops the job in the model process."""

    def __init__(self, client: ModelClient, job_id: str) -> None:
        super().__init__()
        self._client = client
        self._job_id = job_id

    def set(self) -> None:
        """Stop the job's generation at its next step (or before it starts)."""
        super().set()
        self._client._send(("stop", self._job_id))


class ModelClient:
    """The model in a process of its own, as the runtime's ModelHost and batcher."""

    def __init__(
        self,
        config: ModelProcessConfig,
        *,
        arena: SlotArena | None,
        cache_bytes: int,
        on_death: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.arena = arena
        self.index = CacheIndex(cache_bytes)
        self.on_death = on_death
        self.stats = BatchStats()
        self.on_batch: Callable[[int, float], None] | None = None
        self.gpu_memory: list[tuple[int, int, int]] = []
        self.dead = False
        self.process: Any = None
        self._pending = 0
        self._info: dict[str, Any] = {}
        self._failure: str | None = None
        self._ready = threading.Event()
        self._jobs: dict[str, InFlight] = {}
        self._lock = threading.Lock()  # sends, and the cache index's changes, in order
        self._connection: Connection | None = None
        self._reader: threading.Thread | None = None
        self._closing = False

    # -- lifecycle -------------------------------------------------------------------------

    def launch(self, timeout_s: float | None = None) -> None:
        """Start the model process and wait until its model is loaded and its loop runs."""
        context: Any = multiprocessing.get_context(START_METHOD)
        ours, theirs = context.Pipe()
        self.process = context.Process(
            target=serve_model, args=(theirs, self.config), name="model", daemon=False
        )
        self.process.start()
        theirs.close()  # this end only: its end closing is how a death is seen
        self._connection = ours
        self._reader = threading.Thread(target=self._read, name="model-reader", daemon=True)
        self._reader.start()
        if not self._ready.wait(timeout_s) or self._failure is not None:
            self.stop(timeout_s=5.0)
            raise RuntimeError(f"the model process did not start: {self._failure or 'timeout'}")

    def start(self) -> None:
        """Nothing more to start: the model loop runs once `launch` returns."""

    def stop(self, timeout_s: float = 30.0) -> None:
        """Let the model process finish what it was given (bounded), then end it."""
        self._closing = True
        self._send(("close",))
        if self.process is not None:
            self.process.join(timeout_s + 10.0)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()
        if self._reader is not None:
            self._reader.join(10.0)

    @property
    def pid(self) -> int | None:
        """The model process's id."""
        return None if self.process is None else int(self.process.pid)

    # -- the ModelHost surface -------------------------------------------------------------

    @property
    def control_tokens(self) -> list[str]:
        """The tokenizer's control tokens (the model process said them when ready)."""
        return list(self._info["control_tokens"])

    @property
    def resize_on_device(self) -> bool:
        """Whether the model's device tiles pictures."""
        return bool(self._info["resize_on_device"])

    @property
    def pending(self) -> int:
        """Jobs submitted and not yet started, as last reported."""
        return self._pending

    def announce(self) -> Announced:
        """A job on its way: the model process's batcher waits for it (bounded)."""
        self._send(("announce",))
        return Announcement(lambda: self._send(("withdraw",)))

    def cache_key(self, sha256: str, max_tiles: int) -> Hashable:
        """The prepare cache's key of an image (as the engine's Preparer makes it)."""
        return (sha256, max_tiles, self.config.spec.alias)

    @contextmanager
    def cached(self, keys: list[Hashable]) -> Iterator[list[CachedImage | None]]:
        """The images the model process has cached, pinned there until the context ends."""
        tiles = self.index.pin(keys)
        try:
            yield [None if count is None else CachedImage(count) for count in tiles]
        finally:
            self.index.unpin(
                [key for key, count in zip(keys, tiles, strict=True) if count is not None]
            )

    def cache_counts(self) -> dict[str, int]:
        """The prepare cache's hits, misses, entries and bytes, as this process's index of it
        has them (the model process stores what the index decides)."""
        return cache_counts(self.index)

    def cancel_event(self, job_id: str) -> threading.Event:
        """An event whose set() stops the job in the model process."""
        return _RemoteCancel(self, job_id)

    def prepared(self, request: ModelRequest) -> ModelRequest:
        """The request as it is: the model process builds the job and compiles its grammar."""
        return request

    def submit(self, prepared: Any, *, announcement: Announced | None) -> Future[Generation]:
        """Send a job; its future runs once the model process's batcher admits it."""
        if self.dead:
            raise ModelProcessDied("the model process is gone")
        request: ModelRequest = prepared
        future: Future[Generation] = Future()
        job_id = request.job_id
        if announcement is not None:
            announcement.close()
        with self._lock:
            if self.dead:
                raise ModelProcessDied("the model process is gone")
            parts, views, evict = image_parts(request, self.index, self.arena)
            submission = Submission(
                job_id,
                request.input_ids.numpy(),
                parts,
                request.tiles,
                request.params,
                request.response_format,
                evict,
            )
            self._jobs[job_id] = InFlight(future, views)
            assert self._connection is not None
            try:
                self._connection.send(("submit", submission))
            except Exception as exc:  # noqa: BLE001 - the job goes back, with the reason
                del self._jobs[job_id]
                raise ModelError(f"the job could not be sent to the model process: {exc}") from exc
        future.add_done_callback(lambda done: self._dropped(job_id, done))
        return future

    def _dropped(self, job_id: str, future: Future[Generation]) -> None:
        """A future canceled here (shutdown, before it started): the model process drops it."""
        if future.cancelled():
            self._send(("stop", job_id))

    # -- the connection --------------------------------------------------------------------

    def _send(self, message: tuple[Any, ...]) -> None:
        with self._lock:
            self._send_locked(message)

    def _send_locked(self, message: tuple[Any, ...]) -> None:
        if self._connection is None or self.dead:
            return
        try:
            self._connection.send(message)
        except (OSError, ValueError):
            pass  # the model process is gone: the reader fails its jobs

    def _read(self) -> None:
        assert self._connection is not None
        while True:
            try:
                message = self._connection.recv()
            except (EOFError, OSError):
                break
            self._handle(message)
        self._lost()

    def _handle(self, message: tuple[Any, ...]) -> None:
        tag = message[0]
        if tag == "stats":
            self._update(message[1])
        elif tag == "received":
            job = self._jobs.get(message[1])
            if job is not None:
                job.views.clear()  # the slots go back with their last view
        elif tag == "started":
            job = self._jobs.get(message[1])
            if job is not None:
                job.future.set_running_or_notify_cancel()  # False: canceled here, stop sent
        elif tag == "done":
            job = self._jobs.pop(message[1], None)
            if job is not None:
                settle(job.future, message[2])
        elif tag == "ready":
            self._info = message[1]
            self._ready.set()
        elif tag == "failed":
            self._failure = message[1]
            self._ready.set()

    def _update(self, snapshot: dict[str, Any]) -> None:
        self.stats = BatchStats(**snapshot["stats"])
        self._pending = int(snapshot["pending"])
        self.gpu_memory = list(snapshot["gpu_memory"])
        if self.on_batch is not None:
            for size, seconds in snapshot["batches"]:
                self.on_batch(size, seconds)

    def _lost(self) -> None:
        """The model process is gone: every job in it fails, and the worker is told."""
        with self._lock:
            self.dead = True
            jobs, self._jobs = list(self._jobs.values()), {}
        self._ready.set()
        error = ModelProcessDied("the model process exited while the job was in it")
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(error)
        if self._closing:
            return
        code = None if self.process is None else self.process.exitcode
        log.error("the model process exited (code %s); %d jobs handed back", code, len(jobs))
        if self.on_death is not None:
            self.on_death()
