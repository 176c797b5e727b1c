"""Recycled shared-memory slots: how prepared pixels reach the model's process without a handoff.

Sending a tensor through torch.multiprocessing passes a new shared-memory segment per tensor:
a file descriptor over a Unix socket, an authentication handshake, a mapping and later an
unmapping, all Python in the model's process that holds the GIL beside the decode loop. With
slots, the model's process creates one block of `count` slots of `slot_bytes` once; every
prepare process maps it once at start. For each image of a job the model's process lends a free
slot; the prepare process writes the image's uint8 pixels (a picture, or tiles) into it and
returns only its index, shape and grid (a SlotRef), with the ids as plain bytes. The model's
process views the slot as a tensor (no copy) and the slot returns to the free list when the
last view of it is gone: when the job's batch has consumed it and the job has ended.

An image that does not fit its slot, or a job that finds no free slot, travels as before (a
shared tensor); nothing is lost, only the handoff is dearer. A prepare process killed while
writing leaves a slot the model's process still owns: it is reused once the job is done.
"""

from __future__ import annotations

import math
import mmap
import os
import secrets
import weakref
from collections import deque
from dataclasses import dataclass
from multiprocessing import resource_tracker
from pathlib import Path

import numpy as np
import torch

from worker.device_tiles import ImagePixels
from worker.preprocess import Picture

# POSIX shared memory on Linux, where shm_open puts it; blocks are made O_EXCL, mode 0600.
SHM_FOLDER = Path("/dev/shm")  # noqa: S108 - see above
PREFIX = "ivj-slots-"  # then the creating process's id


@dataclass
class WireInputs:
    """A job's inputs as they cross back when slots were lent: no tensor to hand over."""

    ids: np.ndarray  # int64, pickled as bytes
    tiles: list[ImagePixels | SlotRef | None]  # SlotRef: in a lent slot; a tensor: did not fit
    counts: list[int]


@dataclass(frozen=True)
class SlotRef:
    """An image written into a slot: its index, its shape there, and a picture's grid."""

    index: int
    shape: tuple[int, ...]  # (H, W, 3) for a picture, (tiles, 3, T, T) for tiles
    grid: tuple[int, int] | None  # (columns, rows) of a picture; None for tiles


