"""Preparing jobs in processes of their own, so the model's process runs the batch loop only.

Downloading, decoding, tiling and tokenising (Preparer.job_inputs; a video's sampling too,
worker.video.prepare_video) hold the GIL for milliseconds a job; in the model's process they
would delay the decode loop's kernel launches. A pool of prepare processes does them instead,
each reading images with its own storage client when given one (worker.prepare_reads). Each
loads only the checkpoint's processor (no weights), one torch thread, the worker's pixel limit,
and ignores SIGTERM and SIGINT: the model's process decides when they stop (after its jobs are
drained) and they exit on their own if it dies.

The processes start with 'forkserver' (the model's process has threads, so it must not fork;
the fork server is a fresh single-threaded process that imports torch and transformers once,
so a replacement process starts in about a second). Tensors come back through
torch.multiprocessing's reductions, which ProcessPoolExecutor's ForkingPickler applies: the
uint8 tiles and the ids travel as shared memory (a file descriptor passed over a Unix socket),
never as pickled bytes; image bytes (when the model's process read them) go the other way
pickled, once.

Every shared tensor the model's process keeps holds a file descriptor open, so the pool raises
the soft limit on open files to the hard one and the prepare cache is bounded in entries too.
With slots (worker.prepare_slots, `prepare_slot_mb`), pixels skip that handoff: the prepare
process writes them into a slot of one block both sides mapped once and returns its index; the
ids come back as plain bytes. A video job's frames use slots the same way (as many are lent as
the job may read frames; those it does not fill go back at once). An image or a frame that fits
no slot still travels as a shared tensor.

A prepare process that dies breaks the executor: every job in it sees BrokenProcessPool. A job
prepares once more in a new pool; if that one breaks too, PrepareFailed hands the job back
(a transient error: retried with a backoff, within the job's attempts).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import resource
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any

import torch
import torch.multiprocessing  # noqa: F401 - registers the reductions that share tensors
from transformers import AutoProcessor

from core.config import ModelSpec
from core.images import set_pixel_limit
from core.prompts import Conversation
from core.storage import ObjectStorage, open_storage
from worker.device_tiles import ImagePixels
from worker.prepare_reads import StorageAccess, StoredImage, read_images
from worker.prepare_slots import SlotArena, WireInputs, from_wire, private, to_wire
from worker.preparer import ImageSource, JobInputs, Preparer
from worker.preparing import without_keys
from worker.video import VideoInputs, prepare_video

log = logging.getLogger("worker.prepare_pool")

START_METHOD = "forkserver"
# Cache entries per open file allowed: each shared entry holds one, jobs in flight hold more.
CACHE_ENTRIES_PER_FD = 0.25
MAX_FD_LIMIT = 1 << 20

Work = Callable[..., JobInputs | WireInputs]  # prepare_job's arguments and results


@dataclass
class WireVideo:
    """A video job's inputs as they cross back when slots were lent: frames in their slots."""

    frames: list[int]
    order: list[int]
    inputs: WireInputs


VideoWork = Callable[..., VideoInputs | WireVideo]  # prepare_video_job's arguments, results


class PrepareFailed(RuntimeError):
    """The prepare processes died twice while preparing one job."""


# -- inside a prepare process ----------------------------------------------------------------

_preparer: Preparer | None = None
_arena: SlotArena | None = None
_storage: tuple[ObjectStorage, float] | None = None  # its own client, and the read deadline


def _start_process(
    checkpoint: str,
    revision: str | None,
    alias: str,
    pixel_limit: int | None,
    threads: int,
    slots: tuple[str, int, int] | None = None,
    storage: StorageAccess | None = None,
) -> None:
    """A prepare process's start: its signals, limits, slots, storage and the processor."""
    global _preparer, _arena, _storage  # noqa: PLW0603 - made once per process
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent()
    torch.set_num_threads(threads)
    raise_open_files_limit()
    if pixel_limit:
        set_pixel_limit(pixel_limit)
    if slots is not None:
        name, count, slot_bytes = slots
        _arena = SlotArena(count, slot_bytes, name=name)
    if storage is not None:
        client = open_storage(
            storage.url,
            endpoint_url=storage.endpoint_url,
            region=storage.region,
            s3_direct=storage.s3_direct,
        )
        _storage = (client, storage.read_deadline_s)
    processor = AutoProcessor.from_pretrained(checkpoint, revision=revision)
    _preparer = Preparer(processor, model_alias=alias, cache_bytes=0)


