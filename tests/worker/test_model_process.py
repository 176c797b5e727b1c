"""The model in a process of its own: the same results as in the worker's process, the prepare
cache kept there, cancels and shutdown as before, and nothing lost when either process dies."""

from __future__ import annotations

import gc
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from core.config import ModelSpec, Settings
from core.storage import ObjectStorage, image_key, store_once
from tests.support.runtimes import SLOTS, slotted_pool, started_runtime
from tests.support.structured import TICKET
from tests.support.videos import make_clip
from tests.support.worker import photo, queue_job
from worker.model_client import ModelClient
from worker.model_messages import ModelProcessDied
from worker.model_process import ModelProcessConfig
from worker.prepare_pool import PreparePool

TICKET_FORMAT = {"type": "json_schema", "name": "ticket", "schema": TICKET}


def client_for(spec: ModelSpec, pool: PreparePool | None, **config: Any) -> ModelClient:
    arena = None if pool is None else pool.arena
    slots = None if arena is None else (arena.name, arena.count, arena.slot_bytes)
    settings = ModelProcessConfig(
        spec=spec, device="cpu", cpu_threads=torch.get_num_threads(), slots=slots, **config
    )
    return ModelClient(settings, arena=arena, cache_bytes=spec.prepare_cache_mb * 2**20)


@contextmanager
def remote_runtime(
    settings: Settings,
    sessions: Any,
    storage: ObjectStorage,
    *,
    spec: ModelSpec | None = None,
    **config: Any,
) -> Iterator[Any]:
    """A runtime whose model runs in a model process and whose jobs prepare in a pool with
    slots (as a worker with prepare processes); all stopped after."""
    spec = spec or settings.default_model
    pool = slotted_pool(settings, spec)
    client = client_for(spec, pool, **config)
    client.launch(timeout_s=300)
    with started_runtime(
        settings, sessions, storage, spec=spec, preparing=pool, model=client
    ) as runtime:
        yield runtime


@pytest.fixture
def runtime(service_settings: Settings, sessions: Any, storage: ObjectStorage) -> Iterator[Any]:
    with remote_runtime(service_settings, sessions, storage) as remote:
        yield remote


def result_of(sessions: Any, job_id: str) -> tuple[str, dict[str, Any] | None, Any]:
    from core.models import Job

    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        usage = job.usage or {}
        return job.status, job.result, (usage.get("image_tiles"), usage.get("frames"))


def some_jobs(
    sessions: Any, storage: ObjectStorage, spec: ModelSpec, media: list[bytes]
) -> list[str]:
    """A photo, the same photo asked with another (cached), a schema job and a video."""
    image, other, document, clip = media
    sha = store_once(storage, clip, content_type="video/x-matroska")[0]
    video = {"sha256": sha, "num_frames": 3, "fps": None}
    short = {"max_new_tokens": 4}
    jobs = [
        queue_job(sessions, storage, spec, [image], params=short),
        queue_job(sessions, storage, spec, [image, other], task="vqa", question="Same?",
                  params=short),
        queue_job(sessions, storage, spec, [document], task="ocr",
                  response_format=TICKET_FORMAT, params={"max_new_tokens": 24}),
        queue_job(sessions, storage, spec, [], task="video", video=video, params=short),
    ]  # fmt: skip
    return [job.id for job in jobs]


def test_jobs_in_the_model_process_end_as_in_the_workers_process(
    runtime: Any, worker_runtime: Any, sessions: Any, storage: ObjectStorage
) -> None:
    # The same bytes for both (a photo is noise drawn afresh at each call).
    media = [photo(31, size=(640, 480)), photo(32), photo(33), make_clip("mkv", seconds=1.0)]
    remote = some_jobs(sessions, storage, runtime.spec, media)
    local = some_jobs(sessions, storage, runtime.spec, media)
    for job_id in remote:
        assert runtime.run_job(job_id) == "succeeded"
    for job_id in local:
        assert worker_runtime.run_job(job_id) == "succeeded"
    for here, there in zip(local, remote, strict=True):
        assert result_of(sessions, there) == result_of(sessions, here)
    assert result_of(sessions, remote[1])[2] == ([13, 13], None)
    assert result_of(sessions, remote[3])[2][1] is not None  # the video's frames were read
    gc.collect()
    assert runtime.preparing.arena.free == SLOTS  # every slot went back


