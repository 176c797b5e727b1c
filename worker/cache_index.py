"""The worker's record of what its model process keeps in its prepare cache.

With a model process (worker.model_client), the pixels of prepared images are cached where
they are needed, in the model's process, but the decisions are taken here, in the worker's
process, which knows which images a job needs before it prepares them: which keys are kept,
their sizes, the least recently used order. The model process stores and evicts exactly as it
is told, in order, on the one connection jobs are sent on, so a job that names a cached key
always finds it there: a key a job is about to name is pinned (never evicted) from the moment
the job looks it up until its message is sent.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass


@dataclass
class _Entry:
    nbytes: int
    tiles: int
    pins: int = 0


class CacheIndex:
    """Keys, sizes and recency of the model process's cached images; at most max_bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def pin(self, keys: list[Hashable]) -> list[int | None]:
        """Tiles of each key cached (None if not), those now pinned and most recently used."""
        found: list[int | None] = []
        with self._lock:
            for key in keys:
                entry = self._entries.get(key)
                if entry is None:
                    self.misses += 1
                    found.append(None)
                    continue
                self.hits += 1
                entry.pins += 1
                self._entries.move_to_end(key)
                found.append(entry.tiles)
        return found

    def unpin(self, keys: list[Hashable]) -> None:
        """Keys `pin` found are free to be evicted again."""
        with self._lock:
            for key in keys:
                entry = self._entries.get(key)
                if entry is not None and entry.pins:
                    entry.pins -= 1

    def add(self, key: Hashable, nbytes: int, tiles: int) -> tuple[bool, list[Hashable]]:
        """Record a new image: (whether it is kept, the keys evicted to make room for it)."""
        if nbytes > self.max_bytes:
            return False, []
        evicted: list[Hashable] = []
        with self._lock:
            previous = self._entries.pop(key, None)
            if previous is not None:
                self.bytes -= previous.nbytes
            self._entries[key] = _Entry(nbytes, tiles, previous.pins if previous else 0)
            self.bytes += nbytes
            for old in list(self._entries):
                if self.bytes <= self.max_bytes:
                    break
                entry = self._entries[old]
                if old == key or entry.pins:
                    continue  # in use by a job on its way: evicted later
                del self._entries[old]
                self.bytes -= entry.nbytes
                evicted.append(old)
        return True, evicted

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