class SlotArena:
    """`count` slots of `slot_bytes` in one shared-memory block (created, or attached by name)."""

    def __init__(self, count: int, slot_bytes: int, *, name: str | None = None) -> None:
        self.count = count
        self.slot_bytes = slot_bytes
        self.owner = name is None
        if self.owner:
            remove_stale_blocks()
        self.name = name or f"{PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if self.owner else 0)
        descriptor = os.open(SHM_FOLDER / self.name, flags, 0o600)
        try:
            if self.owner:
                os.ftruncate(descriptor, count * slot_bytes)
                # The tracker unlinks the block if this process dies without closing it.
                resource_tracker.register(f"/{self.name}", "shared_memory")
            self._map = mmap.mmap(descriptor, count * slot_bytes)
        finally:
            os.close(descriptor)
        self.base = np.frombuffer(self._map, dtype=np.uint8)
        # A deque's append and pop are atomic, so no lock: give_back runs from finalizers, which
        # the garbage collector may start in any thread, even one inside lend.
        self._free: deque[int] = deque(range(count))

    @property
    def free(self) -> int:
        """Slots not lent now."""
        return len(self._free)

    def lend(self, wanted: int) -> list[int | None]:
        """Up to `wanted` free slots (None where none is left)."""
        lent: list[int | None] = []
        for _ in range(wanted):
            try:
                lent.append(self._free.pop())
            except IndexError:
                lent.append(None)
        return lent

    def give_back(self, index: int) -> None:
        """A slot free again."""
        self._free.append(index)

    def write(self, index: int, image: ImagePixels) -> SlotRef | None:
        """Copy an image's pixels into a slot (in a prepare process); None if it does not fit."""
        pixels, grid = (image, None) if isinstance(image, torch.Tensor) else _interleaved(image)
        if pixels.numel() > self.slot_bytes:
            return None
        start = index * self.slot_bytes
        target = torch.from_numpy(self.base[start : start + pixels.numel()]).view(pixels.shape)
        target.copy_(pixels)
        return SlotRef(index, tuple(pixels.shape), grid)

    def view(self, ref: SlotRef) -> ImagePixels:
        """The image in a slot, without a copy; the slot is freed when no view of it is left."""
        start = ref.index * self.slot_bytes
        block = self.base[start : start + math.prod(ref.shape)]
        weakref.finalize(block, self.give_back, ref.index)
        pixels = torch.from_numpy(block).view(ref.shape)
        if ref.grid is None:
            return pixels
        return Picture(pixels.permute(2, 0, 1), *ref.grid)

    def holds(self, image: ImagePixels) -> bool:
        """Whether an image's pixels live in this block."""
        pixels = image if isinstance(image, torch.Tensor) else image.pixels
        start = self.base.ctypes.data
        return start <= pixels.data_ptr() < start + self.count * self.slot_bytes

    def ref(self, image: ImagePixels) -> SlotRef | None:
        """Where a view of a slot (as `view` made it) lies in the block; None if elsewhere.

        The model client sends this to the model process, which maps the same block.
        """
        if not self.holds(image):
            return None
        pixels, grid = (image, None) if isinstance(image, torch.Tensor) else _interleaved(image)
        index = (pixels.data_ptr() - self.base.ctypes.data) // self.slot_bytes
        return SlotRef(index, tuple(pixels.shape), grid)

    def close(self) -> None:
        """Unlink the block (in its creator); the mapping goes with its last view."""
        if self.owner:
            (SHM_FOLDER / self.name).unlink(missing_ok=True)
            resource_tracker.unregister(f"/{self.name}", "shared_memory")


def to_wire(
    arena: SlotArena,
    ids: torch.Tensor,
    images: list[ImagePixels | None],
    slots: list[int | None],
    counts: list[int],
) -> WireInputs:
    """A job's inputs for the way back (in a prepare process): pixels written into their slots."""
    tiles: list[ImagePixels | SlotRef | None] = []
    for image, slot in zip(images, slots, strict=True):
        ref = arena.write(slot, image) if image is not None and slot is not None else None
        tiles.append(ref if ref is not None else image)
    return WireInputs(ids.numpy(), tiles, counts)


def from_wire(
    arena: SlotArena, wire: WireInputs, viewed: set[int]
) -> tuple[torch.Tensor, list[ImagePixels | None]]:
    """(ids, images) of a job that came back (in the model's process), slots viewed in place;
    the slots viewed are added to `viewed` (each is freed with its last view)."""
    images: list[ImagePixels | None] = []
    for image in wire.tiles:
        if isinstance(image, SlotRef):
            viewed.add(image.index)
            images.append(arena.view(image))
        else:
            images.append(image)
    return torch.from_numpy(wire.ids), images


def remove_stale_blocks() -> list[str]:
    """Unlink blocks whose creator is gone; their names.

    A worker killed with its whole process group takes multiprocessing's resource tracker with
    it, so nothing unlinks its block: the next worker on the host does. (Workers whose /dev/shm
    is shared across process-id namespaces must not share it with this scheme.)
    """
    removed = []
    for path in SHM_FOLDER.glob(f"{PREFIX}*"):
        owner = path.name.removeprefix(PREFIX).split("-")[0]
        if owner.isdigit() and not _alive(int(owner)):
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _interleaved(picture: Picture) -> tuple[torch.Tensor, tuple[int, int]]:
    """A picture's pixels as (H, W, 3), the decoder's layout (a view when they are in it)."""
    return picture.pixels.permute(1, 2, 0), (picture.columns, picture.rows)


def private(image: ImagePixels) -> ImagePixels:
    """A copy of an image in private memory (so a cache entry does not keep a slot lent)."""
    if isinstance(image, torch.Tensor):
        return image.clone()
    return Picture(image.pixels.clone(), image.columns, image.rows)
