"""Continuous batching's admission policy on its own: groups, limits and when a group joins."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from core.specs import GenerationParams
from worker.admission import Admission, PrefillCost, footprint_tokens
from worker.engine import PreparedJob


def job(name: str, prompt: int = 10, new: int = 10, tiles: int = 1) -> PreparedJob:
    ids = torch.zeros(prompt, dtype=torch.long)
    return PreparedJob(name, ids, [], [tiles], GenerationParams(max_new_tokens=new))


@dataclass
class Waiting:
    job: PreparedJob
    arrived: float = 0.0


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


def test_a_lowered_budget_grows_back_gradually_up_to_the_computed_one() -> None:
    admission = policy(kv_budget=1000, recover_after_steps=3, recover_factor=1.5)
    assert not admission.clean_step()  # at the computed budget: nothing to recover
    admission.out_of_memory([], [job(f"j{i}") for i in range(10)])  # 10 rows x 20 -> 100
    grown = [admission.clean_step() for _ in range(6)]
    assert grown == [False, False, True, False, False, True]
    assert admission.kv_budget == 225  # 100 -> 150 -> 225
    for _ in range(30):
        admission.clean_step()
    assert admission.kv_budget == admission.computed_budget == 1000
    admission.out_of_memory([], [job("a", 1000, 1000)])  # a new failure starts the count again
    assert admission.kv_budget == 1000 and admission.clean_steps == 0


def test_shortest_jobs_join_first_until_a_job_has_been_overtaken_too_long() -> None:
    lengths = {"a": 128, "b": 8, "c": 32, "d": 8}
    queue = [
        Waiting(job(name, new=new), arrived=i) for i, (name, new) in enumerate(lengths.items())
    ]
    admission = policy(overtake_max_s=10.0)
    assert [w.job.job_id for w in admission.order(queue, now=5.0)] == ["b", "d", "c", "a"]
    # at 11 s "a" (arrived at 0) has waited 11 s and "b" 10 s: both go first, oldest first
    assert [w.job.job_id for w in admission.order(queue, now=11.0)] == ["a", "b", "d", "c"]
    assert admission.order(queue, now=5.0) != queue
    assert policy(shortest_first=False).order(queue, now=5.0) == queue


def test_the_prefill_cost_counts_columns_tiles_and_one_vision_chunk() -> None:
    cost = PrefillCost(
        held_per_token=0.5, chunk_per_token=2.0, per_tile=3.0, encoder_per_tile=100.0, chunk_tiles=2
    )
    jobs = [job("a", prompt=10, tiles=1), job("b", prompt=20, tiles=3)]
    # 2 rows x 20 padded columns x (0.5 held + 2.0 in the chunk) + 4 tiles x 3 + 2 x 100
    assert cost.tokens(jobs) == 100 + 12 + 200
    assert cost.tokens(jobs, columns=5) == 2 * (20 * 0.5 + 5 * 2.0) + 12 + 200
    assert cost.tokens([]) == 0


def test_a_group_must_fit_with_its_prefill_activations() -> None:
    cost = PrefillCost(chunk_per_token=1.0)
    queue = [Waiting(job(f"j{i}")) for i in range(4)]  # 10 prompt + 10 new tokens each
    # cache: 4 x 20 = 80; prefill of all four at once: 4 x 10 = 40 more
    assert len(policy(kv_budget=120, prefill_cost=cost).group(queue, [])) == 4
    assert len(policy(kv_budget=119, prefill_cost=cost).group(queue, [])) == 3
    # beside a running row a long prompt is prefilled in chunks of prefill_tokens_per_step
    long = [Waiting(job("long", prompt=100))]  # cache 2 rows x 110; 16 of 100 columns at once
    chunked = policy(kv_budget=220 + 16, prefill_cost=cost, prefill_tokens_per_step=16)
    assert len(chunked.group(long, [job("r")])) == 1
    chunked.kv_budget -= 1
    assert chunked.group(long, [job("r")]) == []


def test_a_group_beside_decoding_rows_is_prefilled_in_its_share_of_the_step_tokens() -> None:
    admission = policy(prefill_tokens_per_step=1000)
    assert admission.chunk_columns(4, decoding=True) == 250
    assert admission.chunk_columns(3000, decoding=True) == 1  # never less than one column
    assert admission.chunk_columns(4, decoding=False) is None  # nobody waits: all at once