def test_an_image_asked_twice_is_prepared_once_and_kept_in_the_model_process(
    runtime: Any, sessions: Any, storage: ObjectStorage
) -> None:
    image = photo(41, size=(640, 480))
    short = {"max_new_tokens": 3}
    first = queue_job(sessions, storage, runtime.spec, [image], params=short)
    second = queue_job(
        sessions, storage, runtime.spec, [image], task="vqa", question="Why?", params=short
    )
    assert runtime.run_job(first.id) == "succeeded"
    key = runtime.model.cache_key(first.spec["images"][0], 12)
    assert runtime.model.index.pin([key]) == [13]  # the front knows the model process has it
    runtime.model.index.unpin([key])
    storage.delete(image_key(first.spec["images"][0]))  # so the second cannot read it again
    hits = runtime.model.index.hits
    assert runtime.run_job(second.id) == "succeeded"
    assert runtime.model.index.hits == hits + 1
    assert result_of(sessions, second.id)[2] == ([13], None)


def test_a_running_job_canceled_stops_in_the_model_process(
    runtime: Any, sessions: Any, storage: ObjectStorage
) -> None:
    job = queue_job(sessions, storage, runtime.spec, [photo(51)], params={"max_new_tokens": 400})
    outcome: list[str] = []
    thread = threading.Thread(target=lambda: outcome.append(runtime.run_job(job.id)))
    thread.start()
    while not (runtime.held.get(job.id) and runtime.held[job.id].future is not None):
        threading.Event().wait(0.01)
    future = runtime.held[job.id].future
    while not future.running():  # the model process admitted it
        threading.Event().wait(0.01)
    from core.leases import LeaseCheck

    runtime.apply_lease_check(LeaseCheck(canceled={job.id}))
    thread.join(120)
    assert outcome == ["canceled"]
    status, _, _ = result_of(sessions, job.id)
    assert status == "canceled"


def test_shutdown_hands_back_jobs_the_model_process_has_not_started(
    service_settings: Settings, sessions: Any, storage: ObjectStorage
) -> None:
    # One row at a time: the second job waits in the model process while the first runs.
    spec = service_settings.default_model.model_copy(update={"max_batch_size": 1})
    long = {"max_new_tokens": 200}
    with remote_runtime(service_settings, sessions, storage, spec=spec) as runtime:
        jobs = [queue_job(sessions, storage, spec, [photo(60 + i)], params=long)
                for i in range(2)]  # fmt: skip
        outcomes: dict[str, str] = {}
        threads = [
            threading.Thread(target=lambda j=j: outcomes.__setitem__(j.id, runtime.run_job(j.id)))
            for j in jobs
        ]
        for thread in threads:
            thread.start()
        while not all_submitted_one_running(runtime, 2):
            threading.Event().wait(0.01)
        runtime.begin_shutdown(grace_s=120.0)  # the running one finishes, the other goes back
        for thread in threads:
            thread.join(180)
    assert sorted(outcomes.values()) == ["released", "succeeded"]
    statuses = sorted(result_of(sessions, job.id)[0] for job in jobs)
    assert statuses == ["queued", "succeeded"]


def all_submitted_one_running(runtime: Any, count: int) -> bool:
    futures = [h.future for h in list(runtime.held.values()) if h.future is not None]
    return len(futures) == count and sum(f.running() for f in futures) == 1


def test_a_killed_model_process_hands_its_jobs_back(
    runtime: Any, sessions: Any, storage: ObjectStorage
) -> None:
    job = queue_job(sessions, storage, runtime.spec, [photo(71)], params={"max_new_tokens": 400})
    outcome: list[str] = []
    thread = threading.Thread(target=lambda: outcome.append(runtime.run_job(job.id)))
    thread.start()
    while not (runtime.held.get(job.id) and runtime.held[job.id].future is not None):
        threading.Event().wait(0.01)
    os.kill(runtime.model.pid, signal.SIGKILL)
    thread.join(120)
    assert outcome == ["released"]
    assert result_of(sessions, job.id)[0] == "queued"
    with pytest.raises(ModelProcessDied):  # new jobs are refused, not lost
        runtime.model.submit(None, announcement=None)


