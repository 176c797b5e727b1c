"""The batcher on the real engine: grouping, budgets, waiting, OOM splitting, failure isolation.

A GPU's out-of-memory cannot happen on this CPU, so a wrapper around the real generate raises
torch.OutOfMemoryError whenever a batch is larger than a given number of jobs or tiles.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future

import pytest
import torch

from core.specs import GenerationParams
from tests.support.worker import vqa
from worker.batcher import Batcher, OutOfMemory
from worker.engine import Generation, InternVLEngine, PreparedJob


class Device:
    """The real generate, refusing batches above a size or tile count like a full GPU would."""

    def __init__(self, engine: InternVLEngine, *, max_jobs: int = 99, max_tiles: int = 999):
        self.engine = engine
        self.max_jobs = max_jobs
        self.max_tiles = max_tiles
        self.calls: list[list[str]] = []
        self.poisoned: set[str] = set()

    def generate(self, jobs: Sequence[PreparedJob]) -> list[Generation]:
        self.calls.append([job.job_id for job in jobs])
        if len(jobs) > self.max_jobs or sum(job.tiles for job in jobs) > self.max_tiles:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if self.poisoned & {job.job_id for job in jobs}:
            raise ValueError("this job's inputs break the model")
        return self.engine.generate(jobs)


def run_all(
    device: Device, jobs: list[PreparedJob], **options: int
) -> tuple[list[Future[Generation]], Batcher]:
    """Submit every job before the model thread starts, then let it run them all."""
    settings = {"max_batch_size": 8, "max_wait_ms": 0, "max_batch_tiles": 1000, **options}
    batcher = Batcher(device.generate, **settings)
    futures = [batcher.submit(job) for job in jobs]
    batcher.start()
    for future in futures:
        future.exception(timeout=120)
    batcher.stop()
    return futures, batcher


def test_out_of_memory_splits_the_batch_and_every_job_still_succeeds(
    engine: InternVLEngine,
) -> None:
    jobs = [vqa(engine, i, GenerationParams(max_new_tokens=8), f"j{i}") for i in range(8)]
    device = Device(engine, max_jobs=2)
    futures, batcher = run_all(device, jobs)
    for job, future in zip(jobs, futures, strict=True):
        assert future.result() == engine.generate([job])[0]
    assert device.calls[0] == [f"j{i}" for i in range(8)]
    assert max(len(call) for call in device.calls[1:]) <= 4
    assert batcher.stats.oom_splits >= 3  # 8 -> 4+4 -> 2+2+2+2
    assert batcher.stats.jobs == 8


def test_a_job_that_does_not_fit_alone_fails_with_out_of_memory(engine: InternVLEngine) -> None:
    small = [vqa(engine, i, GenerationParams(max_new_tokens=6), f"s{i}") for i in (1, 2, 4)]
    huge = vqa(engine, 0, GenerationParams(max_new_tokens=6), "huge")  # 640x480: 13 tiles
    device = Device(engine, max_tiles=12)
    futures, _ = run_all(device, [small[0], huge, small[1], small[2]])
    error = futures[1].exception()
    assert isinstance(error, OutOfMemory) and error.code == "out_of_memory"
    assert "huge" in error.detail
    for job, future in zip(small, [futures[0], futures[2], futures[3]], strict=True):
        assert future.result() == engine.generate([job])[0]


def test_one_bad_job_never_fails_its_batch_mates(engine: InternVLEngine) -> None:
    jobs = [vqa(engine, i, GenerationParams(max_new_tokens=6), f"j{i}") for i in range(4)]
    device = Device(engine)
    device.poisoned = {"j2"}
    futures, _ = run_all(device, jobs)
    assert isinstance(futures[2].exception(), ValueError)
    for index in (0, 1, 3):
        assert futures[index].result() == engine.generate([jobs[index]])[0]


def test_only_jobs_that_can_share_a_generate_call_are_batched(engine: InternVLEngine) -> None:
    beams = GenerationParams(max_new_tokens=6, num_beams=2)
    other_beams = GenerationParams(max_new_tokens=6, num_beams=3)
    greedy = GenerationParams(max_new_tokens=6)
    sampled = GenerationParams(max_new_tokens=4, do_sample=True, seed=3)
    plan = [("b1", beams), ("g1", greedy), ("c1", other_beams), ("b2", beams), ("s1", sampled)]
    jobs = [vqa(engine, i, params, job_id) for i, (job_id, params) in enumerate(plan)]
    device = Device(engine)
    run_all(device, jobs)
    assert sorted(sorted(call) for call in device.calls) == [["b1", "b2"], ["c1"], ["g1", "s1"]]


def test_batches_respect_the_size_and_tile_budgets(engine: InternVLEngine) -> None:
    jobs = [vqa(engine, i, GenerationParams(max_new_tokens=4), f"j{i}") for i in range(12)]
    tiles = {job.job_id: job.tiles for job in jobs}
    device = Device(engine)
    run_all(device, jobs, max_batch_size=4, max_batch_tiles=30)
    assert sorted(job for call in device.calls for job in call) == sorted(tiles)
    for call in device.calls:
        assert len(call) <= 4
        assert len(call) == 1 or sum(tiles[job] for job in call) <= 30


def test_a_batch_waits_for_announced_jobs_that_are_still_being_prepared(
    engine: InternVLEngine,
) -> None:
    device = Device(engine)
    batcher = Batcher(
        device.generate,
        max_batch_size=4,
        max_wait_ms=30_000,
        max_batch_tiles=100,
        gap_ms=0,
    )
    batcher.start()
    coming = [batcher.announce(), batcher.announce()]
    first_job = vqa(engine, 1, GenerationParams(max_new_tokens=4), "a")
    first = batcher.submit(first_job, announcement=coming[0])

    def late_submit() -> None:
        time.sleep(0.3)  # still preparing when the first job arrived
        second = vqa(engine, 2, GenerationParams(max_new_tokens=4), "b")
        batcher.submit(second, announcement=coming[1]).result()

    thread = threading.Thread(target=late_submit)
    thread.start()
    first.result(timeout=60)
    thread.join()
    batcher.stop()
    assert device.calls == [["a", "b"]]


def test_a_withdrawn_job_no_longer_holds_the_batch_back(engine: InternVLEngine) -> None:
    device = Device(engine)
    batcher = Batcher(
        device.generate,
        max_batch_size=4,
        max_wait_ms=600_000,
        max_batch_tiles=100,
        gap_ms=0,
    )
    batcher.start()
    coming = [batcher.announce(), batcher.announce()]
    first_job = vqa(engine, 1, GenerationParams(max_new_tokens=4), "a")
    first = batcher.submit(first_job, announcement=coming[0])
    coming[1].withdraw()  # the other job's image could not be read
    coming[1].withdraw()  # withdrawing twice counts once
    assert first.result(timeout=60).completion_tokens == 4
    batcher.stop()
    assert device.calls == [["a"]]


def submit_every(batcher: Batcher, jobs: list[PreparedJob], interval_s: float) -> None:
    """Submit jobs one after the other, as a burst of clients would; wait for all."""
    futures = []
    for job in jobs:
        futures.append(batcher.submit(job))
        time.sleep(interval_s)
    for future in futures:
        future.result(timeout=120)


def test_jobs_arriving_closer_than_the_gap_fill_one_batch(engine: InternVLEngine) -> None:
    jobs = [vqa(engine, i, GenerationParams(max_new_tokens=3), f"j{i}") for i in range(4)]
    device = Device(engine)
    batcher = Batcher(
        device.generate, max_batch_size=8, max_wait_ms=60_000, max_batch_tiles=100, gap_ms=2000
    )
    batcher.start()
    submit_every(batcher, jobs, 0.05)
    late = vqa(engine, 5, GenerationParams(max_new_tokens=3), "late")
    batcher.submit(late).result(timeout=120)
    batcher.stop()
    assert device.calls == [["j0", "j1", "j2", "j3"], ["late"]]


def test_no_job_waits_longer_than_the_cap_for_a_batch_to_fill(engine: InternVLEngine) -> None:
    jobs = [vqa(engine, i, GenerationParams(max_new_tokens=3), f"j{i}") for i in range(30)]
    device = Device(engine)
    batcher = Batcher(
        device.generate, max_batch_size=64, max_wait_ms=200, max_batch_tiles=1000, gap_ms=60_000
    )
    batcher.start()
    submit_every(batcher, jobs, 0.05)  # 1.5 s of arrivals, never a quiet gap
    batcher.stop()
    assert len(device.calls) > 1  # the cap started batches before the burst was over
    assert sorted(job for call in device.calls for job in call) == sorted(j.job_id for j in jobs)


def test_stop_finishes_what_was_submitted(engine: InternVLEngine) -> None:
    device = Device(engine)
    batcher = Batcher(device.generate, max_batch_size=2, max_wait_ms=5, max_batch_tiles=100)
    batcher.start()
    futures = [batcher.submit(vqa(engine, i, GenerationParams(max_new_tokens=3))) for i in range(5)]
    batcher.stop(timeout_s=120)
    assert all(future.done() and future.exception() is None for future in futures)
    with pytest.raises(RuntimeError, match="stopping"):
        batcher.submit(vqa(engine, 0, GenerationParams(max_new_tokens=3)))


def test_the_model_threads_cpu_is_counted_and_travels_as_a_reading(
    engine: InternVLEngine,
) -> None:
    jobs = [vqa(engine, i, GenerationParams(max_new_tokens=4), f"c{i}") for i in range(2)]
    batcher = Batcher(engine.generate, max_batch_size=8, max_wait_ms=0, max_batch_tiles=1000)
    assert batcher.stats.loop_cpu_s() == 0.0  # not started
    futures = [batcher.submit(job) for job in jobs]
    before_start = time.thread_time()
    batcher.start()
    for future in futures:
        future.result(timeout=120)
    spent = batcher.stats.loop_cpu_s()
    # The generating ran on the model thread, not on this one.
    assert spent > 0.005 and time.thread_time() - before_start < spent
    copied = type(batcher.stats)(**batcher.stats.portable())
    assert copied.loop_clock is None and copied.loop_cpu_s() >= spent
    assert batcher.stats.as_dict()["loop_cpu_s"] >= round(spent, 3)
    batcher.stop()
