"""Where a worker's model runs: what the runtime asks of it, and the model in its own process.

The runtime (worker.runtime) claims, prepares and records; it hands each job to a `ModelHost`
as a `ModelRequest` and waits for its Generation. `LocalModel` is the engine and its batcher
in the worker's own process (prepare_processes = 0, and most tests); worker.model_client is
the model in a process of its own (`model_process`), whose process runs the batch loop only.

Both keep the prepare cache beside the model, so a cached image's pixels are never sent
again: the runtime asks `cached(keys)` which images it need not prepare (their tile counts),
and marks the images it prepared `fresh` so the host keeps them under their key.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import Future
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from core.specs import GenerationParams
from worker.batcher import Batcher
from worker.device_tiles import ImagePixels, image_tile_count
from worker.engine import Generation, InternVLEngine, PreparedJob
from worker.prepare_cache import cache_counts


@dataclass
class PromptImage:
    """One image of a prompt: its pixels, or a reference to the cached ones under its key."""

    pixels: ImagePixels | None  # None: the image cached under `key`
    key: Hashable | None = None  # its prepare-cache key; None for a video's frame (not cached)
    fresh: bool = False  # prepared for this job: the host keeps it under `key`


@dataclass
class CachedImage:
    """An image the host has prepared already: its tiles, and its pixels when they are here."""

    tiles: int
    pixels: ImagePixels | None = None  # None when they are in the model's process only


@dataclass
class ModelRequest:
    """One job for the model: its ids, its images in prompt order, and how to generate."""

    job_id: str
    input_ids: torch.Tensor
    images: list[PromptImage]
    tiles: list[int]  # per image, in prompt order
    params: GenerationParams
    response_format: dict[str, Any] | None
    cancel: threading.Event  # set: the generation stops at its next step

    @property
    def prompt_tokens(self) -> int:
        """Tokens of the prompt, image tokens included."""
        return int(self.input_ids.shape[0])


class Announced(Protocol):
    """A job on its way to the model (claiming, reading, preparing): batches wait for it."""

    def close(self) -> None:
        """The job was submitted, or will not be."""

    def withdraw(self) -> None:
        """The job will not be submitted."""


class ModelHost(Protocol):
    """The model as the runtime sees it: announcements, the prepare cache, submissions.

    Starting, stopping and the statistics are the runtime's `batcher` (a Batcher, or the
    model client, which has the same surface).
    """

    @property
    def control_tokens(self) -> list[str]:
        """The tokenizer's control tokens, which prompts must not contain."""

    @property
    def resize_on_device(self) -> bool:
        """Whether pictures are tiled by the device (else on the host)."""

    def announce(self) -> Announced:
        """A job is on its way: batches wait for it (bounded)."""

    def cache_key(self, sha256: str, max_tiles: int) -> Hashable:
        """What identifies an image's pixels in the prepare cache."""

    def cached(self, keys: list[Hashable]) -> AbstractContextManager[list[CachedImage | None]]:
        """The images cached under keys (None: not cached), kept while the context is open."""

    def cache_counts(self) -> dict[str, int]:
        """The prepare cache's hits, misses, entries and bytes (worker.prepare_cache)."""

    def cancel_event(self, job_id: str) -> threading.Event:
        """The event that, set, stops a job's generation (wherever the model runs)."""

    def prepared(self, request: ModelRequest) -> Any:
        """A request made ready to submit (outside the runtime's lock: grammars compile here)."""

    def submit(self, prepared: Any, *, announcement: Announced | None) -> Future[Generation]:
        """Queue a prepared request; the future runs once the model admits the job."""


class LocalModel:
    """The engine and its batcher in this process: a ModelHost without a process boundary."""

    def __init__(
        self,
        engine: InternVLEngine,
        batcher: Batcher,
        *,
        cacheable: Callable[[ImagePixels], ImagePixels] = lambda image: image,
    ) -> None:
        self.engine = engine
        self.batcher = batcher
        self.cacheable = cacheable  # a private copy of pixels in a lent prepare slot

    @property
    def control_tokens(self) -> list[str]:
        """The tokenizer's control tokens."""
        return self.engine.control_tokens

    @property
    def resize_on_device(self) -> bool:
        """Whether the engine tiles pictures on its device."""
        return self.engine.resize_on_device

    def announce(self) -> Announced:
        """The batcher's announcement."""
        return self.batcher.announce()

    def cache_key(self, sha256: str, max_tiles: int) -> Hashable:
        """The engine's prepare-cache key."""
        return self.engine.cache_key(sha256, max_tiles)

    @contextmanager
    def cached(self, keys: list[Hashable]) -> Iterator[list[CachedImage | None]]:
        """The cached images, held by the caller (eviction cannot take them away)."""
        found = [self.engine.prepare_cache.get(key) for key in keys]
        yield [None if i is None else CachedImage(image_tile_count(i), i) for i in found]

    def cache_counts(self) -> dict[str, int]:
        """The engine's prepare cache's hits, misses, entries and bytes."""
        return cache_counts(self.engine.prepare_cache)

    def cancel_event(self, job_id: str) -> threading.Event:
        """A plain event: the model loop reads it directly."""
        return threading.Event()

    def prepared(self, request: ModelRequest) -> PreparedJob:
        """The engine's job, fresh images cached; its cancel event and grammar attached."""
        pixels: list[ImagePixels] = []
        for image in request.images:
            assert image.pixels is not None  # cached ones come with their pixels here
            if image.fresh and image.key is not None:
                self.engine.prepare_cache.put(image.key, self.cacheable(image.pixels))
            pixels.append(image.pixels)
        job = self.engine.prepared(
            request.job_id, request.input_ids, pixels, request.tiles, request.params
        )
        job.cancel = request.cancel
        job.constraint = self.engine.constraint_for(request.response_format)
        return job

    def submit(self, prepared: Any, *, announcement: Announced | None) -> Future[Generation]:
        """Queue the job in the batcher."""
        if announcement is not None:
            announcement.close()
        return self.batcher.submit(prepared)
