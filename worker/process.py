"""One worker process: loads its model once, then consumes its model's queue with Celery threads.

SIGTERM starts Celery's warm shutdown: the consumer stops taking messages (those prefetched
and not started go back to Redis), jobs waiting for a batch are handed back to the queue at
once, and running batches get shutdown_grace_s to finish before their jobs are handed back
too. The process then exits; nothing it held is left for the lease sweeper.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from core.config import Settings
from core.db import make_engine, make_session_factory
from core.hooks import install_job_hooks
from core.images import set_pixel_limit
from core.job_telemetry import install_job_telemetry
from core.logs import set_process_fields, setup_logging
from core.metrics import BUILD_INFO
from core.models import WorkerState
from core.notify import job_feed
from core.probe_server import ProbeServer, start_probe_server
from core.queue import celery_worker, make_celery
from core.storage import settings_storage
from worker.health import WorkerHealth, probe_port
from worker.heartbeat import Heartbeat

if TYPE_CHECKING:
    from worker.runtime import WorkerRuntime

log = logging.getLogger("worker.process")


def worker_name(model_alias: str, device: str, host: str | None = None) -> str:
    """The Celery hostname of a worker: device and model first, then the host."""
    return f"{device}.{model_alias}@{host or socket.gethostname()}"


def worker_engine(settings: Settings) -> Engine:
    """The worker's database engine: a pool of 4 connections, as many again for bursts, unless
    database_pool_size says otherwise; by default never fewer than the group commit's
    transactions at once (database_commit_concurrency) and two more (the heartbeat, reads).
    The task threads' claims and outcomes all go through the group commit, so the pool does
    not grow with the threads (docs/scaling.md)."""
    automatic = max(4, settings.database_commit_concurrency + 2)
    return make_engine(settings.database_url, pool_size=settings.pool_size(automatic))


def serve(*, settings: Settings, model_alias: str, device: str, loglevel: str = "INFO") -> None:
    """Run a worker for one model on one device (already pinned by the launcher) until stopped."""
    setup_logging(loglevel, json_lines=settings.log_json)
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # Celery's own lines for each task received and succeeded repeat what each job's
        # events log (internvl_jobs.jobs: job.running, job.succeeded, with the job's id), at
        # about 0.05 ms of CPU each; its warnings and errors stay.
        for per_task in ("celery.worker.strategy", "celery.app.trace"):
            logging.getLogger(per_task).setLevel(logging.WARNING)
    spec = settings.model(model_alias)
    if spec is None:
        raise SystemExit(f"model '{model_alias}' is not in the registry")
    name = worker_name(model_alias, device)
    health, probes = _start_health(settings, name, model_alias, device)
    set_pixel_limit(settings.max_image_pixels)
    install_job_hooks(job_feed(settings))  # long-poll wake-ups, batch settling
    sessions = make_session_factory(worker_engine(settings))
    storage = settings_storage(settings)
    state: dict[str, Any] = {"runtime": None, "model_died": False}

    def held() -> dict[str, int]:
        return state["runtime"].held_attempts() if state["runtime"] else {}

    def stats() -> dict[str, Any]:
        return heartbeat_stats(state["runtime"])

    heartbeat = Heartbeat(
        sessions=sessions,
        worker_id=name,
        device=device,
        model=model_alias,
        queue=spec.queue,
        lease_s=settings.lease_s,
        interval_s=settings.heartbeat_s,
        held=held,
        on_check=lambda check: state["runtime"] and state["runtime"].apply_lease_check(check),
        stats=stats,
        cancel_poll_s=settings.cancel_poll_s,
    )
    health.heartbeat = heartbeat
    heartbeat.start()

    def on_model_death() -> None:
        # The jobs in the model process were handed back (their futures failed); stop as a
        # SIGTERM would, then exit non-zero so the launcher starts a new worker.
        state["model_died"] = True
        os.kill(os.getpid(), signal.SIGTERM)

    runtime = _load_runtime(
        settings, spec.alias, name, device, sessions, storage, heartbeat,
        loglevel=loglevel, on_model_death=on_model_death,
    )  # fmt: skip
    state["runtime"] = runtime
    health.watch(runtime)
    runtime.batcher.start()
    health.state = WorkerState.READY
    heartbeat.record_state(WorkerState.READY)
    try:
        _consume(settings, runtime, name, loglevel)
    finally:
        health.state = WorkerState.STOPPING
        heartbeat.record_state(WorkerState.STOPPING)
        health.stop_watchdog()
        runtime.batcher.stop()
        runtime.preparing.close()
        heartbeat.stop(final_state=WorkerState.STOPPED)
        if probes is not None:
            probes.stop()
    if state["model_died"]:
        raise SystemExit("the model process died; the worker exits for its launcher to restart")


def heartbeat_stats(runtime: WorkerRuntime | None) -> dict[str, Any]:
    """What each heartbeat records of the worker (`GET /v1/workers` shows it as `stats`)."""
    if runtime is None:
        return {"jobs_done": 0}
    return {
        "jobs_done": runtime.jobs_done,
        **runtime.batcher.stats.as_dict(),
        "prepare_cache": runtime.model.cache_counts(),
    }


def _start_health(
    settings: Settings, name: str, model_alias: str, device: str
) -> tuple[WorkerHealth, ProbeServer | None]:
    """Log as this worker, count its job events, and serve its probes and metrics."""
    set_process_fields(worker=name)
    install_job_telemetry()
    BUILD_INFO.labels("worker").set(1)
    health = WorkerHealth(
        worker_id=name,
        model=model_alias,
        stuck_after_s=settings.generation_stuck_s,
        exit_when_stuck=settings.exit_when_stuck,
    )
    position = [m.alias for m in settings.models].index(model_alias)
    port = probe_port(settings.worker_probe_port, device=device, model_position=position)
    probes = start_probe_server(
        host=settings.probe_host,
        port=port,
        probes=health.probes(),
        registries=(health.registry(),),
    )
    return health, probes


def _load_runtime(
    settings: Settings,
    alias: str,
    name: str,
    device: str,
    sessions: Any,
    storage: Any,
    heartbeat: Heartbeat,
    *,
    loglevel: str = "INFO",
    on_model_death: Callable[[], None] | None = None,
) -> Any:
    import torch

    from worker.runtime import WorkerRuntime

    spec = settings.model(alias)
    assert spec is not None
    if settings.worker_cpu_threads:  # the launcher's share of the host's cores
        torch.set_num_threads(settings.worker_cpu_threads)
    pool = _prepare_pool(settings, spec)  # its processes load the processor while the model loads
    engine = model = None
    try:
        if uses_model_process(settings):
            model = _model_client(settings, spec, device, pool, loglevel, on_model_death)
        else:
            engine = _engine(settings, spec, device)
        if pool is not None:
            pool.wait_ready()
            if engine is not None:
                engine.prepare_cache.max_entries = pool.cache_entries
    except Exception:
        log.exception("loading %s failed", spec.checkpoint)
        if pool is not None:
            pool.close()
        heartbeat.stop(final_state=WorkerState.DEFUNCT)
        raise
    log.info(
        "jobs prepare in %s; the model runs in %s",
        f"{pool.processes} prepare processes" if pool is not None else "the task threads",
        "its own process" if model is not None else "the worker's process",
    )
    preparing = pool
    if model is not None and pool is None:  # no engine here: a processor to prepare with
        preparing = _front_preparing(spec)
    return WorkerRuntime(
        settings=settings,
        spec=spec,
        sessions=sessions,
        storage=storage,
        engine=engine,
        worker_id=name,
        preparing=preparing,
        model=model,
    )


def uses_model_process(settings: Settings) -> bool:
    """Whether the model runs in a process of its own (`model_process`; auto: with a pool)."""
    from worker.launcher import prepare_processes_per_worker

    if settings.model_process == "auto":
        return prepare_processes_per_worker(settings) > 0
    return settings.model_process == "on"


def _model_client(
    settings: Settings,
    spec: Any,
    device: str,
    pool: Any,
    loglevel: str,
    on_death: Callable[[], None] | None,
) -> Any:
    """The model process, started and loaded (it maps the prepare slots' block, if any)."""
    from worker.model_client import ModelClient
    from worker.model_process import ModelProcessConfig

    arena = pool.arena if pool is not None else None
    config = ModelProcessConfig(
        spec=spec,
        device=device,
        simulated_device=settings.simulated_device,
        cpu_threads=settings.worker_cpu_threads or None,
        slots=None if arena is None else (arena.name, arena.count, arena.slot_bytes),
        loglevel=loglevel,
        log_json=settings.log_json,
    )
    client = ModelClient(
        config, arena=arena, cache_bytes=spec.prepare_cache_mb * 2**20, on_death=on_death
    )
    client.launch()
    log.info("the model runs in process %d", client.pid)
    return client


def _front_preparing(spec: Any) -> Any:
    """Preparing in the task threads with the checkpoint's processor only (no weights here)."""
    from transformers import AutoProcessor

    from worker.preparer import Preparer
    from worker.preparing import InProcessPreparing

    processor = AutoProcessor.from_pretrained(spec.checkpoint, revision=spec.revision)
    return InProcessPreparing(Preparer(processor, model_alias=spec.alias, cache_bytes=0))


def _prepare_pool(settings: Settings, spec: Any) -> Any:
    """The worker's prepare processes, started (None: jobs prepare in the task threads)."""
    from worker.gathering import IMAGE_READ_DEADLINE_S
    from worker.launcher import prepare_processes_per_worker
    from worker.prepare_pool import PreparePool
    from worker.prepare_reads import StorageAccess

    processes = prepare_processes_per_worker(settings)
    if processes == 0:
        return None
    slots = settings.task_threads(spec)  # one per task thread
    pool = PreparePool(
        spec,
        processes=processes,
        pixel_limit=settings.max_image_pixels,
        slots=slots if settings.prepare_slot_mb else 0,
        slot_bytes=settings.prepare_slot_mb * 2**20,
        # Each prepare process reads its jobs' images with its own client (the same deadline
        # as the task threads' reads), so downloads leave the model's process too.
        storage=StorageAccess(
            settings.storage_url,
            settings.s3_endpoint_url,
            IMAGE_READ_DEADLINE_S,
            region=settings.s3_region,
            s3_direct=settings.s3_direct,
        ),
    )
    pool.start()
    return pool


def _engine(settings: Settings, spec: Any, device: str) -> Any:
    from worker.model_process import load_engine

    return load_engine(spec, device, settings.simulated_device)


def _consume(settings: Settings, runtime: Any, name: str, loglevel: str) -> None:
    from celery.signals import worker_shutting_down

    from worker.tasks import register_tasks

    app = make_celery(settings)
    runtime.celery = app
    register_tasks(app, runtime)

    def on_shutting_down(how: str = "Warm", **_: Any) -> None:
        # Runs in the signal handler: begin_shutdown only flags jobs and starts a timer.
        runtime.begin_shutdown(settings.shutdown_grace_s if how == "Warm" else 0.0)

    worker_shutting_down.connect(on_shutting_down, weak=False)
    threads = settings.task_threads(runtime.spec)
    worker = celery_worker(
        app, settings, hostname=name, queue=runtime.spec.queue, threads=threads, loglevel=loglevel
    )
    worker.start()
