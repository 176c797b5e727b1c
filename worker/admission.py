"""Continuous batching's admission policy: which waiting jobs join the running batch, and when.

A group is taken from the head of the queue in arrival order (a job that does not fit stops
the group, so a large job is not overtaken forever) while it fits: `max_batch_size` rows,
`max_batch_tiles` tiles per group, `prefill_tokens_per_step` padded prompt tokens for a group
that joins a decoding batch, and the KV-cache token budget. Into a busy batch a group joins
only once it is worth a prefill step (`join_now`). Pure bookkeeping: no model, no locks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from worker.engine import PreparedJob


class Candidate(Protocol):
    """A waiting job as admission sees it."""

    @property
    def job(self) -> PreparedJob: ...


C = TypeVar("C", bound=Candidate)


def footprint_tokens(jobs: Sequence[PreparedJob]) -> int:
    """The most cache tokens these jobs can hold together: rows x the longest possible row."""
    if not jobs:
        return 0
    return len(jobs) * max(job.prompt_tokens + job.params.max_new_tokens for job in jobs)


@dataclass
class Admission:
    """The limits a joining group must respect, and the state the policy keeps."""

    max_batch_size: int
    max_batch_tiles: int
    prefill_tokens_per_step: int
    kv_budget: int
    join_waiting_ratio: float = 0.3
    join_max_wait_steps: int = 20
    held_steps: int = 0  # steps run while jobs waited to join, since the last join
    alone: set[str] = field(default_factory=set)  # jobs that ran out of memory beside others

    def group(self, waiting: Sequence[C], running: list[PreparedJob]) -> list[C]:
        """The longest head of `waiting` that may join `running` now."""
        chosen: list[C] = []
        for item in waiting:
            if len(running) + len(chosen) >= self.max_batch_size:
                break
            if not self.fits(item.job, [c.job for c in chosen], running):
                break  # first come, first served: a large job is not overtaken forever
            chosen.append(item)
            if item.job.job_id in self.alone:
                break
        return chosen

    def fits(self, job: PreparedJob, chosen: list[PreparedJob], running: list[PreparedJob]) -> bool:
        """Whether `job` may join the group `chosen` beside the `running` rows."""
        if not chosen and not running:
            return True  # alone, a job always gets its chance (an OOM then fails it)
        if job.job_id in self.alone:
            return False
        group = [*chosen, job]
        if chosen and sum(j.tiles for j in group) > self.max_batch_tiles:
            return False
        width = max(j.prompt_tokens for j in group)
        if running and chosen and len(group) * width > self.prefill_tokens_per_step:
            return False  # a group joining a decoding batch stays within one step's budget
        return footprint_tokens(running + group) <= self.kv_budget

    def join_now(
        self, group: int, waiting: int, rows: int, *, waited_s: float, max_wait_s: float
    ) -> bool:
        """Whether a group of `group` of the `waiting` jobs joins `rows` decoding rows now.

        Each join costs the running rows a prefill step (and a copy of the cache), so a lone
        arrival is held while a busy batch decodes: it joins once the waiting jobs number
        join_waiting_ratio x the running rows (or fill the free rows), after
        join_max_wait_steps held steps, or once the oldest has waited max_wait_s (the
        batching wait), whichever comes first. A group that a limit cut short of the waiting
        jobs joins at once: more company could not make it larger. Text Generation
        Inference's waiting_served_ratio and max_waiting_tokens are the same policy.
        """
        wanted = min(int(rows * self.join_waiting_ratio), self.max_batch_size - rows)
        now = (
            group >= wanted
            or group < waiting
            or self.held_steps >= self.join_max_wait_steps
            or waited_s >= max_wait_s
        )
        self.held_steps = 0 if now else self.held_steps + 1
        return now

    def out_of_memory(self, running: list[PreparedJob], jobs: list[PreparedJob]) -> int:
        """What did not fit sets a lower budget: half of it, so the retry is a split."""
        self.kv_budget = max(footprint_tokens(running + jobs) // 2, 1)
        return self.kv_budget