def _exit_with_parent() -> None:
    """Exit as soon as the process that started this one is gone (even killed)."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def prepare_job(
    conversation: Conversation,
    images: Sequence[ImageSource | int | StoredImage],
    max_tiles: int,
    on_device: bool = False,
    slots: list[int | None] | None = None,
) -> JobInputs | WireInputs:
    """A prepare process's work: one job's inputs, by its processor; with slots lent (one per
    image), the pixels that fit are written into them and only their places come back."""
    if _preparer is None:
        raise RuntimeError("this process was not started as a prepare process")
    given = without_keys(_read(images))
    inputs = _preparer.job_inputs(conversation, given, max_tiles=max_tiles, on_device=on_device)
    if slots is None or _arena is None:
        return inputs
    return to_wire(_arena, inputs.input_ids, inputs.tiles, slots, inputs.counts)


def prepare_video_job(
    spec: dict[str, Any],
    control_tokens: list[str],
    data: bytes | StoredImage,
    max_tiles: int,
    on_device: bool,
    slots: list[int | None] | None = None,
) -> VideoInputs | WireVideo:
    """A prepare process's work for a video job: the clip read (when given by its key), its
    frames sampled and decoded, then prepared; with slots lent, the frames that fit are
    written into them, in order (slots beyond the frames read stay unused)."""
    if _preparer is None:
        raise RuntimeError("this process was not started as a prepare process")
    if isinstance(data, StoredImage):
        [read] = _read([data])
        assert isinstance(read, bytes)
        data = read
    video = prepare_video(
        _preparer, spec, control_tokens, data, max_tiles=max_tiles, on_device=on_device
    )
    if slots is None or _arena is None:
        return video
    inputs = video.inputs
    lent = slots[: len(inputs.tiles)]  # one per frame it may read: never fewer than it read
    wire = to_wire(_arena, inputs.input_ids, inputs.tiles, lent, inputs.counts)
    return WireVideo(video.frames, video.order, wire)


def _read(
    images: Sequence[ImageSource | int | StoredImage],
) -> Sequence[ImageSource | int | StoredImage]:
    """Images given by their storage key read with this process's own client."""
    if _storage is None:
        return images  # nothing to read with: keys left are refused by without_keys
    client, deadline_s = _storage
    return read_images(client, images, deadline_s=deadline_s)


def _process_id() -> int:
    return os.getpid()


# -- in the worker's process -------------------------------------------------------------------


def raise_open_files_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_FD_LIMIT if hard == resource.RLIM_INFINITY else min(hard, MAX_FD_LIMIT)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return MAX_FD_LIMIT if soft == resource.RLIM_INFINITY else soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError):
        return soft
    return wanted


