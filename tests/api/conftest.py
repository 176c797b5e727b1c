"""An API client on the real stack (PostgreSQL, Redis broker, S3 server), in process."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select

from api.app import create_app
from api.deps import Runtime
from core.config import Settings
from core.db import transaction
from core.jobs import claim_job, complete_job
from core.models import Image as ImageRow
from core.models import Job
from core.tenants import create_api_key, ensure_tenant


@pytest.fixture
def runtime(service_settings: Settings) -> Iterator[Runtime]:
    runtime = Runtime.from_settings(service_settings)
    yield runtime
    runtime.close()


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime=runtime)) as test_client:
        yield test_client


def png_bytes(
    size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (200, 30, 30)
) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def noise_png(size: tuple[int, int] = (300, 300)) -> bytes:
    """A PNG that does not compress: its size follows its pixel count."""
    buffer = io.BytesIO()
    Image.effect_noise(size, 80).convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def stored_state(runtime: Runtime) -> tuple[int, int, int]:
    """(jobs, image rows, objects in storage): what a refused request must leave at zero."""
    with runtime.sessions() as session:
        jobs = session.scalar(select(func.count()).select_from(Job)) or 0
        images = session.scalar(select(func.count()).select_from(ImageRow)) or 0
    objects = len(list(runtime.storage.list_objects("")))
    return jobs, images, objects


@pytest.fixture
def auth_runtime(service_settings: Settings) -> Iterator[Runtime]:
    """A runtime that requires API keys, as production does."""
    runtime = Runtime.from_settings(service_settings.model_copy(update={"auth_enabled": True}))
    yield runtime
    runtime.close()


@pytest.fixture
def auth_client(auth_runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime=auth_runtime)) as test_client:
        yield test_client


def make_key(runtime: Runtime, tenant: str) -> dict[str, str]:
    """Authorization headers with a new key of the named tenant (created if new)."""
    with transaction(runtime.sessions) as session:
        tenant_row = ensure_tenant(session, tenant)
        _, plaintext = create_api_key(session, tenant_row.id)
    return {"Authorization": f"Bearer {plaintext}"}


def caption_body(data: bytes | None = None, **extra: object) -> dict:
    return {"task": "caption", "images": [{"data": b64(data or png_bytes())}], **extra}


def finish_job(runtime: Runtime, job_id: str, text: str = "a red square") -> None:
    """Do what a worker does: claim the job, then store its result."""
    with transaction(runtime.sessions) as session:
        job = claim_job(session, job_id, worker_id="test-worker", lease_s=60)
        assert job is not None
        attempt = job.attempts
    with transaction(runtime.sessions) as session:
        complete_job(
            session, job_id, attempt=attempt, result={"text": text}, usage={"image_tiles": [1]}
        )
