"""Continuous batching's admission policy on its own: groups, limits and when a group joins."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from core.specs import GenerationParams
from worker.admission import Admission, footprint_tokens
from worker.engine import PreparedJob


def job(name: str, prompt: int = 10, new: int = 10, tiles: int = 1) -> PreparedJob:
    ids = torch.zeros(prompt, dtype=torch.long)
    return PreparedJob(name, ids, [], [tiles], GenerationParams(max_new_tokens=new))


@dataclass
class Waiting:
    job: PreparedJob


def policy(**options: float) -> Admission:
    limits = {"max_batch_size": 8, "max_batch_tiles": 100, "prefill_tokens_per_step": 1000}
    limits |= {"kv_budget": 10_000, "join_waiting_ratio": 1.2}
    return Admission(**{**limits, **options})  # type: ignore[arg-type]


def test_footprint_is_rows_times_the_longest_possible_row() -> None:
    assert footprint_tokens([]) == 0
    assert footprint_tokens([job("a", 10, 5), job("b", 30, 20)]) == 2 * 50


def test_a_group_is_a_head_of_the_queue_within_every_limit() -> None:
    queue = [Waiting(job(f"j{i}")) for i in range(10)]
    assert len(policy().group(queue, [])) == 8  # max_batch_size
    assert len(policy().group(queue, [job("r1"), job("r2")])) == 6  # rows already running
    tiles = [Waiting(job(f"t{i}", tiles=40)) for i in range(3)]
    assert len(policy().group(tiles, [])) == 2  # max_batch_tiles per group
    assert len(policy(kv_budget=3 * 20).group(queue, [])) == 3  # rows x longest row
    # a group joining a decoding batch stays within one step's prefill tokens
    assert len(policy(prefill_tokens_per_step=25).group(queue, [job("r")])) == 2


def test_a_job_that_does_not_fit_is_not_overtaken_and_alone_it_always_fits() -> None:
    big, small = Waiting(job("big", prompt=500)), Waiting(job("small"))
    admission = policy(kv_budget=100)
    assert [w.job.job_id for w in admission.group([Waiting(job("a")), big, small], [])] == ["a"]
    assert [w.job.job_id for w in admission.group([big, small], [])] == ["big"]
    assert admission.group([big, small], [job("r")]) == []
    admission.alone.add("small")  # ran out of memory beside others: waits for an empty batch
    assert admission.group([small], [job("r")]) == []
    assert [w.job.job_id for w in admission.group([small, Waiting(job("b"))], [])] == ["small"]


@pytest.mark.parametrize(
    ("group", "rows", "joins"),
    [
        (1, 1, True),  # 1.2 x 1 row: one arrival is company enough
        (1, 2, False),
        (2, 2, True),
        (2, 3, False),  # 1.2 x 3 rows: 3 waiting
        (3, 3, True),
        (2, 5, False),
        (3, 5, True),  # 3 waiting fill the 3 free rows of 8
        (1, 0, True),
    ],
)
def test_a_group_joins_a_busy_batch_once_it_is_worth_a_prefill_step(
    group: int, rows: int, joins: bool
) -> None:
    assert policy().join_now(group, group, rows, waited_s=0.0, max_wait_s=1.0) is joins


def test_a_group_cut_short_by_a_limit_joins_at_once() -> None:
    # 8 rows free, 2 of 5 waiting fit the step's prefill budget: waiting cannot grow the group
    assert policy().join_now(2, 5, 4, waited_s=0.0, max_wait_s=1.0)
    assert not policy().join_now(2, 2, 4, waited_s=0.0, max_wait_s=1.0)


def test_a_held_group_joins_after_join_max_wait_steps_or_the_batching_wait() -> None:
    admission = policy(join_max_wait_steps=3)
    held = [admission.join_now(1, 1, 4, waited_s=0.0, max_wait_s=1.0) for _ in range(4)]
    assert held == [False, False, False, True]
    assert admission.held_steps == 0  # a join starts the count again
    assert admission.join_now(1, 1, 4, waited_s=1.0, max_wait_s=1.0)
    assert policy(join_waiting_ratio=0).join_now(1, 1, 7, waited_s=0.0, max_wait_s=1.0)


def test_out_of_memory_halves_the_budget_to_what_was_tried() -> None:
    admission = policy()
    assert admission.out_of_memory([job("r")], [job("a"), job("b")]) == 3 * 20 // 2
    assert admission.kv_budget == 30
