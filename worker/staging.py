"""Staging: a group's pixels copied to the device while the running batch's step computes.

Without it a joining group's pixels go to the device when its prefill starts, one image at a
time, on the compute stream, from pageable memory: on a GPU each copy then holds up the model
thread and the device alike. With a `Stager` (a batcher on a GPU, `stage_pixels_mb`):

- while a decode step runs on the device, the batcher names the jobs it expects to join next
  (admission's group, as if the batch stayed as it is) and `stage` starts their copies: each
  job's images are packed into one pinned host buffer (worker.copies.PinnedBuffers) and sent
  in one copy on the side stream; a job whose pixels find no buffer within the bound is sent
  from its own (pageable) memory instead;
- the prefill `take`s its jobs: those staged come with their pixels on the device, the compute
  stream waiting on the copies' event (on the device; the host does not wait); the others are
  copied then, by the same path.

The static batcher (worker.batcher, beam search included) calls the same two: as a batch
starts it `take`s the batch's jobs, then `stage`s the batch that would follow, whose copies run
while `generate` computes.

A job is staged as an object, not by its id, and a staged copy is used only by the prefill of
that very job, so a job prepared again is copied again. What `stage` staged and the next call
no longer names (the job was canceled, a shorter one took its place, it no longer fits) is
dropped, and `take` drops whatever it was not asked for: staged pixels live at most until the
next group joins. Staged device memory is bounded by the same bytes as the pinned buffers,
and the continuous batcher keeps that bound out of its KV-cache budget; a pinned buffer is
reused only once the copy out of it has completed.

The primitives are injected (worker.copies.Copies): CUDA's on a GPU, plain memory in tests,
so the logic here runs and is tested without a GPU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from worker.copies import Copies, CudaCopies, PinnedBuffers, Ready
from worker.device_tiles import ImagePixels
from worker.engine import PreparedJob
from worker.preprocess import Picture

ALIGN_BYTES = 512  # each image's place in a job's buffer: aligned for the device's copies


@dataclass
class StagingStats:
    """What the stager did: figures for benchmarks and tests."""

    staged: int = 0  # jobs whose copies started before their prefill
    used: int = 0  # jobs a prefill found staged
    copied_at_prefill: int = 0  # jobs copied when their prefill started
    dropped: int = 0  # staged jobs dropped before a prefill took them
    pinned_copies: int = 0  # jobs sent from a pinned buffer
    pageable_copies: int = 0  # jobs sent from their own memory (no buffer within the bound)


@dataclass
class _Staged:
    job: PreparedJob  # the job as submitted (kept: its id is the key)
    on_device: PreparedJob  # the same job, its pixels on the device
    blocks: list[torch.Tensor]  # the device memory those pixels are views of
    ready: Ready
    nbytes: int


class Stager:
    """Copies of jobs' pixels to the device ahead of their prefill, within `limit_bytes`."""

    def __init__(self, copies: Copies, *, limit_bytes: int) -> None:
        self.copies = copies
        self.limit_bytes = limit_bytes
        self.buffers = PinnedBuffers(copies, limit_bytes=limit_bytes)
        self.stats = StagingStats()
        self._staged: dict[int, _Staged] = {}

    @property
    def staged_bytes(self) -> int:
        """Device bytes held by staged jobs that no prefill has taken yet."""
        return sum(entry.nbytes for entry in self._staged.values())

    def staged_jobs(self) -> list[PreparedJob]:
        """The jobs staged and not yet taken, in the order they were staged."""
        return [entry.job for entry in self._staged.values()]

    # Both under inference mode, whoever calls: a buffer made in one and written in the other
    # must be the same kind of tensor (torch refuses in-place writes to an inference tensor
    # outside inference mode).
    @torch.inference_mode()
    def stage(self, jobs: Sequence[PreparedJob]) -> None:
        """Start copying `jobs`' pixels (the group expected next), in order, while the staged
        bytes stay within the bound; staged jobs not among them are dropped."""
        wanted = {id(job) for job in jobs}
        for key in [key for key in self._staged if key not in wanted]:
            del self._staged[key]
            self.stats.dropped += 1
        for job in jobs:
            if id(job) in self._staged or not job.pixels:
                continue
            nbytes = job_bytes(job)
            if self.staged_bytes + nbytes > self.limit_bytes:
                break  # in join order: a later, smaller job does not take its place
            self._staged[id(job)] = self._copy(job, nbytes)
            self.stats.staged += 1

    @torch.inference_mode()
    def take(self, jobs: Sequence[PreparedJob]) -> list[PreparedJob]:
        """`jobs` with their pixels on the device for the prefill starting now (the compute
        stream waits for their copies); what was staged for other jobs is dropped."""
        taken: list[PreparedJob] = []
        for job in jobs:
            entry = self._staged.pop(id(job), None)
            if entry is None and not job.pixels:
                taken.append(job)
                continue
            if entry is None:
                entry = self._copy(job, job_bytes(job))
                self.stats.copied_at_prefill += 1
            else:
                self.stats.used += 1
            self.copies.wait(entry.ready, entry.blocks)
            taken.append(entry.on_device)
        self.drop()
        return taken

    def drop(self) -> None:
        """Forget every staged job (their device memory goes once nothing reads it)."""
        self.stats.dropped += len(self._staged)
        self._staged.clear()

    def _copy(self, job: PreparedJob, nbytes: int) -> _Staged:
        """Issue the copies of one job's pixels: packed into one pinned buffer when one is
        free or fits within the bound, else each image from its own memory."""
        sources, rebuild = zip(*(_travelling(image) for image in job.pixels), strict=True)
        buffer = self.buffers.acquire(nbytes)
        if buffer is None:
            moved = [self.copies.to_device(source) for source in sources]
            blocks = moved
            self.stats.pageable_copies += 1
        else:
            offsets = _offsets(sources)
            for source, offset in zip(sources, offsets, strict=True):
                _view(buffer, offset, source).copy_(source)
            block = self.copies.to_device(buffer[:nbytes])
            moved = [_view(block, offset, s) for s, offset in zip(sources, offsets, strict=True)]
            blocks = [block]
            self.stats.pinned_copies += 1
        ready = self.copies.record()
        if buffer is not None:
            self.buffers.release(buffer, after=ready)
        pixels = [make(tensor) for make, tensor in zip(rebuild, moved, strict=True)]
        on_device = dataclasses.replace(job, pixels=pixels)
        return _Staged(job, on_device, blocks, ready, nbytes)