class PreparePool:
    """`processes` prepare processes for one model; jobs prepare in whichever is free."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        processes: int,
        pixel_limit: int | None = None,
        threads: int = 1,
        work: Work = prepare_job,
        video_work: VideoWork = prepare_video_job,
        slots: int = 0,
        slot_bytes: int = 0,
        storage: StorageAccess | None = None,
    ) -> None:
        if processes < 1:
            raise ValueError("a prepare pool has at least one process")
        self.spec = spec
        self.processes = processes
        self.restarts = 0  # pools replaced after a process died
        self.arena = SlotArena(slots, slot_bytes) if slots and slot_bytes else None
        mapping = None if self.arena is None else (self.arena.name, slots, slot_bytes)
        self.reads_storage = storage is not None  # jobs may send StoredImage references
        self._initargs: tuple[Any, ...] = (
            spec.checkpoint, spec.revision, spec.alias, pixel_limit, threads, mapping, storage
        )  # fmt: skip
        self._work = work
        self._video_work = video_work
        self._context = multiprocessing.get_context(START_METHOD)
        self._context.set_forkserver_preload([__name__])
        self._lock = threading.Lock()
        self.open_files_limit = raise_open_files_limit()
        self._executor = self._new_executor()
        self._warming: list[Future[int]] = []

    @property
    def cache_entries(self) -> int:
        """Prepare-cache entries this process can keep open (each one file descriptor)."""
        return max(64, int(self.open_files_limit * CACHE_ENTRIES_PER_FD))

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.processes,
            mp_context=self._context,
            initializer=_start_process,
            initargs=self._initargs,
        )

    def start(self) -> None:
        """Start every process now (each loads the processor), without waiting for them."""
        self._warming = [self._executor.submit(_process_id) for _ in range(self.processes)]

    def wait_ready(self, timeout_s: float | None = None) -> list[int]:
        """Wait until the processes `start` began are up; their process ids (some repeated)."""
        return [future.result(timeout_s) for future in self._warming]

    def run(
        self,
        conversation: Conversation,
        images: Sequence[ImageSource | int | StoredImage],
        *,
        max_tiles: int,
        on_device: bool = False,
    ) -> JobInputs:
        """One job's ids and the pixels of the images given as sources, from a prepare process.

        The pixels are in lent slots or shared memory. A decoding error comes back as
        ImageUndecodable; a process that died makes the job prepare once more in a new pool,
        then PrepareFailed.
        """
        lent = self._lend([not isinstance(image, int) for image in images])
        viewed: set[int] = set()  # slots whose views now free them
        try:
            args = (conversation, images, max_tiles, on_device, *([lent] if lent else []))
            return self._received(self._retrying(self._work, args), viewed)
        finally:
            self._give_back(lent, viewed)

    def run_video(
        self,
        spec: dict[str, Any],
        control_tokens: list[str],
        data: bytes | StoredImage,
        *,
        max_tiles: int,
        on_device: bool = False,
    ) -> VideoInputs:
        """A video job sampled, decoded and prepared in a prepare process (frames in lent slots,
        or as shared tensors); a clip no decoder reads comes back as VideoUndecodable."""
        lent = self._lend([True] * int(spec["video"]["num_frames"]))  # the most it may read
        viewed: set[int] = set()
        try:
            args = (spec, control_tokens, data, max_tiles, on_device, *([lent] if lent else []))
            result: VideoInputs | WireVideo = self._retrying(self._video_work, args)
            if isinstance(result, VideoInputs):
                return result
            return VideoInputs(result.frames, result.order, self._received(result.inputs, viewed))
        finally:
            self._give_back(lent, viewed)

    def _retrying(self, work: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        """`work` run in a prepare process; once more in a new pool if a process died."""
        for attempt in (1, 2):
            executor = self._executor
            try:
                return executor.submit(work, *args).result()
            except BrokenProcessPool as exc:
                self._replace(executor)
                if attempt == 2:
                    raise PrepareFailed(f"prepare processes died twice: {exc}") from exc
                # The message only: a record holding the error would keep its frames, and the
                # pixels they reach (a lent slot), alive as long as the record.
                log.warning("a prepare process died (%s); preparing the job again", str(exc))
        raise AssertionError("unreachable")

    def _lend(self, wanted: list[bool]) -> list[int | None] | None:
        """A slot for each place that wants one (None elsewhere, or where none is free), or
        None without slots."""
        if self.arena is None:
            return None
        slots = iter(self.arena.lend(sum(wanted)))
        return [next(slots) if want else None for want in wanted]

    def _give_back(self, lent: list[int | None] | None, viewed: set[int]) -> None:
        """Lent slots that no view holds (left unfilled, or the job failed) free again."""
        for slot in lent or []:
            if slot is not None and slot not in viewed and self.arena is not None:
                self.arena.give_back(slot)

    def _received(self, result: JobInputs | WireInputs, viewed: set[int]) -> JobInputs:
        """The job's inputs, slots viewed in place (each slot then freed with its last view)."""
        if isinstance(result, JobInputs):
            return result
        assert self.arena is not None
        ids, images = from_wire(self.arena, result, viewed)
        return JobInputs(ids, images, result.counts)

    def cacheable(self, image: ImagePixels) -> ImagePixels:
        """A private copy of an image in a lent slot (a cache entry must not keep it lent)."""
        if self.arena is not None and self.arena.holds(image):
            return private(image)
        return image

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        """A new executor for a broken one; jobs that saw the same break replace it once."""
        with self._lock:
            if self._executor is not broken:
                return
            broken.shutdown(wait=False, cancel_futures=True)
            self._executor = self._new_executor()
            self.restarts += 1

    def close(self) -> None:
        """Stop the processes after the jobs they have; jobs not yet started fail."""
        self._executor.shutdown(wait=True, cancel_futures=True)
        if self.arena is not None:
            self.arena.close()
