"""Worker runtimes for tests, on the real database and S3 server, built as a worker builds them.

`started_runtime` builds one, its batcher started, and stops it (and closes its prepare pool)
after: the model on an engine in the test's process, or in a model process (a ModelClient);
jobs preparing in the task threads, or in a PreparePool. `slotted_pool` is the pool of a
worker with prepare processes: one process, a slot per task thread, its own storage client.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from core.config import ModelSpec, Settings
from core.storage import ObjectStorage
from worker.prepare_pool import PreparePool, Work, prepare_job
from worker.prepare_reads import StorageAccess

SLOTS = 4  # a slot per task thread
SLOT_BYTES = 8 * 2**20  # holds a 13-tile image of 448 px
WORKER_ID = "cpu0.tiny@test"


def slotted_pool(
    settings: Settings, spec: ModelSpec | None = None, *, work: Work = prepare_job
) -> PreparePool:
    """A prepare pool with slots, reading images with its own storage client (not started)."""
    access = StorageAccess(settings.storage_url, settings.s3_endpoint_url, read_deadline_s=30.0)
    return PreparePool(
        spec or settings.default_model,
        processes=1,
        work=work,
        slots=SLOTS,
        slot_bytes=SLOT_BYTES,
        storage=access,
    )


@contextmanager
def started_runtime(
    settings: Settings,
    sessions: Any,
    storage: ObjectStorage,
    *,
    engine: Any = None,
    preparing: Any = None,
    model: Any = None,
    spec: ModelSpec | None = None,
) -> Iterator[Any]:
    """A worker runtime with its batcher started; the batcher stopped and a pool closed after."""
    from worker.runtime import WorkerRuntime

    if engine is not None:
        engine.prepare_cache.clear()  # the engine outlives tests; the bytes behind a sha may not
    runtime = WorkerRuntime(
        settings=settings,
        spec=spec or settings.default_model,
        sessions=sessions,
        storage=storage,
        engine=engine,
        worker_id=WORKER_ID,
        preparing=preparing,
        model=model,
    )
    runtime.batcher.start()
    try:
        yield runtime
    finally:
        runtime.batcher.stop()
        if isinstance(preparing, PreparePool):
            preparing.close()
