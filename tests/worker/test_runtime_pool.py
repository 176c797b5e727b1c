"""Jobs prepared in prepare processes: the same results and codes, and no job lost or run twice
when a prepare process is killed mid-prepare."""

from __future__ import annotations

import gc
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import select

from core.config import Settings
from core.models import Job, JobEvent
from core.storage import ObjectStorage, image_key, store_once
from tests.support.prepare import die, stop_once, stop_video_once, wait_for_pid
from tests.support.runtimes import SLOTS, slotted_pool, started_runtime
from tests.support.videos import make_clip
from tests.support.worker import photo, queue_job
from worker.prepare_pool import PreparePool, Work, prepare_job
from worker.prepare_reads import StorageAccess
from worker.preprocess import Picture


def running(
    settings: Settings, sessions: Any, storage: ObjectStorage, engine: Any, pool: PreparePool
) -> AbstractContextManager[Any]:
    """A worker runtime preparing in `pool`, its batcher running; both stopped after."""
    return started_runtime(settings, sessions, storage, engine=engine, preparing=pool)


def pooled_runtime(
    settings: Settings, sessions: Any, storage: ObjectStorage, engine: Any, work: Work
) -> AbstractContextManager[Any]:
    """A runtime whose pool has slots as a worker's and reads images with its own client."""
    return running(settings, sessions, storage, engine, slotted_pool(settings, work=work))


@pytest.fixture
def runtime(
    service_settings: Settings, sessions: Any, storage: ObjectStorage, engine: Any
) -> Iterator[Any]:
    with pooled_runtime(service_settings, sessions, storage, engine, prepare_job) as pooled:
        yield pooled


def slots_all_free(runtime: Any) -> bool:
    gc.collect()
    return bool(runtime.preparing.arena.free == SLOTS)


def job_row(sessions: Any, job_id: str) -> Job:
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def event_types(sessions: Any, job_id: str) -> list[str]:
    with sessions() as session:
        return list(
            session.scalars(
                select(JobEvent.type).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
            )
        )


def test_a_job_prepared_in_a_process_succeeds_and_its_tiles_are_cached(
    runtime: Any, sessions: Any, storage: ObjectStorage
) -> None:
    cache = runtime.engine.prepare_cache
    image = photo(11, size=(640, 480))
    first = queue_job(sessions, storage, runtime.spec, [image], params={"max_new_tokens": 3})
    pair = [image, photo(12, size=(64, 64))]
    params = {"max_new_tokens": 3}
    second = queue_job(
        sessions, storage, runtime.spec, pair, task="vqa", question="Same?", params=params
    )
    assert runtime.run_job(first.id) == "succeeded"
    cached = cache.get(runtime.engine.cache_key(first.spec["images"][0], 12))
    assert isinstance(cached, torch.Tensor)  # a copy out of its slot: the slot went back
    assert not runtime.preparing.arena.holds(cached) and slots_all_free(runtime)
    storage.delete(image_key(first.spec["images"][0]))  # a cached image is not read again
    assert runtime.run_job(second.id) == "succeeded"
    assert job_row(sessions, first.id).usage["image_tiles"] == [13]
    assert job_row(sessions, second.id).usage["image_tiles"] == [13, 1]


def test_with_device_resizing_pictures_are_prepared_cached_and_answered(
    runtime: Any, sessions: Any, storage: ObjectStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime.engine, "resize_on_device", True)  # as on a GPU
    cache = runtime.engine.prepare_cache
    image = photo(21, size=(640, 480))
    first = queue_job(sessions, storage, runtime.spec, [image], params={"max_new_tokens": 3})
    second = queue_job(
        sessions, storage, runtime.spec, [image], task="vqa", question="Why?",
        params={"max_new_tokens": 3},
    )  # fmt: skip
    assert runtime.run_job(first.id) == "succeeded"
    cached = cache.get(runtime.engine.cache_key(first.spec["images"][0], 12))
    assert isinstance(cached, Picture) and not runtime.preparing.arena.holds(cached)
    # The decoded picture, not 13 tiles: a 4x3 grid of 64-px tiles needs 256x192, so libjpeg
    # decoded the 640x480 photo at 1/2 scale.
    assert tuple(cached.pixels.shape) == (3, 240, 320)
    hits = cache.hits
    assert runtime.run_job(second.id) == "succeeded"
    assert cache.hits == hits + 1 and slots_all_free(runtime)
    assert job_row(sessions, second.id).usage["image_tiles"] == [13]


class NoReads:
    """A storage the model's process must not read from: the prepare process reads."""

    def get(self, key: str) -> bytes:
        raise AssertionError(f"the model's process read {key}")


def test_images_are_read_by_the_prepare_process_and_a_missing_one_fails_the_job(
    runtime: Any, sessions: Any, storage: ObjectStorage
) -> None:
    job = queue_job(sessions, storage, runtime.spec, [photo(31)], params={"max_new_tokens": 3})
    gone = queue_job(sessions, storage, runtime.spec, [photo(32)], params={"max_new_tokens": 3})
    storage.delete(image_key(gone.spec["images"][0]))
    runtime.storage = NoReads()
    assert runtime.run_job(job.id) == "succeeded"
    assert runtime.run_job(gone.id) == "failed"
    failed = job_row(sessions, gone.id)
    assert failed.error_code == "image_missing" and gone.spec["images"][0] in failed.error_message


