"""Continuous batching's admission policy: which waiting jobs join the running batch, and when.

The waiting jobs are put in join order (`order`): shortest `max_new_tokens` first, except that
a job overtaken for `overtake_max_s` goes ahead of every job that has not (oldest first); or
plain arrival order. A group is the head of that order (a job that does not fit stops the group,
so a large job is not overtaken forever) while it fits: `max_batch_size` rows, `max_batch_tiles`
tiles per group, `prefill_tokens_per_step` padded prompt tokens for a group that joins a
decoding batch, and the KV-cache token budget, which must also hold the prefill's transient
activations (`PrefillCost`). Into a busy batch a group joins only once it is worth a prefill
step (`join_now`). After running out of memory the budget is halved, and it grows back after
clean steps (`clean_step`). Pure bookkeeping: no model, no locks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from worker.engine import PreparedJob


class Candidate(Protocol):
    """A waiting job as admission sees it."""

    @property
    def job(self) -> PreparedJob: ...

    @property
    def arrived(self) -> float: ...


C = TypeVar("C", bound=Candidate)


def footprint_tokens(jobs: Sequence[PreparedJob]) -> int:
    """The most cache tokens these jobs can hold together: rows x the longest possible row."""
    if not jobs:
        return 0
    return len(jobs) * max(job.prompt_tokens + job.params.max_new_tokens for job in jobs)


@dataclass(frozen=True)
class PrefillCost:
    """A prefill's transient activation memory, in KV-cache tokens (worker.decode computes it
    from the model's config): what a group needs beside the cache while it is prefilled."""

    held_per_token: float = 0.0  # prompt embeddings, kept for every padded column until done
    chunk_per_token: float = 0.0  # one decoder layer's activations, per column of a chunk
    per_tile: float = 0.0  # a tile's image features, kept until placed in the prompt
    encoder_per_tile: float = 0.0  # the vision tower's activations, per tile of one chunk
    chunk_tiles: int = 1  # tiles the vision tower encodes at once

    def tokens(self, jobs: Sequence[PreparedJob], columns: int | None = None) -> int:
        """Cache tokens the prefill of `jobs` takes on top, `columns` per chunk (None: all)."""
        if not jobs:
            return 0
        width = max(job.prompt_tokens for job in jobs)
        chunk = width if columns is None else min(width, max(columns, 1))
        tiles = sum(job.tiles for job in jobs)
        total = len(jobs) * (width * self.held_per_token + chunk * self.chunk_per_token)
        total += tiles * self.per_tile + min(tiles, self.chunk_tiles) * self.encoder_per_tile
        return math.ceil(total)


@dataclass
class Admission:
    """The limits a joining group must respect, and the state the policy keeps."""

    max_batch_size: int
    max_batch_tiles: int
    prefill_tokens_per_step: int
    kv_budget: int
    join_waiting_ratio: float = 0.3
    join_max_wait_steps: int = 20
    shortest_first: bool = True
    overtake_max_s: float = 30.0
    prefill_cost: PrefillCost = field(default_factory=PrefillCost)
    # After out of memory: clean steps before a lowered budget grows back a step, and by how
    # much, up to the computed budget (kv_budget_recover_steps and _factor in the registry).
    recover_after_steps: int = 200
    recover_factor: float = 1.25
    held_steps: int = 0  # steps run while jobs waited to join, since the last join
    clean_steps: int = 0  # steps since the budget was last lowered or raised
    alone: set[str] = field(default_factory=set)  # jobs that ran out of memory beside others
    computed_budget: int = field(init=False)  # the budget from free memory: the ceiling

    def __post_init__(self) -> None:
        self.computed_budget = self.kv_budget

    def order(self, waiting: Sequence[C], now: float) -> list[C]:
        """The waiting jobs in join order: shortest first, overtaken ones aged out in front.

        Shortest max_new_tokens first minimises the mean completion time and lets short jobs
        leave a full batch early instead of queueing behind long ones; a job overtaken for
        overtake_max_s goes first (by arrival), so a stream of short jobs cannot starve it.
        Equal lengths keep their arrival order (the sort is stable).
        """
        if not self.shortest_first:
            return list(waiting)
        aged = [item for item in waiting if now - item.arrived >= self.overtake_max_s]
        rest = [item for item in waiting if now - item.arrived < self.overtake_max_s]
        return aged + sorted(rest, key=lambda item: item.job.params.max_new_tokens)

    def group(self, waiting: Sequence[C], running: list[PreparedJob]) -> list[C]:
        """The longest head of `waiting` (in join order) that may join `running` now."""
        chosen: list[C] = []
        for item in waiting:
            if len(running) + len(chosen) >= self.max_batch_size:
                break
            if not self.fits(item.job, [c.job for c in chosen], running):
                break  # a job is not overtaken by others that fit only because they are smaller
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
        columns = self.chunk_columns(len(group), decoding=bool(running))
        needed = footprint_tokens(running + group) + self.prefill_cost.tokens(group, columns)
        return needed <= self.kv_budget

    def chunk_columns(self, rows: int, *, decoding: bool) -> int | None:
        """Columns one prefill step feeds a group of `rows` rows: while others decode, the
        group's share of prefill_tokens_per_step (its prompt then takes several steps, so the
        decoding rows do not wait for all of it); None when nothing decodes: all at once."""
        if not decoding:
            return None
        return max(self.prefill_tokens_per_step // rows, 1)

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
        self.clean_steps = 0
        return self.kv_budget

    def clean_step(self) -> bool:
        """A model step ran without running out of memory; True when the budget grew back.

        Memory that ran out may come back (another process on the device exits, a burst of
        long prompts has passed), so a lowered budget grows by recover_factor after every
        recover_after_steps clean steps, never above the budget computed from free memory.
        """
        if self.kv_budget >= self.computed_budget:
            return False
        self.clean_steps += 1
        if self.clean_steps < self.recover_after_steps:
            return False
        self.clean_steps = 0
        grown = max(int(self.kv_budget * self.recover_factor), self.kv_budget + 1)
        self.kv_budget = min(grown, self.computed_budget)
        return True
