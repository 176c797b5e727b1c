"""Prepare processes: their tensors arrive as shared memory, and a killed one loses no job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch

from core.config import ModelSpec
from tests.support.prepare import die, stop_once, two_images, wait_for_pid
from tests.support.worker import photo
from worker.prepare_pool import PrepareFailed, PreparePool
from worker.preparer import ImageUndecodable
from worker.preprocess import Picture


@pytest.fixture(scope="module")
def spec(tiny_model_path: Path) -> ModelSpec:
    return ModelSpec(alias="tiny", checkpoint=str(tiny_model_path), tile_size=64)


@pytest.fixture(scope="module")
def pool(spec: ModelSpec) -> Any:
    pool = PreparePool(spec, processes=1)
    pool.start()
    pool.wait_ready()
    yield pool
    pool.close()


def test_prepared_tensors_arrive_as_shared_memory_equal_to_preparing_here(
    pool: PreparePool, engine: Any
) -> None:
    conversation = two_images(engine)
    images: list[bytes | int] = [photo(1, size=(640, 480)), 5]  # the second one cached: 5 tiles
    here = engine.preparer.job_inputs(conversation, images, max_tiles=12)
    there = pool.run(conversation, images, max_tiles=12)
    assert not here.input_ids.is_shared()  # made here: private memory
    assert there.input_ids.is_shared() and there.tiles[0] is not None
    assert there.tiles[0].is_shared()  # a pickled copy would be private memory
    assert torch.equal(there.input_ids, here.input_ids)
    assert torch.equal(there.tiles[0], here.tiles[0])
    assert there.tiles[1] is None and there.counts == here.counts == [13, 5]


def test_pictures_for_the_device_arrive_as_shared_memory_equal_to_decoding_here(
    pool: PreparePool, engine: Any
) -> None:
    conversation = two_images(engine)
    images: list[bytes | int] = [photo(1, size=(640, 480)), photo(2, size=(64, 64))]
    here = engine.preparer.job_inputs(conversation, images, max_tiles=12, on_device=True)
    there = pool.run(conversation, images, max_tiles=12, on_device=True)
    for mine, theirs in zip(here.tiles, there.tiles, strict=True):
        assert isinstance(mine, Picture) and isinstance(theirs, Picture)
        assert theirs.pixels.is_shared() and torch.equal(theirs.pixels, mine.pixels)
        assert (theirs.columns, theirs.rows) == (mine.columns, mine.rows)
    assert torch.equal(there.input_ids, here.input_ids) and there.counts == [13, 1]


def test_an_undecodable_image_comes_back_as_its_error(pool: PreparePool, engine: Any) -> None:
    conversation = two_images(engine)
    with pytest.raises(ImageUndecodable) as raised:
        pool.run(conversation, [photo(2), b"\xff\xd8\xff not a picture"], max_tiles=6)
    assert raised.value.index == 1
    assert pool.restarts == 0  # a decoder's error does not break the pool


def test_a_prepare_process_killed_mid_job_prepares_it_again(
    spec: ModelSpec, engine: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "preparing"
    pool = PreparePool(spec, processes=1, work=partial(stop_once, str(marker)))
    conversation = two_images(engine)
    images: list[bytes | int] = [photo(3), photo(4)]
    results: list[Any] = []
    runner = threading.Thread(
        target=lambda: results.append(pool.run(conversation, images, max_tiles=4))
    )
    try:
        runner.start()
        os.kill(wait_for_pid(marker), signal.SIGKILL)
        runner.join(60)
    finally:
        pool.close()
    assert not runner.is_alive() and len(results) == 1
    expected = engine.preparer.job_inputs(conversation, images, max_tiles=4)
    assert torch.equal(results[0].input_ids, expected.input_ids)
    assert pool.restarts == 1


def test_prepare_processes_dying_twice_fail_the_prepare(spec: ModelSpec, engine: Any) -> None:
    pool = PreparePool(spec, processes=1, work=die)
    try:
        with pytest.raises(PrepareFailed):
            pool.run(two_images(engine), [photo(5), photo(6)], max_tiles=4)
    finally:
        pool.close()
    assert pool.restarts == 2


OWNER = """
import os, sys
from core.config import ModelSpec
from worker.prepare_pool import PreparePool
pool = PreparePool(ModelSpec(alias="tiny", checkpoint=sys.argv[1]), processes=2)
pool.start()
print(" ".join(str(pid) for pid in set(pool.wait_ready())), flush=True)
os.kill(os.getpid(), 9)
"""


@pytest.mark.slow
def test_prepare_processes_exit_when_their_worker_is_killed(spec: ModelSpec) -> None:
    owner = subprocess.run(
        [sys.executable, "-c", OWNER, spec.checkpoint], capture_output=True, text=True, timeout=300
    )
    assert owner.returncode == -signal.SIGKILL, owner.stderr
    pids = [int(pid) for pid in owner.stdout.split()]
    assert pids
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in pids if _alive(pid)]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; its reaper is gone with the killed owner
