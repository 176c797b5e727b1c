"""The tiny model loaded once, and a worker runtime on the real database and S3 server."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from core.config import ModelSpec, Settings
from core.db import transaction
from core.jobs import create_job
from core.models import Job
from core.specs import GenerationParams
from core.storage import ObjectStorage, open_storage, store_once
from core.tenants import ensure_default_tenant


@pytest.fixture(scope="session")
def engine(tiny_model_path: Path) -> Any:
    from worker.engine import InternVLEngine

    spec = ModelSpec(alias="tiny", checkpoint=str(tiny_model_path), tile_size=64)
    return InternVLEngine(spec, device="cpu")


@pytest.fixture
def storage(service_settings: Settings) -> ObjectStorage:
    return open_storage(service_settings.storage_url, endpoint_url=service_settings.s3_endpoint_url)


@pytest.fixture
def worker_runtime(
    service_settings: Settings, sessions: Any, storage: ObjectStorage, engine: Any
) -> Iterator[Any]:
    from worker.runtime import WorkerRuntime

    engine.prepare_cache.clear()  # the engine outlives tests; the bytes behind a sha may not
    runtime = WorkerRuntime(
        settings=service_settings,
        spec=service_settings.default_model,
        sessions=sessions,
        storage=storage,
        engine=engine,
        worker_id="cpu0.tiny@test",
    )
    runtime.batcher.start()
    yield runtime
    runtime.batcher.stop()


def photo(seed: int = 0, size: tuple[int, int] = (160, 120)) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise(size, 40 + seed).convert("RGB").save(buffer, format="JPEG")
    return buffer.getvalue()


def queue_job(
    sessions: Any,
    storage: ObjectStorage,
    model: ModelSpec,
    images: list[bytes],
    *,
    task: str = "caption",
    **fields: Any,
) -> Job:
    """Store the images and insert a queued job, as the API would."""
    shas = [store_once(storage, data, content_type="image/jpeg")[0] for data in images]
    params = fields.pop("params", {})
    spec = {
        "task": task,
        "images": shas,
        "params": GenerationParams(**params).model_dump(),
        **fields,
    }
    with transaction(sessions) as session:
        tenant = ensure_default_tenant(session)
        return create_job(
            session=session,
            tenant_id=tenant.id,
            model=model,
            spec=spec,
            image_shas=shas,
            max_attempts=3,
        )
