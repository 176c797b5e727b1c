"""A GPU's asynchronous copies, played on a CPU for the stager's tests (worker.staging).

On a GPU a copy issued on the side stream lands later, reading its source when the copy
engine gets to it: a host buffer written again before then would send the new bytes. Here a
copy's destination is filled only when its event completes, from its source as it is then,
so a buffer reused too early shows up as wrong pixels. An event completes when the compute
stream waits on it, when a test calls `settle`, or by itself after `lag` queries (time passing).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from worker.copies import Ready


class Event:
    """The copies issued before it; they land when it completes."""

    def __init__(self, copies: list[tuple[torch.Tensor, torch.Tensor]], lag: int | None) -> None:
        self.copies = copies
        self.lag = lag  # queries answered "not yet" before it completes; None: never by itself
        self.done = False

    def query(self) -> bool:
        if not self.done and self.lag is not None:
            if self.lag <= 0:
                self.complete()
            self.lag -= 1
        return self.done

    def complete(self) -> None:
        if self.done:
            return
        with torch.inference_mode():  # the stager makes its tensors in inference mode
            for destination, source in self.copies:
                destination.copy_(source)
        self.done = True


class DeferredCopies:
    """worker.copies.Copies whose copies land late, as on a GPU."""

    def __init__(self, lag: int | None = 1) -> None:
        self.lag = lag
        self.events: list[Event] = []
        self.copies_issued = 0
        self.buffers_made = 0
        self.waited: list[Ready] = []
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []

    def host_buffer(self, nbytes: int) -> torch.Tensor:
        self.buffers_made += 1
        return torch.full((nbytes,), 0xEE, dtype=torch.uint8)

    def to_device(self, host: torch.Tensor) -> torch.Tensor:
        self.copies_issued += 1
        destination = torch.zeros_like(host, memory_format=torch.contiguous_format)
        self._pending.append((destination, host))
        return destination

    def record(self) -> Ready:
        event = Event(self._pending, self.lag)
        self._pending = []
        self.events.append(event)
        return event

    def wait(self, ready: Ready, tensors: Sequence[torch.Tensor]) -> None:
        assert isinstance(ready, Event)
        ready.complete()  # the compute stream runs on only once the copies have landed
        self.waited.append(ready)

    def settle(self) -> None:
        """Every copy issued so far lands (the device has caught up)."""
        for event in self.events:
            event.complete()
