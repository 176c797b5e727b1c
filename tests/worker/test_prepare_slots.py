"""Recycled slots: pixels come back in place, every slot is freed once its views are gone, an
image that does not fit still arrives, and a killed prepare process leaks no slot."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch

from core.config import ModelSpec
from tests.support.prepare import stop_once, two_images, wait_for_pid
from tests.support.videos import make_clip
from tests.support.worker import photo
from worker.prepare_pool import PreparePool
from worker.prepare_slots import PREFIX, SHM_FOLDER, SlotArena
from worker.preprocess import Picture
from worker.video import prepare_video

SLOTS = 3


@pytest.fixture(scope="module")
def spec(tiny_model_path: Path) -> ModelSpec:
    return ModelSpec(alias="tiny", checkpoint=str(tiny_model_path), tile_size=64)


@pytest.fixture(scope="module")
def pool(spec: ModelSpec) -> Iterator[PreparePool]:
    pool = PreparePool(spec, processes=1, slots=SLOTS, slot_bytes=2**20)
    pool.start()
    pool.wait_ready()
    yield pool
    pool.close()


def all_free(pool: PreparePool) -> bool:
    gc.collect()
    assert pool.arena is not None
    return pool.arena.free == SLOTS


@pytest.mark.parametrize("on_device", [True, False], ids=["pictures", "tiles"])
def test_pixels_come_back_in_their_slots_and_the_slots_are_freed_after(
    pool: PreparePool, engine: Any, on_device: bool
) -> None:
    conversation = two_images(engine)
    images: list[bytes | int] = [photo(1, size=(640, 480)), 5]  # the second one cached
    here = engine.preparer.job_inputs(conversation, images, max_tiles=12, on_device=on_device)
    there = pool.run(conversation, images, max_tiles=12, on_device=on_device)
    assert pool.arena is not None and pool.arena.free == SLOTS - 1  # one lent, still in use
    image, mine = there.tiles[0], here.tiles[0]
    assert image is not None and mine is not None and pool.arena.holds(image)
    if on_device:
        assert isinstance(image, Picture) and isinstance(mine, Picture)
        assert torch.equal(image.pixels, mine.pixels)
        assert (image.columns, image.rows) == (mine.columns, mine.rows)
    else:
        assert torch.equal(image, mine)  # type: ignore[arg-type]
    assert torch.equal(there.input_ids, here.input_ids) and there.counts == [13, 5]
    copy = pool.cacheable(image)
    assert not pool.arena.holds(copy)  # what a cache keeps does not keep the slot lent
    del there, image
    assert all_free(pool)
    assert not pool.arena.holds(copy)


def test_an_image_larger_than_its_slot_arrives_as_shared_memory(
    pool: PreparePool, engine: Any
) -> None:
    conversation = two_images(engine)
    # An odd size has no exact reduced-scale decode: 1023x1023 decodes in full, 3 MiB.
    big = photo(2, size=(1023, 1023))
    result = pool.run(conversation, [big, photo(3)], max_tiles=12, on_device=True)
    first, second = result.tiles
    assert isinstance(first, Picture) and first.pixels.is_shared()
    assert pool.arena is not None and not pool.arena.holds(first)
    assert isinstance(second, Picture) and pool.arena.holds(second)
    del result, first, second
    assert all_free(pool)


def test_a_job_finding_no_free_slot_still_prepares(pool: PreparePool, engine: Any) -> None:
    conversation = two_images(engine)
    held = [pool.run(conversation, [photo(4), photo(5)], max_tiles=6, on_device=True)]
    assert pool.arena is not None and pool.arena.free == SLOTS - 2
    held.append(pool.run(conversation, [photo(6), photo(7)], max_tiles=6, on_device=True))
    assert pool.arena.free == 0  # one slot for the third image, none for the fourth
    fourth = held[1].tiles[1]
    assert isinstance(fourth, Picture) and fourth.pixels.is_shared()
    assert not pool.arena.holds(fourth)
    del held, fourth
    assert all_free(pool)


def test_video_frames_come_back_in_slots_and_the_slots_they_did_not_fill_are_free_at_once(
    pool: PreparePool, engine: Any
) -> None:
    clip = make_clip("mkv", seconds=1.0, fps=2)  # two frames, where the job may read five
    spec = {"task": "video", "images": [], "video": {"sha256": "clip", "num_frames": 5}}
    here = prepare_video(engine.preparer, spec, engine.control_tokens, clip, max_tiles=1,
                         on_device=True)  # fmt: skip
    there = pool.run_video(spec, engine.control_tokens, clip, max_tiles=1, on_device=True)
    assert (there.frames, there.order) == (here.frames, here.order) == ([0, 1], [0, 1])
    assert torch.equal(there.inputs.input_ids, here.inputs.input_ids)
    assert pool.arena is not None and pool.arena.free == SLOTS - 2  # the third lent went back
    for got, want in zip(there.inputs.tiles, here.inputs.tiles, strict=True):
        assert isinstance(got, Picture) and isinstance(want, Picture) and pool.arena.holds(got)
        assert torch.equal(got.pixels, want.pixels)
    del there, got
    assert all_free(pool)


def test_a_prepare_process_killed_mid_job_leaks_no_slot(
    spec: ModelSpec, engine: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "preparing"
    pool = PreparePool(
        spec, processes=1, work=partial(stop_once, str(marker)), slots=SLOTS, slot_bytes=2**20
    )
    conversation = two_images(engine)
    images: list[bytes | int] = [photo(8), photo(9)]
    results: list[Any] = []

    def run() -> None:
        results.append(pool.run(conversation, images, max_tiles=4, on_device=True))

    runner = threading.Thread(target=run)
    try:
        runner.start()
        os.kill(wait_for_pid(marker), signal.SIGKILL)
        runner.join(60)
        assert not runner.is_alive() and len(results) == 1 and pool.restarts == 1
        expected = engine.preparer.job_inputs(conversation, images, max_tiles=4, on_device=True)
        for got, want in zip(results[0].tiles, expected.tiles, strict=True):
            assert pool.arena is not None and pool.arena.holds(got)
            assert torch.equal(got.pixels, want.pixels)
        del got, want
        results.clear()
        assert all_free(pool)
    finally:
        pool.close()


def test_a_block_whose_creator_died_is_removed_by_the_next_arena() -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    stale = SHM_FOLDER / f"{PREFIX}{int(dead.stdout)}-deadbeef"
    stale.write_bytes(b"left by a killed worker")
    mine = SHM_FOLDER / f"{PREFIX}{os.getpid()}-cafef00d"  # its creator is alive: kept
    mine.write_bytes(b"in use")
    try:
        arena = SlotArena(1, 4096)
        arena.close()
        assert not stale.exists() and mine.exists()
        assert not (SHM_FOLDER / arena.name).exists()  # closed: unlinked
    finally:
        stale.unlink(missing_ok=True)
        mine.unlink()
