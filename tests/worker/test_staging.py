"""Staging a group's pixels on the device ahead of its prefill (worker.staging, worker.copies).

The GPU's copies are played by tests/support/staging.DeferredCopies: a copy lands only when
its event completes, reading its source then, so a pinned buffer reused too early or a staged
copy served to the wrong job shows up as wrong pixels. The batcher tests run the real tiny
model and compare every job with the same job run alone without staging.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import pytest
import torch

from core.config import ModelSpec
from core.specs import GenerationParams
from tests.support.staging import DeferredCopies
from tests.support.worker import vqa
from tests.worker.test_continuous import MIXED, alone, at_step, batcher
from worker.batcher import Batcher
from worker.continuous import ContinuousBatcher
from worker.copies import buffer_bytes
from worker.device_tiles import ImagePixels, device_tiles, image_tile_count
from worker.engine import Generation, InternVLEngine, PreparedJob
from worker.preprocess import Picture
from worker.staging import Stager, job_bytes, make_stager

KIB = 1024
OnStep = Callable[[int, float, bool], None]


def tiles(seed: int, count: int = 2, size: int = 16) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)


def picture(seed: int, height: int = 40, width: int = 56, channels_last: bool = True) -> Picture:
    generator = torch.Generator().manual_seed(seed)
    shape = (height, width, 3) if channels_last else (3, height, width)
    pixels = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    return Picture(pixels.permute(2, 0, 1) if channels_last else pixels, 2, 1)


def job(name: str, *images: ImagePixels) -> PreparedJob:
    counts = [image_tile_count(image) for image in images]
    return PreparedJob(
        name, torch.zeros(4, dtype=torch.long), list(images), counts, GenerationParams()
    )


def sized(name: str, nbytes: int, seed: int = 0) -> PreparedJob:
    """A job of one image of about nbytes (whole 16-px tiles)."""
    return job(name, tiles(seed, count=max(nbytes // (3 * 16 * 16), 1)))


def assert_same_pixels(staged: PreparedJob, original: PreparedJob) -> None:
    assert staged.job_id == original.job_id and len(staged.pixels) == len(original.pixels)
    for mine, theirs in zip(staged.pixels, original.pixels, strict=True):
        if isinstance(theirs, Picture):
            assert isinstance(mine, Picture) and (mine.columns, mine.rows) == (2, 1)
            assert torch.equal(mine.pixels, theirs.pixels)
        else:
            assert isinstance(mine, torch.Tensor) and torch.equal(mine, theirs)
    size = 16
    mine_tiles = device_tiles(staged.pixels, device=torch.device("cpu"), tile_size=size)
    theirs_tiles = device_tiles(original.pixels, device=torch.device("cpu"), tile_size=size)
    assert torch.equal(mine_tiles, theirs_tiles)


def test_a_staged_job_reaches_its_prefill_with_its_pixels_in_one_copy() -> None:
    copies = DeferredCopies(lag=None)
    stager = Stager(copies, limit_bytes=1024 * KIB)
    original = job("a", tiles(1), picture(2), picture(3, channels_last=False))
    stager.stage([original])
    assert stager.staged_jobs() == [original] and copies.copies_issued == 1
    [taken] = stager.take([original])
    assert taken is not original and copies.waited == copies.events  # the compute stream waits
    assert_same_pixels(taken, original)
    assert (stager.stats.staged, stager.stats.used, stager.stats.pinned_copies) == (1, 1, 1)
    assert stager.staged_jobs() == [] and stager.staged_bytes == 0


def test_a_pinned_buffer_is_reused_only_once_its_copy_has_landed() -> None:
    copies = DeferredCopies(lag=None)  # copies land only when waited on or settled
    stager = Stager(copies, limit_bytes=1024 * KIB)
    a, b, c = sized("a", 40 * KIB, 1), sized("b", 40 * KIB, 2), sized("c", 40 * KIB, 3)
    stager.stage([a])
    assert_same_pixels(stager.take([a])[0], a)  # landed: its buffer is free again
    stager.stage([b])
    assert (copies.buffers_made, stager.buffers.reused) == (1, 1)
    stager.stage([b, c])  # b's copy is still in flight: c gets a buffer of its own
    assert copies.buffers_made == 2
    for taken, original in zip(stager.take([b, c]), [b, c], strict=True):
        assert_same_pixels(taken, original)


def test_a_job_that_finds_no_buffer_within_the_bound_is_sent_from_its_own_memory() -> None:
    copies = DeferredCopies(lag=None)
    stager = Stager(copies, limit_bytes=128 * KIB)  # two 64 KiB buffers
    a, b, c = sized("a", 40 * KIB, 1), sized("b", 40 * KIB, 2), sized("c", 40 * KIB, 3)
    stager.stage([a, b, c])  # 120 KiB staged; a's and b's buffers are in flight
    assert stager.staged_jobs() == [a, b, c] and copies.buffers_made == 2
    assert (stager.stats.pinned_copies, stager.stats.pageable_copies) == (2, 1)
    huge = job("huge", tiles(4, count=200), picture(5))  # larger than the whole bound
    taken = stager.take([a, b, c, huge])
    for staged, original in zip(taken, [a, b, c, huge], strict=True):
        assert_same_pixels(staged, original)
    assert stager.stats.pageable_copies == 2 and copies.buffers_made == 2
    assert stager.buffers.allocated_bytes <= 128 * KIB


def test_staging_stops_at_the_bound_in_join_order() -> None:
    copies = DeferredCopies()
    stager = Stager(copies, limit_bytes=128 * KIB)
    a, big, c = sized("a", 40 * KIB, 1), sized("big", 100 * KIB, 2), sized("c", 10 * KIB, 3)
    stager.stage([a, big, c])
    assert stager.staged_jobs() == [a]  # c would fit, but does not overtake big
    assert stager.staged_bytes == job_bytes(a) <= 128 * KIB
    taken = stager.take([a, big, c])
    assert (stager.stats.used, stager.stats.copied_at_prefill) == (1, 2)
    for staged, original in zip(taken, [a, big, c], strict=True):
        assert_same_pixels(staged, original)


def test_jobs_no_longer_expected_are_dropped_and_their_buffers_come_back() -> None:
    copies = DeferredCopies(lag=None)
    stager = Stager(copies, limit_bytes=1024 * KIB)
    a, b, c = sized("a", 40 * KIB, 1), sized("b", 40 * KIB, 2), sized("c", 40 * KIB, 3)
    stager.stage([a, b])
    stager.stage([b])  # a was canceled, or a shorter job took its place
    assert stager.staged_jobs() == [b] and stager.stats.dropped == 1
    assert stager.staged_bytes == job_bytes(b)
    copies.settle()
    stager.stage([b, c])  # c takes the buffer a's copy left
    assert (copies.buffers_made, stager.buffers.reused) == (2, 1)
    assert_same_pixels(stager.take([c])[0], c)
    assert stager.staged_jobs() == [] and stager.stats.dropped == 2  # b: not in that group
    copies.settle()
    stager.buffers.acquire(0)  # reclaims what landed
    assert stager.buffers.lent_bytes == 0
    assert stager.buffers.allocated_bytes == 2 * buffer_bytes(job_bytes(a))


def test_a_job_prepared_again_gets_its_own_pixels_not_the_staged_ones() -> None:
    stager = Stager(DeferredCopies(), limit_bytes=1024 * KIB)
    first, again = job("same", tiles(1)), job("same", tiles(2))
    stager.stage([first])
    [taken] = stager.take([again])
    assert_same_pixels(taken, again)
    assert (stager.stats.used, stager.stats.copied_at_prefill, stager.stats.dropped) == (0, 1, 1)


def test_a_job_without_images_passes_through_untouched() -> None:
    copies = DeferredCopies()
    stager = Stager(copies, limit_bytes=1024 * KIB)
    text = job("text")
    stager.stage([text])
    assert stager.take([text]) == [text] and copies.copies_issued == 0


def test_no_stager_on_a_cpu_or_when_turned_off() -> None:
    assert make_stager(torch.device("cpu"), 128) is None
    assert make_stager(torch.device("cuda"), 0) is None


def held_joins(engine: InternVLEngine, stager: Stager) -> ContinuousBatcher:
    """Options that hold late arrivals for two steps before they join: staged meanwhile."""
    b = batcher(
        engine,
        max_wait_ms=60_000,
        gap_ms=0,
        join_waiting_ratio=100.0,
        join_max_wait_steps=2,
        prefill_tokens_per_step=100_000,  # no limit cuts a group short (it would join at once)
    )
    b.stager = stager
    return b


@pytest.mark.parametrize("on_device", [False, True], ids=["tiles", "pictures"])
def test_outputs_with_staging_equal_those_without(
    engine: InternVLEngine, monkeypatch: pytest.MonkeyPatch, on_device: bool
) -> None:
    monkeypatch.setattr(engine, "resize_on_device", on_device)
    long_job = vqa(engine, 0, GenerationParams(max_new_tokens=30), "long")
    late = [vqa(engine, i, params, f"late{i}") for i, params in enumerate(MIXED, start=1)]
    copies = DeferredCopies(lag=1)
    stager = Stager(copies, limit_bytes=64 * 2**20)
    b = held_joins(engine, stager)
    late_futures: list[Future[Generation]] = []
    joined = at_step(b, 3, lambda: late_futures.extend(b.submit(job) for job in late))
    first = b.submit(long_job)
    b.start()
    assert first.result(timeout=120) == alone(engine, long_job)
    assert joined.wait(120)
    for job, future in zip(late, late_futures, strict=True):
        assert future.result(timeout=120) == alone(engine, job)
    b.stop()
    # every late job was staged while it waited; the first was copied as it started, alone
    assert (stager.stats.used, stager.stats.copied_at_prefill) == (len(late), 1)
    assert stager.staged_jobs() == [] and stager.staged_bytes == 0
    assert isinstance(late[0].pixels[0], Picture) == on_device


def test_a_staged_job_canceled_before_it_joins_is_dropped_and_never_runs(
    engine: InternVLEngine,
) -> None:
    long_job = vqa(engine, 0, GenerationParams(max_new_tokens=30), "long")
    late = [vqa(engine, i, GenerationParams(max_new_tokens=5), f"late{i}") for i in (1, 2, 3)]
    copies = DeferredCopies(lag=1)
    stager = Stager(copies, limit_bytes=64 * 2**20)
    b = held_joins(engine, stager)
    b.admission.join_max_wait_steps = 4
    late_futures: list[Future[Generation]] = []
    staged_then: list[str] = []
    canceled = threading.Event()
    at_step(b, 3, lambda: late_futures.extend(b.submit(job) for job in late))

    def cancel_one() -> None:  # on the model thread, after a step: late jobs staged, waiting
        staged_then.extend(job.job_id for job in stager.staged_jobs())
        if late_futures[1].cancel():
            canceled.set()

    first = b.submit(long_job)
    b.on_step = chained(b.on_step, 5, b, cancel_one)
    b.start()
    assert first.result(timeout=120) == alone(engine, long_job)
    for index in (0, 2):
        assert late_futures[index].result(timeout=120) == alone(engine, late[index])
    b.stop()
    assert staged_then == ["late1", "late2", "late3"] and canceled.is_set()
    assert late_futures[1].cancelled()
    assert stager.stats.dropped >= 1 and stager.stats.used == 2
    assert stager.staged_jobs() == []
    copies.settle()
    stager.buffers.acquire(0)
    assert stager.buffers.lent_bytes == 0  # every buffer came back


def chained(previous: OnStep | None, step: int, b: Batcher, action: Callable[[], None]) -> OnStep:
    """An on_step that runs `previous`, then `action` once, after the given step."""
    done = threading.Event()

    def on_step(rows: int, elapsed_s: float, prefilled: bool) -> None:
        if previous is not None:
            previous(rows, elapsed_s, prefilled)
        if b.stats.steps == step and not done.is_set():
            action()
            done.set()

    return on_step


class FailingCopies(DeferredCopies):
    """A device that runs out of memory for every copy."""

    def to_device(self, host: torch.Tensor) -> torch.Tensor:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 MiB")


def test_copies_that_fail_never_fail_a_job(engine: InternVLEngine) -> None:
    long_job = vqa(engine, 0, GenerationParams(max_new_tokens=12), "long")
    late = [vqa(engine, i, GenerationParams(max_new_tokens=5), f"late{i}") for i in (1, 2)]
    stager = Stager(FailingCopies(), limit_bytes=64 * 2**20)
    b = held_joins(engine, stager)
    late_futures: list[Future[Generation]] = []
    at_step(b, 2, lambda: late_futures.extend(b.submit(job) for job in late))
    first = b.submit(long_job)
    b.start()
    assert first.result(timeout=120) == alone(engine, long_job)
    for job, future in zip(late, late_futures, strict=True):
        assert future.result(timeout=120) == alone(engine, job)
    b.stop()
    assert stager.stats.used == 0 and stager.staged_jobs() == []


def test_a_job_waiting_for_a_full_batch_is_staged_in_the_step_that_frees_its_row(
    engine: InternVLEngine,
) -> None:
    short = vqa(engine, 0, GenerationParams(max_new_tokens=4), "short")
    long_job = vqa(engine, 1, GenerationParams(max_new_tokens=20), "long")
    late = vqa(engine, 2, GenerationParams(max_new_tokens=6), "late")
    stager = Stager(DeferredCopies(lag=1), limit_bytes=64 * 2**20)
    b = batcher(engine, max_batch_size=2)
    b.stager = stager
    late_futures: list[Future[Generation]] = []
    at_step(b, 1, lambda: late_futures.append(b.submit(late)))
    futures = [b.submit(short), b.submit(long_job)]
    b.start()
    for job, future in zip([short, long_job], futures, strict=True):
        assert future.result(timeout=120) == alone(engine, job)
    assert late_futures[0].result(timeout=120) == alone(engine, late)
    b.stop()
    # the batch is full until `short` reaches its 4th token: `late` is staged in that step
    assert (stager.stats.staged, stager.stats.used, stager.stats.copied_at_prefill) == (1, 1, 2)


def test_cuda_copies_run_on_the_side_stream_and_the_compute_stream_waits_on_the_device(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CudaCopies' stream discipline, with torch.cuda's streams and events played (no GPU)."""
    from contextlib import contextmanager

    from worker.copies import CudaCopies

    calls: list[tuple[str, str]] = []
    current: list[str] = ["compute"]

    class Stream:
        def __init__(self, device: object = None, name: str = "side") -> None:
            self.name = name

        def wait_event(self, event: object) -> None:
            calls.append(("wait_event", self.name))

    class Event:
        def record(self, stream: Stream) -> None:
            calls.append(("record", stream.name))

    @contextmanager
    def stream(chosen: Stream):  # type: ignore[no-untyped-def]
        current.append(chosen.name)
        yield
        current.pop()

    original_to = torch.Tensor.to

    def to(tensor: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        calls.append(("copy", current[-1]))
        return original_to(tensor, torch.device("cpu"))

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "stream", stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream(name=current[-1]))
    monkeypatch.setattr(torch.Tensor, "to", to)
    monkeypatch.setattr(
        torch.Tensor,
        "record_stream",
        lambda tensor, used_by: calls.append(("used by", used_by.name)),
    )
    copies = CudaCopies(torch.device("cuda"))
    moved = copies.to_device(tiles(1))
    ready = copies.record()
    copies.wait(ready, [moved])
    assert torch.equal(moved, tiles(1))
    assert calls == [
        ("copy", "side"),  # issued (and its memory allocated) on the side stream
        ("record", "side"),  # the event follows the copies on the side stream
        ("wait_event", "compute"),  # the compute stream waits for it on the device
        ("used by", "compute"),  # the allocator keeps the memory until the compute stream is done
    ]


