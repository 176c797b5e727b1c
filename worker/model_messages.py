"""What the worker's side sends to its model process and makes of the answers (worker.model_client).

A job crosses as a Submission (worker.model_process) whose images are `parts`: a key for an
image the model process has cached, a SlotRef for one in a prepare slot (the model process
maps the same block; the slot stays lent until it says it copied it), or else a shared tensor
(torch.multiprocessing's reductions). The front keeps the prepare cache's index
(worker.cache_index), so a part also says under which key the model process keeps the image,
and the submission which keys to evict first.

A job's outcome comes back as a Generation, or as a tuple naming a cancel or an error;
`settle` gives it to the job's future, unless that future was settled here already (a job
canceled here was handed back, and a late outcome for it is ignored).
"""

from __future__ import annotations

from collections.abc import Hashable
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from typing import Any

from core.errors import PermanentJobError
from worker.cache_index import CacheIndex
from worker.device_tiles import ImagePixels, image_nbytes
from worker.engine import Generation
from worker.model_host import ModelRequest
from worker.model_process import Part
from worker.prepare_slots import SlotArena


class ModelProcessDied(RuntimeError):
    """The model process exited while jobs were in it (they are handed back)."""


class ModelError(RuntimeError):
    """A job's generation failed in the model process (it is retried, within its attempts)."""


@dataclass
class InFlight:
    """A job sent to the model process: its future, and the slot views lent until `received`."""

    future: Future[Generation]
    views: list[ImagePixels] = field(default_factory=list)


def image_parts(
    request: ModelRequest, index: CacheIndex, arena: SlotArena | None
) -> tuple[list[Part], list[ImagePixels], list[Hashable]]:
    """Each image as it crosses (a key, a slot, a shared tensor), the slot views to keep
    until the model process has them, and the cache keys to evict first.

    Fresh images are added to the cache index here (what it evicts to make room is returned);
    call it under the lock that keeps the index's changes in the order of the sends.
    """
    parts: list[Part] = []
    views: list[ImagePixels] = []
    evict: list[Hashable] = []
    for image, tiles in zip(request.images, request.tiles, strict=True):
        if image.pixels is None:
            parts.append(("cached", image.key, None))
            continue
        store = None
        if image.fresh and image.key is not None:
            kept, evicted = index.add(image.key, image_nbytes(image.pixels), tiles)
            evict.extend(evicted)
            store = image.key if kept else None
        ref = arena.ref(image.pixels) if arena is not None else None
        if ref is not None:
            parts.append(("slot", ref, store))
            views.append(image.pixels)
        else:
            parts.append(("tensor", image.pixels, store))
    return parts, views, evict


def settle(future: Future[Generation], outcome: Generation | tuple[Any, ...]) -> None:
    """Give a job's future what the model process said (unless it was settled here already)."""
    if future.done():
        return  # canceled here (the job was handed back): a late outcome is ignored
    if isinstance(outcome, Generation):
        if future.running() or future.set_running_or_notify_cancel():
            future.set_result(outcome)
        return
    if outcome[0] == "canceled":
        if not future.cancel():
            future.set_exception(CancelledError())
        return
    _, permanent, code, detail = outcome
    error = PermanentJobError(detail, code=code) if permanent else ModelError(detail)
    if future.running() or future.set_running_or_notify_cancel():
        future.set_exception(error)