def test_an_undecodable_image_fails_the_job_with_its_code(
    runtime: Any, sessions: Any, storage: ObjectStorage
) -> None:
    job = queue_job(sessions, storage, runtime.spec, [photo(13)])
    sha = job.spec["images"][0]
    storage.put(image_key(sha), b"\xff\xd8\xff garbage that no decoder reads")
    assert runtime.run_job(job.id) == "failed"
    failed = job_row(sessions, job.id)
    assert (failed.error_code, sha in (failed.error_message or "")) == ("invalid_image", True)


@pytest.mark.parametrize("on_device", [False, True], ids=["host-resize", "device-resize"])
def test_a_prepare_process_killed_mid_job_loses_nothing_and_runs_it_once(
    service_settings: Settings,
    sessions: Any,
    storage: ObjectStorage,
    engine: Any,
    tmp_path: Path,
    on_device: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(engine, "resize_on_device", on_device)
    marker = tmp_path / "preparing"
    work = partial(stop_once, str(marker))
    with pooled_runtime(service_settings, sessions, storage, engine, work) as runtime:
        job = queue_job(sessions, storage, runtime.spec, [photo(14)], params={"max_new_tokens": 3})
        outcome: list[str] = []
        task = threading.Thread(target=lambda: outcome.append(runtime.run_job(job.id)))
        task.start()
        os.kill(wait_for_pid(marker), signal.SIGKILL)
        task.join(120)
        assert outcome == ["succeeded"]
        assert runtime.preparing.restarts == 1 and slots_all_free(runtime)
    done = job_row(sessions, job.id)
    assert (done.status, done.attempts) == ("succeeded", 1)
    assert event_types(sessions, job.id) == ["job.queued", "job.running", "job.succeeded"]


def test_prepare_processes_that_keep_dying_hand_the_job_back(
    service_settings: Settings, sessions: Any, storage: ObjectStorage, engine: Any
) -> None:
    with pooled_runtime(service_settings, sessions, storage, engine, die) as runtime:
        job = queue_job(sessions, storage, runtime.spec, [photo(15)], params={"max_new_tokens": 3})
        assert runtime.run_job(job.id) == "released"
    handed_back = job_row(sessions, job.id)
    assert (handed_back.status, handed_back.attempts) == ("queued", 1)
    assert handed_back.result is None and handed_back.available_at is not None  # a backoff
    assert event_types(sessions, job.id) == ["job.queued", "job.running", "job.queued"]
    with sessions() as session:
        reason = session.scalars(
            select(JobEvent.data).where(JobEvent.job_id == job.id).order_by(JobEvent.id.desc())
        ).first()
    assert reason is not None and reason["reason"].startswith("PrepareFailed")


def video_job(sessions: Any, storage: ObjectStorage, runtime: Any, clip: bytes) -> Job:
    sha = store_once(storage, clip, content_type="video/x-matroska")[0]
    video = {"sha256": sha, "num_frames": 3, "fps": None}
    params = {"max_new_tokens": 3, "max_tiles": 1}
    return queue_job(sessions, storage, runtime.spec, [], task="video", video=video, params=params)


def test_a_video_job_is_sampled_decoded_and_prepared_in_a_process(
    runtime: Any, sessions: Any, storage: ObjectStorage
) -> None:
    job = video_job(sessions, storage, runtime, make_clip("mkv", seconds=1.0, fps=12))
    assert runtime.run_job(job.id) == "succeeded"
    usage = job_row(sessions, job.id).usage
    assert (usage["frames"], usage["frame_indices"], usage["image_tiles"]) == (
        3,
        [2, 6, 10],
        [1] * 3,
    )
    broken = video_job(sessions, storage, runtime, b"\x1a\x45\xdf\xa3 not really Matroska")
    assert runtime.run_job(broken.id) == "failed"
    assert job_row(sessions, broken.id).error_code == "invalid_video"
    assert runtime.preparing.restarts == 0  # a decoder's error does not break the pool


def test_a_prepare_process_killed_mid_video_loses_nothing_and_runs_it_once(
    service_settings: Settings, sessions: Any, storage: ObjectStorage, engine: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "preparing"
    pool = PreparePool(
        service_settings.default_model,
        processes=1,
        video_work=partial(stop_video_once, str(marker)),
    )
    with running(service_settings, sessions, storage, engine, pool) as runtime:
        job = video_job(sessions, storage, runtime, make_clip("mkv", seconds=1.0, fps=12))
        outcome: list[str] = []
        task = threading.Thread(target=lambda: outcome.append(runtime.run_job(job.id)))
        task.start()
        os.kill(wait_for_pid(marker), signal.SIGKILL)
        task.join(120)
        assert outcome == ["succeeded"] and pool.restarts == 1
    done = job_row(sessions, job.id)
    assert (done.status, done.attempts) == ("succeeded", 1)
    assert event_types(sessions, job.id) == ["job.queued", "job.running", "job.succeeded"]


def test_storage_unreachable_from_a_prepare_process_hands_the_job_back(
    service_settings: Settings, sessions: Any, storage: ObjectStorage, engine: Any
) -> None:
    # Nothing listens on port 9 of this host: every read fails to connect until the deadline.
    access = StorageAccess(service_settings.storage_url, "http://127.0.0.1:9", read_deadline_s=1)
    pool = PreparePool(service_settings.default_model, processes=1, storage=access)
    with running(service_settings, sessions, storage, engine, pool) as runtime:
        job = queue_job(sessions, storage, runtime.spec, [photo(33)], params={"max_new_tokens": 3})
        assert runtime.run_job(job.id) == "released"
    handed_back = job_row(sessions, job.id)
    assert (handed_back.status, handed_back.attempts) == ("queued", 1)
    assert handed_back.available_at is not None and handed_back.result is None  # a backoff
    assert pool.restarts == 0
