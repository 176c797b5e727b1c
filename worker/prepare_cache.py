"""A worker's cache of prepared images, so one image asked several questions is prepared once.

An entry is what preparing made of the image: its uint8 tiles, or its decoded picture and
grid when the device resizes (worker.device_tiles.ImagePixels).

Keyed by (image SHA-256, max_tiles, model alias): the same bytes at the same grid limit give the
same tiles for one model. Bounded in bytes (least recently used entries go first), and in
entries when they hold shared memory (each keeps a file descriptor open); an entry larger than
the whole bound is not kept. Tensors handed out are shared: readers never write
them (the engine copies them into the batch's tensor on the device).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Protocol

from worker.device_tiles import ImagePixels, image_nbytes


class CountedCache(Protocol):
    """A prepare cache, or the record of one, as the worker reports it."""

    hits: int
    misses: int
    bytes: int
    max_bytes: int

    def __len__(self) -> int: ...


def cache_counts(cache: CountedCache) -> dict[str, int]:
    """What a worker reports of its prepare cache (heartbeat stats, /metrics): lookups that
    found an image and those that did not, entries, bytes kept, and the bound in bytes."""
    return {
        "hits": cache.hits,
        "misses": cache.misses,
        "entries": len(cache),
        "bytes": cache.bytes,
        "max_bytes": cache.max_bytes,
    }


class PrepareCache:
    """Least-recently-used prepared images, at most max_bytes of them; safe across threads."""

    def __init__(self, max_bytes: int, *, max_entries: int | None = None) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Hashable, ImagePixels] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> ImagePixels | None:
        """The image stored under key (now the most recently used), or None."""
        with self._lock:
            tiles = self._entries.get(key)
            if tiles is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return tiles

    def put(self, key: Hashable, tiles: ImagePixels) -> None:
        """Keep an image under key, dropping the least recently used entries to stay in bounds."""
        size = image_nbytes(tiles)
        if size > self.max_bytes:
            return
        with self._lock:
            previous = self._entries.pop(key, None)
            if previous is not None:
                self.bytes -= image_nbytes(previous)
            self._entries[key] = tiles
            self.bytes += size
            limit = self.max_entries
            while self.bytes > self.max_bytes or (limit is not None and len(self._entries) > limit):
                _, dropped = self._entries.popitem(last=False)
                self.bytes -= image_nbytes(dropped)

    def discard(self, key: Hashable) -> None:
        """Drop one entry, if it is there."""
        with self._lock:
            dropped = self._entries.pop(key, None)
            if dropped is not None:
                self.bytes -= image_nbytes(dropped)

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._entries.clear()
            self.bytes = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
