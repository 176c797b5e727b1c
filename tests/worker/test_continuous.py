"""Continuous batching on the real engine: jobs join and leave mid-decode with unchanged answers.

Every job's Generation is compared with the same job run alone through the static engine
(`engine.generate([job])`), whatever it was batched with and whenever it joined.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future

import torch

from core.config import ModelSpec
from core.specs import GenerationParams
from tests.support.worker import vqa
from worker.admission import PrefillCost, footprint_tokens
from worker.batcher import Batcher, OutOfMemory
from worker.continuous import ContinuousBatcher
from worker.decode import Prefill, RunningBatch, prefill_cost
from worker.engine import Generation, InternVLEngine, PreparedJob
from worker.schedulers import make_batcher

MIXED = [
    GenerationParams(max_new_tokens=4),
    GenerationParams(max_new_tokens=30),
    GenerationParams(max_new_tokens=12, repetition_penalty=1.5),
    GenerationParams(max_new_tokens=9, min_new_tokens=9),
    GenerationParams(max_new_tokens=20, do_sample=True, temperature=0.8, top_p=0.9, seed=5),
    GenerationParams(max_new_tokens=6, do_sample=True, temperature=1.5, seed=11),
]


def batcher(engine: InternVLEngine, **options: float) -> ContinuousBatcher:
    settings = {"max_batch_size": 8, "max_wait_ms": 0, "max_batch_tiles": 1000, **options}
    return ContinuousBatcher(engine, **settings)


def alone(engine: InternVLEngine, job: PreparedJob) -> Generation:
    return engine.generate([job])[0]


def at_step(b: Batcher, step: int, action: Callable[[], None]) -> threading.Event:
    """Run action on the model thread right after the given step (1-based)."""
    done = threading.Event()

    def on_step(rows: int, elapsed_s: float, prefilled: bool) -> None:
        if b.stats.steps == step and not done.is_set():
            action()
            done.set()

    b.on_step = on_step
    return done


def test_mixed_lengths_and_settings_match_each_job_alone(engine: InternVLEngine) -> None:
    jobs = [vqa(engine, i, params, f"m{i}") for i, params in enumerate(MIXED)]
    b = batcher(engine)
    futures = [b.submit(job) for job in jobs]
    b.start()
    results = [future.result(timeout=120) for future in futures]
    b.stop()
    for job, result in zip(jobs, results, strict=True):
        assert result == alone(engine, job)
    assert [r.completion_tokens for r in results[:2]] == [4, 30]
    stats = b.stats.as_dict()
    assert stats["jobs"] == 6 and stats["batches"] == 1  # one prefill group, rows left early
    # 30 decode steps for the longest row; far fewer rows than 6 on most of them
    assert stats["steps"] >= 29 and stats["mean_occupancy"] < 4


def test_jobs_that_join_mid_decode_match_alone_and_leave_before_the_long_one(
    engine: InternVLEngine,
) -> None:
    long_job = vqa(engine, 0, GenerationParams(max_new_tokens=30), "long")
    late = [vqa(engine, i, params, f"late{i}") for i, params in enumerate(MIXED, start=1)]
    b = batcher(engine)
    late_futures: list[Future[Generation]] = []
    joined = at_step(b, 3, lambda: late_futures.extend(b.submit(job) for job in late))
    first = b.submit(long_job)
    b.start()
    result = first.result(timeout=120)
    assert joined.is_set()
    late_done = [future.done() for future in late_futures]
    late_results = [future.result(timeout=120) for future in late_futures]
    b.stop()
    assert result == alone(engine, long_job)
    for job, late_result in zip(late, late_results, strict=True):
        assert late_result == alone(engine, job)
    # the shorter ones joined the running batch and left it before the long job ended
    short = [
        done for job, done in zip(late, late_done, strict=True) if job.params.max_new_tokens < 25
    ]
    assert len(short) == 5 and all(short)
    assert b.stats.steps < 40  # after the long job, the late ones would take 30 more steps


def test_a_long_prompt_is_prefilled_in_chunks_while_others_decode(engine: InternVLEngine) -> None:
    short = vqa(engine, 1, GenerationParams(max_new_tokens=30), "short")
    photo = vqa(engine, 0, GenerationParams(max_new_tokens=10), "photo")  # 640x480: 13 tiles
    assert photo.prompt_tokens > 200
    b = batcher(engine, prefill_tokens_per_step=64)
    photo_future: list[Future[Generation]] = []
    at_step(b, 3, lambda: photo_future.append(b.submit(photo)))
    first = b.submit(short)
    b.start()
    assert first.result(timeout=120) == alone(engine, short)
    assert photo_future[0].result(timeout=120) == alone(engine, photo)
    b.stop()
    # the first group prefilled whole (nobody decoding), the photo in 64-token chunks
    assert b.stats.prefill_steps >= 1 + photo.prompt_tokens // 64


def prefill_steps_with_late_arrivals(
    engine: InternVLEngine, late: int, *, running: int = 4, **options: float
) -> list[int]:
    """The steps that prefilled when `late` jobs arrive after step 3 of a batch of `running`."""
    first = [vqa(engine, i, GenerationParams(max_new_tokens=30), f"r{i}") for i in range(running)]
    then = [vqa(engine, i, GenerationParams(max_new_tokens=4), f"l{i}") for i in range(late)]
    b = batcher(
        engine, **{"max_wait_ms": 60_000, "gap_ms": 0, "join_waiting_ratio": 1.2, **options}
    )
    prefilled: list[int] = []
    late_futures: list[Future[Generation]] = []

    def on_step(rows: int, elapsed_s: float, prefill: bool) -> None:
        if prefill:
            prefilled.append(b.stats.steps)
        if b.stats.steps == 3:
            late_futures.extend(b.submit(job) for job in then)

    b.on_step = on_step
    futures = [b.submit(job) for job in first]
    b.start()
    results = [future.result(timeout=120) for future in futures]  # after step 3: all arrived
    results += [future.result(timeout=120) for future in late_futures]
    b.stop()
    for job, result in zip(first + then, results, strict=True):
        assert result == alone(engine, job)  # holding a job back never changes its answer
    return prefilled


def test_a_lone_arrival_waits_for_company_then_joins_after_join_max_wait_steps(
    engine: InternVLEngine,
) -> None:
    # 4 rows decode: 1.2 x 4 = 4 waiting jobs would join at once; one waits 5 steps
    held = prefill_steps_with_late_arrivals(engine, 1, join_max_wait_steps=5)
    assert held == [1, 3 + 5 + 1]
    # enough company joins at the next step
    assert prefill_steps_with_late_arrivals(engine, 4, join_max_wait_steps=5) == [1, 4]
    # a ratio of 0 joins every arrival at the next step
    assert prefill_steps_with_late_arrivals(engine, 1, join_waiting_ratio=0) == [1, 4]
    # and the batching wait bounds the hold in time
    assert prefill_steps_with_late_arrivals(engine, 1, max_wait_ms=0) == [1, 4]


def test_a_canceled_row_leaves_mid_decode_and_the_others_go_on(engine: InternVLEngine) -> None:
    jobs = [vqa(engine, i, GenerationParams(max_new_tokens=24), f"c{i}") for i in range(3)]
    b = batcher(engine)
    at_step(b, 6, jobs[1].cancel.set)
    futures = [b.submit(job) for job in jobs]
    b.start()
    results = [future.result(timeout=120) for future in futures]
    b.stop()
    assert results[1].finish_reason == "canceled"
    assert 0 < results[1].completion_tokens < 10
    for index in (0, 2):
        assert results[index] == alone(engine, jobs[index])
    assert b.stats.last_batch_size == 2  # the canceled row's cache left with it


def test_a_job_canceled_while_it_waits_never_runs(engine: InternVLEngine) -> None:
    b = batcher(engine)
    job = vqa(engine, 1, GenerationParams(max_new_tokens=8), "gone")
    future = b.submit(job)
    future.cancel()
    kept = vqa(engine, 2, GenerationParams(max_new_tokens=8), "kept")
    other = b.submit(kept)
    b.start()
    assert other.result(timeout=120) == alone(engine, kept)
    b.stop()
    assert future.cancelled() and b.stats.jobs == 1


def test_a_sampled_job_reproduces_with_its_seed_whenever_it_joins(engine: InternVLEngine) -> None:
    params = GenerationParams(max_new_tokens=16, do_sample=True, temperature=1.5, seed=9)
    runs = []
    for join_at in (0, 3, 9):
        sampled = vqa(engine, 2, params, "sampled")
        b = batcher(engine)
        company = [b.submit(vqa(engine, i, MIXED[i], f"o{i}")) for i in (1, 3, 4)]
        if join_at:
            got: list[Future[Generation]] = []
            at_step(b, join_at, lambda b=b, job=sampled, got=got: got.append(b.submit(job)))
        else:
            got = [b.submit(sampled)]
        b.start()
        for future in company:
            future.result(timeout=120)
        runs.append(got[0].result(timeout=120))
        b.stop()
    assert runs[0] == runs[1] == runs[2] == alone(engine, vqa(engine, 2, params, "sampled"))
    assert runs[0].seed == 9


def test_admission_keeps_the_cache_within_its_token_budget(engine: InternVLEngine) -> None:
    jobs = [vqa(engine, i, GenerationParams(max_new_tokens=10), f"k{i}") for i in range(5)]
    budget = footprint_tokens(jobs[:2])  # room for two of these rows at most
    b = batcher(engine, kv_budget=budget, cost=PrefillCost())  # the cache alone counts here
    rows_seen: list[int] = []
    b.on_step = lambda rows, elapsed_s, prefilled: rows_seen.append(rows)
    futures = [b.submit(job) for job in jobs]
    b.start()
    results = [future.result(timeout=120) for future in futures]
    b.stop()
    for job, result in zip(jobs, results, strict=True):
        assert result == alone(engine, job)
    assert max(rows_seen) <= 2 and 2 in rows_seen


def rows_per_step(engine: InternVLEngine, jobs: list[PreparedJob], budget: int) -> list[int]:
    b = batcher(engine, kv_budget=budget)
    rows_seen: list[int] = []
    b.on_step = lambda rows, elapsed_s, prefilled: rows_seen.append(rows)
    futures = [b.submit(job) for job in jobs]
    b.start()
    for job, future in zip(jobs, futures, strict=True):
        assert future.result(timeout=120) == alone(engine, job)
    b.stop()
    return rows_seen


def test_admission_counts_the_prefill_activations_beside_the_cache(
    engine: InternVLEngine,
) -> None:
    jobs = [vqa(engine, 1, GenerationParams(max_new_tokens=10), f"a{i}") for i in range(3)]
    cost = prefill_cost(engine)
    assert cost.chunk_per_token > 0 and cost.per_tile > 0 and cost.encoder_per_tile > 0
    # two rows of cache, and the activations of one job prefilled beside a running row
    needed = footprint_tokens(jobs[:2]) + cost.tokens(jobs[:1], 1024)
    assert max(rows_per_step(engine, jobs, needed)) == 2
    assert max(rows_per_step(engine, jobs, needed - 1)) == 1  # the cache alone would fit


class FullDevice(ContinuousBatcher):
    """The real steps, refusing more rows (or tiles) than a small GPU would hold."""

    max_rows = 99
    max_tiles = 999

    def _prefill_chunk(self, prefill: Prefill, columns: int) -> torch.Tensor | None:
        if sum(job.tiles for job in prefill.jobs) > self.max_tiles:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super()._prefill_chunk(prefill, columns)

    def _decode_step(self, batch: RunningBatch) -> torch.Tensor:
        if batch.rows > self.max_rows:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super()._decode_step(batch)


def run_full(engine: InternVLEngine, jobs: list[PreparedJob], **limits: object) -> FullDevice:
    # The cache alone counts: the budget halves by rows, as the assertions below count them.
    b = FullDevice(
        engine, max_batch_size=8, max_wait_ms=0, max_batch_tiles=1000, cost=PrefillCost()
    )
    for name, value in limits.items():
        setattr(b, name, value)
    b.futures = [b.submit(job) for job in jobs]  # type: ignore[attr-defined]
    b.start()
    for future in b.futures:  # type: ignore[attr-defined]
        future.exception(timeout=120)
    b.stop()
    return b


def test_out_of_memory_in_a_step_evicts_and_every_job_still_succeeds(
    engine: InternVLEngine,
) -> None:
    jobs = [vqa(engine, i, GenerationParams(max_new_tokens=8 + i), f"o{i}") for i in range(6)]
    b = run_full(engine, jobs, max_rows=2)
    for job, future in zip(jobs, b.futures, strict=True):  # type: ignore[attr-defined]
        assert future.result() == alone(engine, job)
    assert b.stats.oom_splits >= 2  # 6 rows -> budget for 3 -> budget for 1-2
    assert b.stats.jobs == 6


def test_a_job_that_does_not_fit_alone_fails_and_the_others_succeed(
    engine: InternVLEngine,
) -> None:
    small = [vqa(engine, i, GenerationParams(max_new_tokens=6), f"s{i}") for i in (1, 2, 4)]
    huge = vqa(engine, 0, GenerationParams(max_new_tokens=6), "huge")  # 13 tiles
    b = run_full(engine, [small[0], huge, small[1], small[2]], max_tiles=12)
    futures = b.futures  # type: ignore[attr-defined]
    error = futures[1].exception()
    assert isinstance(error, OutOfMemory) and "huge" in error.detail
    for job, future in zip(small, [futures[0], futures[2], futures[3]], strict=True):
        assert future.result() == alone(engine, job)


def test_one_bad_job_never_fails_its_batch_mates(engine: InternVLEngine) -> None:
    jobs = [vqa(engine, i, GenerationParams(max_new_tokens=6), f"j{i}") for i in range(4)]
    jobs[2].input_ids[-1] = engine.model.config.get_text_config().vocab_size + 7  # breaks it
    b = run_full(engine, jobs)
    futures = b.futures  # type: ignore[attr-defined]
    assert isinstance(futures[2].exception(), IndexError)
    for index in (0, 1, 3):
        assert futures[index].result() == alone(engine, jobs[index])


def test_beam_search_keeps_the_static_path(engine: InternVLEngine) -> None:
    beams = vqa(engine, 3, GenerationParams(max_new_tokens=8, num_beams=2), "beams")
    greedy = vqa(engine, 4, GenerationParams(max_new_tokens=12), "greedy")
    b = batcher(engine)
    futures = [b.submit(greedy), b.submit(beams)]
    b.start()
    assert futures[0].result(timeout=120) == alone(engine, greedy)
    assert futures[1].result(timeout=120) == alone(engine, beams)
    b.stop()


def test_leaving_rows_free_their_cache(engine: InternVLEngine) -> None:
    short = vqa(engine, 1, GenerationParams(max_new_tokens=3), "a")
    wide = vqa(engine, 0, GenerationParams(max_new_tokens=3), "b")  # the longer prompt
    batch = RunningBatch(engine)
    for job in (short, wide):
        prefill = Prefill(engine, [job])
        logits = prefill.run_chunk(prefill.width)
        assert logits is not None
        batch.join(prefill, logits.argmax(-1))
    assert (batch.rows, batch.width) == (2, wide.prompt_tokens)
    batch.step()
    batch.keep([0])  # the wide row leaves: the padding only it needed goes with it
    assert (batch.rows, batch.width) == (1, short.prompt_tokens + 1)
    assert batch.cache is not None
    assert batch.cache.layers[0].keys.shape[0] == 1
    assert batch.cache.layers[0].keys.shape[2] == short.prompt_tokens + 1
    batch.keep([])
    assert batch.cache is None and batch.rows == 0


def test_the_registry_entry_chooses_the_scheduler(engine: InternVLEngine) -> None:
    spec = engine.spec
    assert isinstance(make_batcher(engine, spec), ContinuousBatcher)
    static = ModelSpec(**{**spec.model_dump(), "scheduler": "static"})
    chosen = make_batcher(engine, static)
    assert type(chosen) is Batcher and chosen.stats.as_dict()["scheduler"] == "static"
    fifo = ModelSpec(**{**spec.model_dump(), "join_order": "arrival", "join_overtake_max_ms": 5})
    continuous = make_batcher(engine, fifo)
    assert isinstance(continuous, ContinuousBatcher)
    assert not continuous.admission.shortest_first and continuous.admission.overtake_max_s == 0.005
    assert make_batcher(engine, spec).admission.shortest_first  # type: ignore[attr-defined]
    recovery = {"kv_budget_recover_steps": 7, "kv_budget_recover_factor": 1.5}
    recovering = make_batcher(engine, ModelSpec(**{**spec.model_dump(), **recovery}))
    assert isinstance(recovering, ContinuousBatcher)
    policy = recovering.admission
    assert (policy.recover_after_steps, policy.recover_factor) == (7, 1.5)


def test_the_batch_limits_are_the_admission_policys(engine: InternVLEngine) -> None:
    b = batcher(engine, max_batch_size=8, max_batch_tiles=100)
    assert (b.admission.max_batch_size, b.admission.max_batch_tiles) == (8, 100)
    b.max_batch_size, b.max_batch_tiles = 1, 10  # as a shutdown test narrows a running worker
    assert (b.admission.max_batch_size, b.admission.max_batch_tiles) == (1, 10)


def test_generating_since_spans_the_steps_of_a_running_batch(engine: InternVLEngine) -> None:
    b = batcher(engine)
    seen: list[float | None] = []
    done = at_step(b, 5, lambda: seen.append(b.stats.generating_since))
    first = b.submit(vqa(engine, 0, GenerationParams(max_new_tokens=12), "g0"))
    b.start()
    first.result(timeout=120)
    assert done.is_set() and seen[0] is not None
    b.stop()
    assert b.stats.generating_since is None  # the batch ran dry: the probe says idle


def test_the_budget_lowered_by_out_of_memory_grows_back_after_clean_steps(
    engine: InternVLEngine,
) -> None:
    jobs = [vqa(engine, i, GenerationParams(max_new_tokens=12), f"r{i}") for i in range(1, 5)]
    b = FullDevice(engine, max_batch_size=8, max_wait_ms=0, max_batch_tiles=1000, recover_steps=3)
    b.max_rows = 2
    budgets: list[int] = []
    b.on_step = lambda rows, elapsed_s, prefilled: budgets.append(b.admission.kv_budget)
    futures = [b.submit(job) for job in jobs]
    b.start()
    for job, future in zip(jobs, futures, strict=True):
        assert future.result(timeout=120) == alone(engine, job)
    b.stop()
    lowest = budgets.index(min(budgets))
    assert b.stats.oom_splits >= 1 and min(budgets) < b.admission.computed_budget
    assert max(budgets[lowest:]) > min(budgets)  # it grew back ...
    assert max(budgets) <= b.admission.computed_budget  # ... never past the computed budget


def finishing_order(engine: InternVLEngine, **options: object) -> list[str]:
    """Jobs of 30, 12 and 4 new tokens, queued together, through a batch of one row."""
    jobs = [
        vqa(engine, i, GenerationParams(max_new_tokens=n)) for i, n in ((1, 30), (2, 12), (3, 4))
    ]
    b = batcher(engine, max_batch_size=1, **options)  # type: ignore[arg-type]
    finished: list[str] = []
    futures = [b.submit(job) for job in jobs]
    for job, future in zip(jobs, futures, strict=True):
        future.add_done_callback(lambda _, name=job.job_id: finished.append(name))
    b.start()
    for job, future in zip(jobs, futures, strict=True):
        assert future.result(timeout=120) == alone(engine, job)
    b.stop()
    return finished


def test_waiting_jobs_join_shortest_first_unless_told_arrival_order(engine: InternVLEngine) -> None:
    assert finishing_order(engine) == ["job-3", "job-2", "job-1"]
    assert finishing_order(engine, shortest_first=False) == ["job-1", "job-2", "job-3"]
    # a job overtaken for overtake_max_ms goes first: at 0 ms, every job has been
    assert finishing_order(engine, overtake_max_ms=0) == ["job-1", "job-2", "job-3"]
