"""`internvl-jobs bench pieces`: the CPU of each piece of the service's per-job work.

The simulated-device bench gives the service's overhead per job as one figure; this one takes
it apart. Each piece runs many times on the real components (an `internvl-jobs api` process,
PostgreSQL, Redis, an S3 server, a Celery worker with the service's settings), one call at a
time, and reports the CPU time of the process doing the work per call: the API process's for
requests (from /proc), this process's thread for calls made here, the Celery worker's for its
tasks. Run it on a quiet machine: the figures are CPU, not wall time, but other work on the
same cores still inflates them.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import httpx
from sqlalchemy import update

from bench.photos import photo_jpeg
from bench.service import MOTO_CREDENTIALS
from bench.stack import cpu_seconds
from bench.submit import api_process, ensure_bucket
from core.config import Settings
from devtools.harness import free_port, moto_server

NOOP_QUEUE = "bench-noop"
GROUP = 8  # the claims or completions committed together in the grouped pieces
PUBLISH_QUEUE = "bench-publish"
_COUNTER = "bench-pieces-noop"  # the Redis key the no-op task counts itself in
Piece = tuple[str, float]


def run_pieces(
    *, database_url: str, broker_url: str, s3_endpoint_url: str | None, calls: int
) -> list[Piece]:
    """(piece, CPU ms per call) for the API's requests, the submission, the worker's pieces."""
    from core.migrations import upgrade

    upgrade(database_url)
    with ExitStack() as stack:
        if not s3_endpoint_url:
            s3_endpoint_url, _ = stack.enter_context(moto_server())
        settings = Settings(
            database_url=database_url,
            broker_url=broker_url,
            storage_url="s3://bench-pieces/images",
            s3_endpoint_url=s3_endpoint_url,
            auth_enabled=False,
            environment="development",
            log_level="WARNING",
        )
        with _credentials():
            ensure_bucket(settings)
            pictures = [photo_jpeg(640, 480, seed=7_000_000 + i) for i in range(2 * calls)]
            pieces = _api_pieces(settings, pictures[:calls], calls)
            pieces += _submission_pieces(settings, pictures[calls:], calls)
            pieces += _worker_pieces(settings, calls)
            celery_task = (
                "worker: Celery receiving, running and acknowledging a task that does nothing "
                f"({settings.task_threads(settings.default_model)} threads)"
            )
            pieces.append((celery_task, _celery_task_ms(settings, calls)))
    return pieces


@contextmanager
def _credentials() -> Iterator[None]:
    """moto's fake credentials, for this process and the API it starts, where none are set."""
    import os

    added = {key: value for key, value in MOTO_CREDENTIALS.items() if key not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def _per_call(function: Callable[[int], Any], calls: int, clock: Callable[[], float]) -> float:
    """CPU ms per call of function(i) for i in range(calls), read from `clock`."""
    before = clock()
    for i in range(calls):
        function(i)
    return round(1000 * (clock() - before) / calls, 2)


def _caption(picture: bytes) -> dict[str, Any]:
    return {
        "task": "caption",
        "images": [{"data": base64.b64encode(picture).decode()}],
        "params": {"max_new_tokens": 32},
    }


def _api_pieces(settings: Settings, pictures: list[bytes], calls: int) -> list[Piece]:
    """Requests through the real API process, one at a time; its CPU per request."""
    from core.db import make_engine, make_session_factory, transaction
    from core.models import Job

    with (
        api_process(settings, free_port(), {}) as (url, pid),
        httpx.Client(base_url=url, timeout=60) as client,
    ):

        def api_cpu() -> float:
            return cpu_seconds(pid)

        for _ in range(20):  # warm: imports, pools, caches
            client.get("/healthz")
        client.post("/v1/jobs", json=_caption(photo_jpeg(64, 48, seed=1)))
        healthz = _per_call(lambda i: client.get("/healthz"), calls, api_cpu)
        ids: list[str] = []
        post = _per_call(
            lambda i: ids.append(client.post("/v1/jobs", json=_caption(pictures[i])).json()["id"]),
            calls,
            api_cpu,
        )
        queued = _per_call(lambda i: client.get(f"/v1/jobs/{ids[i]}"), calls, api_cpu)
        engine = make_engine(settings.database_url, pool_size=1)
        with transaction(make_session_factory(engine)) as session:  # as a worker would end them
            session.execute(
                update(Job)
                .where(Job.id.in_(ids))
                .values(status="succeeded", result={"text": "a red circle"})
            )
        engine.dispose()
        finished = _per_call(lambda i: client.get(f"/v1/jobs/{ids[i]}"), calls, api_cpu)
        waited = _per_call(
            lambda i: client.get(f"/v1/jobs/{ids[i]}", params={"wait": 30}), calls, api_cpu
        )
    return [
        ("API: GET /healthz (uvicorn, the middlewares, FastAPI: any request's floor)", healthz),
        ("API: POST /v1/jobs with a new 640x480 JPEG", post),
        ("API: GET /v1/jobs/{id}, queued (its queue position is computed)", queued),
        ("API: GET /v1/jobs/{id}, finished", finished),
        ("API: GET /v1/jobs/{id}?wait=30, finished", waited),
    ]


def _submission_pieces(settings: Settings, pictures: list[bytes], calls: int) -> list[Piece]:
    """The submission called in this process (no HTTP), and the calls it makes."""
    from api.deps import Runtime
    from api.intake import submit_job
    from api.routes.jobs import parse_submission
    from core.db import transaction
    from core.queue import publish_job
    from core.tenants import ensure_tenant

    runtime = Runtime.from_settings(settings)
    try:
        with transaction(runtime.sessions) as session:
            tenant = ensure_tenant(session, "default").id
        bodies = [json.dumps(_caption(picture)) for picture in pictures]

        def submit(i: int) -> None:
            submission = parse_submission(bodies[i], [], "the body")
            submit_job(runtime, tenant_id=tenant, request=submission.request, files=[], fetched={})

        submit(0)
        submitted = _per_call(lambda i: submit(i + 1), calls - 1, time.thread_time)
        put = _per_call(
            lambda i: runtime.storage.put_if_absent(f"pieces/{i}", pictures[i]),
            calls,
            time.thread_time,
        )
        # On a queue of its own, emptied after: no worker ever sees these messages.
        model = settings.default_model.model_copy(update={"queue": PUBLISH_QUEUE})
        publish = _per_call(
            lambda i: publish_job(runtime.celery, model, f"job_pieces_{i}"),
            calls,
            time.thread_time,
        )
    finally:
        runtime.close()
        _drop_queue(settings.broker_url, PUBLISH_QUEUE)
    return [
        ("API: the submission called in-process (no HTTP)", submitted),
        (f"API: of which the S3 conditional PUT ({_s3_path(runtime.storage)})", put),
        ("API: of which the Celery publish (no task event)", publish),
    ]


def _worker_pieces(settings: Settings, calls: int) -> list[Piece]:
    """A worker's transactions and image read, called in this process."""
    from bench.commits import insert_queued_jobs
    from core.db import make_engine, make_session_factory, transaction
    from core.jobs import claim_job, complete_job
    from core.storage import settings_storage

    engine = make_engine(settings.database_url, pool_size=2)
    sessions = make_session_factory(engine)
    storage = settings_storage(settings)
    storage.put("pieces/read", photo_jpeg(640, 480, seed=3))
    with transaction(sessions) as session:
        ids = insert_queued_jobs(
            session, tenant="pieces", model=settings.default_model, count=(1 + GROUP) * calls
        )
    alone, grouped = ids[:calls], ids[calls:]
    result = {"text": "a red circle", "finish_reason": "length"}
    usage = {"prompt_tokens": 3358, "completion_tokens": 32, "image_tiles": [13]}

    def claim(job_ids: list[str]) -> None:
        with transaction(sessions) as session:  # one transaction, as worker.group_commit's
            for job_id in job_ids:
                claim_job(session, job_id, worker_id="pieces", lease_s=60)

    def complete(job_ids: list[str]) -> None:
        with transaction(sessions) as session:
            for job_id in job_ids:
                complete_job(session, job_id, attempt=1, result=result, usage=usage)

    def in_groups(piece: Callable[[list[str]], None]) -> float:
        """CPU ms per job of the piece run on groups of GROUP jobs."""
        per_group = _per_call(
            lambda i: piece(grouped[GROUP * i : GROUP * (i + 1)]), calls, time.thread_time
        )
        return round(per_group / GROUP, 2)

    def checkout(i: int) -> None:
        with sessions() as session:
            session.connection()

    pieces = [
        (
            "worker: the claim transaction",
            _per_call(lambda i: claim([alone[i]]), calls, time.thread_time),
        ),
        (
            "worker: the completion transaction",
            _per_call(lambda i: complete([alone[i]]), calls, time.thread_time),
        ),
        (f"worker: a claim, {GROUP} committed together (per claim)", in_groups(claim)),
        (f"worker: a completion, {GROUP} committed together (per completion)", in_groups(complete)),
        (
            f"worker: the S3 GET of a 640x480 JPEG ({_s3_path(storage)})",
            _per_call(lambda i: storage.get("pieces/read"), calls, time.thread_time),
        ),
        (
            "a pooled connection's checkout (back to back: no ping)",
            _per_call(checkout, calls, time.thread_time),
        ),
    ]
    engine.dispose()
    return pieces


def _celery_task_ms(settings: Settings, calls: int) -> float:
    """CPU ms per task of a Celery worker (the service's settings) running a task that does
    nothing but count itself in Redis."""
    import redis

    from core.queue import make_celery

    counter = redis.Redis.from_url(settings.broker_url)
    counter.delete(_COUNTER)
    app = make_celery(settings)
    child = subprocess.Popen(  # noqa: S603 - fixed arguments
        [sys.executable, "-m", "bench.pieces", settings.broker_url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        app.send_task("bench.noop", queue=NOOP_QUEUE)
        _wait_count(counter, 1, child)
        before = cpu_seconds(child.pid)
        for _ in range(calls):
            app.send_task("bench.noop", queue=NOOP_QUEUE)
        _wait_count(counter, calls + 1, child)
        return round(1000 * (cpu_seconds(child.pid) - before) / calls, 2)
    finally:
        child.terminate()
        child.wait(30)
        app.close()
        counter.delete(_COUNTER)


def _drop_queue(broker_url: str, queue: str) -> None:
    """Delete a queue's Redis lists (one per priority step)."""
    import redis

    client = redis.Redis.from_url(broker_url)
    keys = list(client.scan_iter(f"{queue}*"))
    if keys:
        client.delete(*keys)


def _wait_count(counter: Any, count: int, child: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while int(counter.get(_COUNTER) or 0) < count:
        if child.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the Celery worker of the bench stopped or took too long")
        time.sleep(0.02)


def _noop_worker(broker_url: str) -> None:
    """A Celery worker as the service builds one, with one task that only counts itself."""
    import redis

    from core.queue import celery_worker, make_celery

    settings = Settings(broker_url=broker_url, environment="development", log_level="WARNING")
    app = make_celery(settings)
    counter = redis.Redis.from_url(broker_url)

    @app.task(name="bench.noop")
    def noop() -> None:
        counter.incr(_COUNTER)

    worker = celery_worker(
        app,
        settings,
        hostname="bench-noop@pieces",
        queue=NOOP_QUEUE,
        threads=settings.task_threads(settings.default_model),
        loglevel="WARNING",
    )
    worker.start()


def format_pieces(pieces: list[Piece]) -> str:
    """The figures as a Markdown table."""
    lines = ["| piece | CPU ms per call |", "|---|---:|"]
    lines += [f"| {name} | {ms} |" for name, ms in pieces]
    return "\n".join(lines)


def _s3_path(storage: object) -> str:
    """Which path a storage's S3 object calls take: the direct one, or boto3."""
    if getattr(storage, "direct", None) is not None:
        return "botocore signer on urllib3"
    return "boto3" if hasattr(storage, "client") else "local directory"


if __name__ == "__main__":
    _noop_worker(sys.argv[1])
