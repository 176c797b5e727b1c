"""Copies of pixels to the model's device that run beside its compute: primitives and buffers.

A host-to-device copy overlaps the device's compute only when it is issued on a stream of its
own, from page-locked ("pinned") host memory: from ordinary (pageable) memory CUDA first copies
through a bounce buffer while the host waits, and on the compute stream the copy waits for the
kernels queued before it. `Copies` is the small set of primitives the stager
(worker/staging.py) needs, so its logic is the same with either implementation:

- `CudaCopies`: pinned host buffers, copies on a side `torch.cuda.Stream`, an event recorded
  after them that the compute stream waits on (a wait on the device, not on the host), and
  `record_stream` on the device memory the compute stream then reads, so the caching allocator
  does not hand that memory out again before the compute stream is done with it;
- `HostCopies`: plain memory and copies done at once, for a CPU (tests and the benchmark's CPU
  run). A worker on a CPU stages nothing: pinning needs CUDA, and a copy there is a memory move.

`PinnedBuffers` keeps the host buffers for reuse (allocating pinned memory is slow), within a
bound in bytes, and lends each one until the copy out of it has completed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

MIN_BUFFER_BYTES = 64 * 1024


class Ready(Protocol):
    """Marks the copies issued before it (a CUDA event)."""

    def query(self) -> bool:
        """Whether those copies have completed."""
        ...


class Copies(Protocol):
    """Host buffers, copies issued off the compute stream, and the compute stream's wait."""

    def host_buffer(self, nbytes: int) -> torch.Tensor:
        """A new 1-D uint8 host buffer the copies can read without a bounce (pinned)."""
        ...

    def to_device(self, host: torch.Tensor) -> torch.Tensor:
        """Issue the copy of `host` to the device off the compute stream; its future result."""
        ...

    def record(self) -> Ready:
        """A marker of the copies issued so far."""
        ...

    def wait(self, ready: Ready, tensors: Sequence[torch.Tensor]) -> None:
        """The compute stream waits for `ready` and will read `tensors` (copies' results)."""
        ...


class CudaCopies:
    """Pinned host buffers and copies on a side stream of one CUDA device."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device)

    def host_buffer(self, nbytes: int) -> torch.Tensor:
        """Page-locked host memory: the copy engine reads it directly, the host does not wait."""
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)

    def to_device(self, host: torch.Tensor) -> torch.Tensor:
        """The copy on the side stream. Its device memory is allocated while that stream is
        current, so it comes from the side stream's pool and need not wait for the compute
        stream's queued kernels (memory the compute stream freed may still be read by them)."""
        with torch.cuda.stream(self.stream):
            return host.to(self.device, non_blocking=True)

    def record(self) -> Ready:
        """An event after the copies issued so far on the side stream."""
        event = torch.cuda.Event()
        event.record(self.stream)
        return event

    def wait(self, ready: Ready, tensors: Sequence[torch.Tensor]) -> None:
        """The compute stream waits for the event on the device (the host goes on), and the
        tensors' memory is marked as used by it, so freeing them later is safe."""
        stream = torch.cuda.current_stream(self.device)
        assert isinstance(ready, torch.cuda.Event)
        stream.wait_event(ready)
        for tensor in tensors:
            tensor.record_stream(stream)


class _Done:
    """A marker whose copies have completed (they ran when issued)."""

    def query(self) -> bool:
        return True


class HostCopies:
    """The primitives on a CPU: plain memory, each copy made when issued."""

    def host_buffer(self, nbytes: int) -> torch.Tensor:
        """Ordinary memory (pinning needs CUDA)."""
        return torch.empty(nbytes, dtype=torch.uint8)

    def to_device(self, host: torch.Tensor) -> torch.Tensor:
        """A copy, made now: the "device" is the host's memory."""
        return host.clone()

    def record(self) -> Ready:
        """Done already."""
        return _Done()

    def wait(self, ready: Ready, tensors: Sequence[torch.Tensor]) -> None:
        """Nothing to wait for."""


def buffer_bytes(nbytes: int) -> int:
    """The size of buffer that holds `nbytes`: a power of two from 64 KiB, so that buffers
    freed by one group fit the next (at most twice the bytes; a 13-tile photo's 7.5 MiB of
    tiles takes 8 MiB)."""
    size = MIN_BUFFER_BYTES
    while size < nbytes:
        size *= 2
    return size


class PinnedBuffers:
    """Reusable host buffers, `limit_bytes` at most in all, each lent until its copy completes."""

    def __init__(self, copies: Copies, *, limit_bytes: int) -> None:
        self.copies = copies
        self.limit_bytes = limit_bytes
        self.allocated_bytes = 0  # every buffer held: free and lent
        self.created = 0
        self.reused = 0
        self._free: list[torch.Tensor] = []  # smallest first
        self._lent: list[tuple[torch.Tensor, Ready]] = []

    @property
    def lent_bytes(self) -> int:
        """Bytes of buffers whose copies have not been seen to complete."""
        return sum(int(buffer.numel()) for buffer, _ in self._lent)

    def acquire(self, nbytes: int) -> torch.Tensor | None:
        """A buffer of at least `nbytes`: a free one, else a new one within the bound (free
        ones given up to make room); None when none fits: the caller copies from pageable
        memory."""
        self._reclaim()
        for index, buffer in enumerate(self._free):
            if buffer.numel() >= nbytes:
                self.reused += 1
                return self._free.pop(index)
        size = buffer_bytes(nbytes)
        while self._free and self.allocated_bytes + size > self.limit_bytes:
            self.allocated_bytes -= int(self._free.pop(0).numel())  # its memory is unpinned
        if self.allocated_bytes + size > self.limit_bytes:
            return None
        self.allocated_bytes += size
        self.created += 1
        return self.copies.host_buffer(size)

    def release(self, buffer: torch.Tensor, *, after: Ready) -> None:
        """The buffer comes back once the copies up to `after` have completed."""
        self._lent.append((buffer, after))

    def _reclaim(self) -> None:
        """Buffers whose copies have completed become free again."""
        lent: list[tuple[torch.Tensor, Ready]] = []
        for buffer, ready in self._lent:
            if ready.query():
                self._free.append(buffer)
            else:
                lent.append((buffer, ready))
        self._lent = lent
        self._free.sort(key=lambda buffer: int(buffer.numel()))
