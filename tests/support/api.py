"""Requests and rows for API tests: images, bodies, API keys, and what a worker would do."""

from __future__ import annotations

import base64
import io

import redis
from PIL import Image
from sqlalchemy import func, select

from api.deps import Runtime
from core.db import transaction
from core.jobs import claim_job, complete_job
from core.models import Image as ImageRow
from core.models import Job
from core.queue import queue_keys
from core.tenants import create_api_key, ensure_tenant


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


def queued_messages(runtime: Runtime) -> int:
    client = redis.Redis.from_url(runtime.settings.broker_url)
    return sum(int(client.llen(key)) for key in queue_keys(runtime.settings.default_model.queue))