def test_the_model_process_exits_with_its_front(tmp_path: Path, tiny_spec: ModelSpec) -> None:
    import subprocess
    import sys

    marker = tmp_path / "pid"
    script = (
        "import os, sys, time\n"
        "from core.config import ModelSpec\n"
        "from tests.worker.test_model_process import client_for\n"
        f"spec = ModelSpec.model_validate_json({tiny_spec.model_dump_json()!r})\n"
        "client = client_for(spec, None)\n"
        "client.launch(timeout_s=300)\n"
        f"open({str(marker)!r}, 'w').write(str(client.pid))\n"
        "time.sleep(300)\n"
    )
    front = subprocess.Popen([sys.executable, "-c", script])  # noqa: S603 - this interpreter
    try:
        while not marker.exists() and front.poll() is None:
            threading.Event().wait(0.1)
        child = int(marker.read_text())
        front.kill()
        front.wait(30)
        for _ in range(600):
            if not _alive(child):
                break
            threading.Event().wait(0.1)
        assert not _alive(child)
    finally:
        front.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie counts as gone: its parent (the front, killed) was the one to reap it.
    status = Path(f"/proc/{pid}/stat").read_text().split()[2]
    return status != "Z"


def test_the_probes_and_heartbeat_read_the_model_process_statistics(
    runtime: Any, sessions: Any, storage: ObjectStorage
) -> None:
    from worker.health import WorkerHealth

    health = WorkerHealth(worker_id="cpu0.tiny@test", model="tiny", stuck_after_s=600)
    batches: list[int] = []
    health.on_batch = lambda size, seconds: batches.append(size)  # type: ignore[method-assign]
    health.watch(runtime, watchdog_interval_s=None)
    cached = runtime.model.cache_counts()
    job = queue_job(sessions, storage, runtime.spec, [photo(81)], params={"max_new_tokens": 3})
    assert runtime.run_job(job.id) == "succeeded"
    # The prepare cache as the front's index of it has it: one more image kept.
    counts = runtime.model.cache_counts()
    assert counts["misses"] == cached["misses"] + 1 and counts["hits"] == cached["hits"]
    assert counts["entries"] == cached["entries"] + 1 and counts["bytes"] > cached["bytes"]
    scraped = {m.name: m.samples[0].value for m in health.collect()}
    assert scraped["internvl_jobs_prepare_cache_misses"] == counts["misses"]
    assert scraped["internvl_jobs_prepare_cache_bytes"] == counts["bytes"]
    while runtime.batcher.stats.jobs < 1 or not batches:  # the next statistics message
        threading.Event().wait(0.05)
    report = health.report()
    assert report["last_batch_at"] is not None and report["pending"] == 0
    assert batches == [1] and runtime.batcher.stats.as_dict()["jobs"] == 1
    # The model thread's CPU arrives as a reading (its clock belongs to the model process).
    assert runtime.batcher.stats.loop_clock is None
    assert runtime.batcher.stats.as_dict()["loop_cpu_s"] > 0


def test_jobs_prepared_in_the_task_threads_reach_the_model_process_as_shared_tensors(
    service_settings: Settings, sessions: Any, storage: ObjectStorage
) -> None:
    from worker.process import _front_preparing

    spec = service_settings.default_model
    client = client_for(spec, None)  # model_process: on without prepare processes
    client.launch(timeout_s=300)
    preparing = _front_preparing(spec)
    with started_runtime(
        service_settings, sessions, storage, spec=spec, preparing=preparing, model=client
    ) as runtime:  # the runtime's batcher is the client: stopping it stops the model process
        job = queue_job(sessions, storage, spec, [photo(91)], params={"max_new_tokens": 3})
        assert runtime.run_job(job.id) == "succeeded"