def test_the_memory_staged_pixels_may_hold_is_kept_out_of_the_cache_budget(
    engine: InternVLEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker import decode

    monkeypatch.setattr(decode, "free_memory_bytes", lambda device: 2**30)  # 1 GiB free
    per_token = decode.kv_bytes_per_token(engine.model, engine.dtype)
    alone_budget = ContinuousBatcher(
        engine, max_batch_size=8, max_wait_ms=0, max_batch_tiles=1000, kv_cache_fraction=0.5
    ).admission.kv_budget
    staged = ContinuousBatcher(
        engine,
        max_batch_size=8,
        max_wait_ms=0,
        max_batch_tiles=1000,
        kv_cache_fraction=0.5,
        stager=Stager(DeferredCopies(), limit_bytes=64 * 2**20),
    ).admission.kv_budget
    assert alone_budget == 2**29 // per_token
    assert staged == (2**29 - 64 * 2**20) // per_token


class Recording:
    """The engine's generate, noting for each batch the jobs it got and the copies issued by
    then; refusing batches above `max_jobs` like a full GPU."""

    def __init__(self, engine: InternVLEngine, copies: DeferredCopies, max_jobs: int = 99):
        self.engine = engine
        self.copies = copies
        self.max_jobs = max_jobs
        self.batches: list[tuple[list[PreparedJob], int]] = []

    def generate(self, jobs: Sequence[PreparedJob]) -> list[Generation]:
        self.batches.append((list(jobs), self.copies.copies_issued))
        if len(jobs) > self.max_jobs:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.engine.generate(jobs)


def static(
    generate: Callable[[Sequence[PreparedJob]], list[Generation]], stager: Stager
) -> Batcher:
    return Batcher(generate, max_batch_size=2, max_wait_ms=0, max_batch_tiles=1000, stager=stager)


def test_the_static_batcher_stages_the_next_batch_while_one_generates(
    engine: InternVLEngine,
) -> None:
    jobs = [vqa(engine, i, GenerationParams(max_new_tokens=5), f"j{i}") for i in range(5)]
    copies = DeferredCopies(lag=None)  # a copy lands only when the model's stream waits on it
    stager = Stager(copies, limit_bytes=64 * 2**20)
    device = Recording(engine, copies)
    b = static(device.generate, stager)
    futures = [b.submit(job) for job in jobs]  # all waiting: batches j0 j1, j2 j3, j4
    b.start()
    for job, future in zip(jobs, futures, strict=True):
        assert future.result(timeout=120) == alone(engine, job)
    b.stop()
    assert [[job.job_id for job in batch] for batch, _ in device.batches] == [
        ["j0", "j1"],
        ["j2", "j3"],
        ["j4"],
    ]
    # the first batch is copied as it starts; each later one was staged before the batch in
    # front of it generated (its copies issued by then), and the model got those copies
    assert [issued for _, issued in device.batches] == [4, 5, 5]
    assert (stager.stats.staged, stager.stats.used, stager.stats.copied_at_prefill) == (3, 3, 2)
    for batch, _ in device.batches:
        for got in batch:
            submitted = jobs[int(got.job_id[1:])]
            assert got is not submitted  # the job with its pixels "on the device"
            assert len(got.pixels) == len(submitted.pixels) == 1
            assert torch.equal(got.pixels[0], submitted.pixels[0])  # type: ignore[arg-type]
    assert stager.staged_jobs() == []


def test_out_of_memory_in_a_static_batch_drops_what_was_staged_and_splits_on_the_copies(
    engine: InternVLEngine,
) -> None:
    jobs = [vqa(engine, i, GenerationParams(max_new_tokens=4), f"j{i}") for i in range(4)]
    copies = DeferredCopies(lag=None)
    stager = Stager(copies, limit_bytes=64 * 2**20)
    device = Recording(engine, copies, max_jobs=1)
    b = static(device.generate, stager)
    futures = [b.submit(job) for job in jobs]
    b.start()
    for job, future in zip(jobs, futures, strict=True):
        assert future.result(timeout=120) == alone(engine, job)
    b.stop()
    # j2 j3 were staged during j0 j1's attempt and dropped by its out of memory (the device
    # memory it may free), then copied as their own batch started; the halves of a split batch
    # run on the copies already made: no copy after a batch starts
    assert (stager.stats.staged, stager.stats.dropped, stager.stats.used) == (2, 2, 0)
    assert stager.stats.copied_at_prefill == 4
    assert [issued for _, issued in device.batches] == [4, 4, 4, 6, 6, 6]


def test_the_group_behind_a_beam_search_job_is_staged_while_it_runs(
    engine: InternVLEngine,
) -> None:
    beams = vqa(engine, 3, GenerationParams(max_new_tokens=6, num_beams=2), "beams")
    greedy = [vqa(engine, i, GenerationParams(max_new_tokens=5), f"g{i}") for i in (4, 5)]
    stager = Stager(DeferredCopies(lag=None), limit_bytes=64 * 2**20)
    b = batcher(engine)
    b.stager = stager
    futures = [b.submit(beams), *(b.submit(job) for job in greedy)]
    b.start()
    for job, future in zip([beams, *greedy], futures, strict=True):
        assert future.result(timeout=120) == alone(engine, job)
    b.stop()
    # the beam job, alone on the static path, is copied as it starts; the greedy group that
    # joins once it is done was staged meanwhile
    assert (stager.stats.staged, stager.stats.used, stager.stats.copied_at_prefill) == (2, 2, 1)


def test_a_static_batcher_gets_the_stager_its_registry_entry_asks_for(
    engine: InternVLEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker import schedulers

    made: list[tuple[str, int]] = []

    def make(device: torch.device, stage_pixels_mb: int) -> Stager:
        made.append((device.type, stage_pixels_mb))
        return Stager(DeferredCopies(), limit_bytes=stage_pixels_mb * 2**20)

    monkeypatch.setattr(schedulers, "make_stager", make)
    spec = ModelSpec(**{**engine.spec.model_dump(), "scheduler": "static", "stage_pixels_mb": 32})
    b = schedulers.make_batcher(engine, spec)
    assert type(b) is Batcher and b.stager is not None
    assert b.stager.limit_bytes == 32 * 2**20 and made == [("cpu", 32)]