def job_bytes(job: PreparedJob) -> int:
    """Bytes a job's pixels take packed (each image aligned)."""
    sources = [_travelling(image)[0] for image in job.pixels]
    if not sources:
        return 0
    last = sources[-1]
    return _offsets(sources)[-1] + last.numel() * last.element_size()


def _offsets(sources: Sequence[torch.Tensor]) -> list[int]:
    offsets, offset = [], 0
    for source in sources:
        offsets.append(offset)
        size = source.numel() * source.element_size()
        offset += -(-size // ALIGN_BYTES) * ALIGN_BYTES
    return offsets


def _view(block: torch.Tensor, offset: int, like: torch.Tensor) -> torch.Tensor:
    """The bytes of `block` from `offset` seen as a contiguous tensor shaped like `like`."""
    size = like.numel() * like.element_size()
    return block[offset : offset + size].view(like.dtype).view(like.shape)


def _travelling(image: ImagePixels) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    """The block an image's pixels travel as, and how its device copy becomes the image.

    As worker.device_tiles moves them: a decoder's channels-last picture travels as its
    contiguous (H, W, 3) block and is viewed planar again on the device.
    """
    if isinstance(image, torch.Tensor):
        return image, lambda moved: moved
    columns, rows = image.columns, image.rows
    interleaved = image.pixels.permute(1, 2, 0)
    if interleaved.is_contiguous():
        return interleaved, lambda moved: Picture(moved.permute(2, 0, 1), columns, rows)
    return image.pixels, lambda moved: Picture(moved, columns, rows)


def make_stager(device: torch.device, stage_pixels_mb: int) -> Stager | None:
    """The stager of a worker on `device`: CUDA copies within stage_pixels_mb on a GPU; none
    on a CPU (pinning needs CUDA, and a copy there is a memory move) or when it is 0."""
    if device.type != "cuda" or stage_pixels_mb <= 0:
        return None
    return Stager(CudaCopies(device), limit_bytes=stage_pixels_mb * 2**20)
