"""Running claimed jobs: results and usage stored once, duplicates ignored, bad images fail."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import select

from core.db import transaction
from core.jobs import claim_job, complete_job, release_job
from core.models import Job, JobEvent
from core.storage import ObjectStorage, image_key, store_once
from tests.support.videos import make_clip
from tests.support.worker import photo, queue_job


def events(sessions: Any, job_id: str) -> list[str]:
    with sessions() as session:
        rows = session.scalars(
            select(JobEvent.type).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        )
        return list(rows)


def reload(sessions: Any, job_id: str) -> Job:
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def test_caption_job_succeeds_with_text_and_usage(
    worker_runtime: Any, sessions: Any, storage: ObjectStorage
) -> None:
    job = queue_job(
        sessions,
        storage,
        worker_runtime.spec,
        [photo(size=(640, 480))],
        params={"max_new_tokens": 8},
    )
    assert worker_runtime.run_job(job.id) == "succeeded"
    done = reload(sessions, job.id)
    assert done.status == "succeeded"
    assert done.result and done.result["text"]
    assert done.usage is not None
    assert done.usage["image_tiles"] == [13]
    assert done.usage["prompt_tokens"] > 13 * 16
    assert 0 < done.usage["completion_tokens"] <= 8
    assert done.usage["queue_s"] >= 0 and done.usage["inference_s"] > 0
    assert done.started_at and done.finished_at and done.attempts == 1
    assert events(sessions, job.id) == ["job.queued", "job.running", "job.succeeded"]


def test_vqa_job_answers(worker_runtime: Any, sessions: Any, storage: ObjectStorage) -> None:
    job = queue_job(
        sessions,
        storage,
        worker_runtime.spec,
        [photo()],
        task="vqa",
        question="How many cats?",
        params={"max_new_tokens": 4},
    )
    assert worker_runtime.run_job(job.id) == "succeeded"
    assert reload(sessions, job.id).result is not None


def test_duplicate_delivery_runs_the_job_once(
    worker_runtime: Any, sessions: Any, storage: ObjectStorage
) -> None:
    job = queue_job(sessions, storage, worker_runtime.spec, [photo()], params={"max_new_tokens": 4})
    assert worker_runtime.run_job(job.id) == "succeeded"
    assert worker_runtime.run_job(job.id) == "duplicate"
    assert events(sessions, job.id).count("job.succeeded") == 1


def test_an_image_asked_twice_is_tiled_once(
    worker_runtime: Any, sessions: Any, storage: ObjectStorage
) -> None:
    cache = worker_runtime.engine.prepare_cache
    image = photo(7, size=(640, 480))
    first = queue_job(sessions, storage, worker_runtime.spec, [image], params={"max_new_tokens": 2})
    second = queue_job(
        sessions, storage, worker_runtime.spec, [image], task="vqa", question="Why?",
        params={"max_new_tokens": 2},
    )  # fmt: skip
    misses = cache.misses
    assert worker_runtime.run_job(first.id) == "succeeded"
    hits = cache.hits
    assert worker_runtime.run_job(second.id) == "succeeded"
    assert (cache.misses, cache.hits) == (misses + 1, hits + 1)
    assert reload(sessions, second.id).usage["image_tiles"] == [13]


def test_undecodable_image_fails_the_job_with_a_code(
    worker_runtime: Any, sessions: Any, storage: ObjectStorage
) -> None:
    job = queue_job(sessions, storage, worker_runtime.spec, [photo()])
    sha = job.spec["images"][0]
    storage.put(image_key(sha), b"\xff\xd8\xff garbage that no decoder reads")
    assert worker_runtime.run_job(job.id) == "failed"
    failed = reload(sessions, job.id)
    assert (failed.status, failed.error_code) == ("failed", "invalid_image")
    assert failed.error_message


def test_missing_image_fails_the_job(
    worker_runtime: Any, sessions: Any, storage: ObjectStorage
) -> None:
    job = queue_job(sessions, storage, worker_runtime.spec, [photo(seed=3)])
    storage.delete(image_key(job.spec["images"][0]))
    assert worker_runtime.run_job(job.id) == "failed"
    assert reload(sessions, job.id).error_code == "image_missing"


def test_a_superseded_attempt_cannot_write_its_result(
    worker_runtime: Any, sessions: Any, storage: ObjectStorage
) -> None:
    job = queue_job(sessions, storage, worker_runtime.spec, [photo()])
    with transaction(sessions) as session:
        first = claim_job(session, job.id, worker_id="a", lease_s=30)
        assert first is not None and first.attempts == 1
        release_job(session, job.id, attempt=1, reason="lease expired")
        second = claim_job(session, job.id, worker_id="b", lease_s=30)
        assert second is not None and second.attempts == 2
    with transaction(sessions) as session:
        late = complete_job(session, job.id, attempt=1, result={"text": "late"}, usage={})
    assert late is None
    with transaction(sessions) as session:
        assert complete_job(session, job.id, attempt=2, result={"text": "ok"}, usage={})
    assert reload(sessions, job.id).result == {"text": "ok"}


def test_a_video_job_reads_its_frames_and_reports_them(
    worker_runtime: Any, sessions: Any, storage: ObjectStorage
) -> None:
    clip = make_clip("mkv", seconds=1.0, fps=12)
    sha = store_once(storage, clip, content_type="video/x-matroska")[0]
    video = {"sha256": sha, "num_frames": 3, "fps": None}
    job = queue_job(
        sessions,
        storage,
        worker_runtime.spec,
        [],
        task="video",
        video=video,
        params={"max_new_tokens": 3, "max_tiles": 1},
    )
    assert worker_runtime.run_job(job.id) == "succeeded"
    usage = reload(sessions, job.id).usage
    assert (usage["frames"], usage["frame_indices"], usage["image_tiles"]) == (
        3,
        [2, 6, 10],
        [1] * 3,
    )


def test_an_undecodable_video_fails_the_job_with_a_code(
    worker_runtime: Any, sessions: Any, storage: ObjectStorage
) -> None:
    sha = store_once(storage, b"\x1a\x45\xdf\xa3 not really Matroska", content_type="video/webm")[0]
    video = {"sha256": sha, "num_frames": 3, "fps": None}
    job = queue_job(sessions, storage, worker_runtime.spec, [], task="video", video=video)
    assert worker_runtime.run_job(job.id) == "failed"
    failed = reload(sessions, job.id)
    assert (failed.status, failed.error_code) == ("failed", "invalid_video")


def test_a_job_over_the_default_running_limit_is_held_not_run(
    worker_runtime: Any, sessions: Any, storage: ObjectStorage
) -> None:
    worker_runtime.settings = worker_runtime.settings.model_copy(
        update={"max_running_jobs_per_tenant": 1, "tenant_limit_hold_s": 30.0}
    )
    running = queue_job(sessions, storage, worker_runtime.spec, [photo()])
    held = queue_job(sessions, storage, worker_runtime.spec, [photo(seed=2)])
    with transaction(sessions) as session:
        assert claim_job(session, running.id, worker_id="other", lease_s=60) is not None
    assert worker_runtime.run_job(held.id) == "duplicate"  # its message is dropped
    job = reload(sessions, held.id)
    assert (job.status, job.attempts, job.published_at) == ("queued", 0, None)
    assert job.available_at is not None and job.available_at > job.created_at
    assert events(sessions, held.id) == ["job.queued"]


def four_photos(
    runtime: Any, sessions: Any, storage: ObjectStorage, *, new_tokens: int
) -> list[Job]:
    params = {"max_new_tokens": new_tokens}
    return [
        queue_job(sessions, storage, runtime.spec, [photo(seed=i)], params=params) for i in range(4)
    ]


def run_claims_together(runtime: Any, job_ids: list[str]) -> list[str]:
    """Run the jobs on threads of their own while their claims queue behind a held commit, so
    the claims commit as one group (as a batch's next jobs do at saturation); their outcomes."""
    commits = runtime.commits
    with commits._lock:  # every transaction slot busy, as behind slow COMMITs
        slots, commits._free = commits._free, 0
    with ThreadPoolExecutor(len(job_ids)) as pool:
        runs = [pool.submit(runtime.run_job, job_id) for job_id in job_ids]
        deadline = time.monotonic() + 30
        while len(commits._pending) < len(job_ids):
            assert time.monotonic() < deadline, "the claims never queued"
            time.sleep(0.005)
        with commits._lock:
            for _ in range(slots):
                commits._release_slot()
        return [run.result(120) for run in runs]


def test_claims_and_outcomes_of_the_task_threads_commit_in_groups(
    worker_runtime: Any, sessions: Any, storage: ObjectStorage
) -> None:
    jobs = four_photos(worker_runtime, sessions, storage, new_tokens=3)
    commits = worker_runtime.commits
    before = (commits.transactions, commits.changes)
    assert run_claims_together(worker_runtime, [job.id for job in jobs]) == ["succeeded"] * 4
    # Four claims and four results, the claims in one transaction.
    assert commits.changes - before[1] == 8
    assert commits.transactions - before[0] <= 5
    for job in jobs:
        done = reload(sessions, job.id)
        assert (done.status, done.attempts) == ("succeeded", 1) and done.result
        assert events(sessions, job.id) == ["job.queued", "job.running", "job.succeeded"]


def test_a_tenants_running_limit_holds_within_one_group_of_claims(
    worker_runtime: Any, sessions: Any, storage: ObjectStorage
) -> None:
    worker_runtime.settings = worker_runtime.settings.model_copy(
        update={"max_running_jobs_per_tenant": 2, "tenant_limit_hold_s": 30.0}
    )
    jobs = four_photos(worker_runtime, sessions, storage, new_tokens=2)
    outcomes = run_claims_together(worker_runtime, [job.id for job in jobs])
    # Each claim of the group counts the ones before it in the same transaction.
    assert sorted(outcomes) == ["duplicate", "duplicate", "succeeded", "succeeded"]
    statuses = sorted(reload(sessions, job.id).status for job in jobs)
    assert statuses == ["queued", "queued", "succeeded", "succeeded"]
