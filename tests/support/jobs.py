"""Jobs in the database as the API would leave them, and the messages Redis holds for them."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from typing import Any

import redis
from sqlalchemy import select, update

from core.config import ModelSpec, Settings
from core.db import transaction, utcnow
from core.jobs import claim_job, insert_job
from core.jobs import new_job as queued_job
from core.models import Job, JobEvent
from core.queue import queue_keys
from core.specs import GenerationParams
from core.tenants import ensure_default_tenant, ensure_tenant


def new_job(
    sessions: Any,
    model: ModelSpec,
    *,
    priority: int = 0,
    max_attempts: int = 3,
    tenant: str | None = None,
) -> str:
    """A committed queued job of the named tenant, else the default one (no images)."""
    params = GenerationParams().model_dump()
    spec = {"task": "prompt", "prompt": "hi", "images": [], "params": params}
    with transaction(sessions) as session:
        tenant_row = ensure_tenant(session, tenant) if tenant else ensure_default_tenant(session)
        job = insert_job(
            session,
            queued_job(
                tenant_id=tenant_row.id,
                model=model,
                spec=spec,
                max_attempts=max_attempts,
                priority=priority,
            ),
            image_shas=[],
        )
        return job.id


def running_job(sessions: Any, model: ModelSpec, *, lease_s: float, **fields: Any) -> str:
    """A job claimed by a worker 'w1' whose lease ends lease_s from now (negative: expired)."""
    job_id = new_job(sessions, model, **fields)
    with transaction(sessions) as session:
        assert claim_job(session, job_id, worker_id="w1", lease_s=60) is not None
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))
        )
    return job_id


def load(sessions: Any, job_id: str) -> Job:
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def event_log(sessions: Any, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    with sessions() as session:
        rows = session.execute(
            select(JobEvent.type, JobEvent.data)
            .where(JobEvent.job_id == job_id)
            .order_by(JobEvent.id)
        )
        return [(kind, data) for kind, data in rows]


def published_ids(settings: Settings) -> list[str]:
    """Job ids of the messages waiting in the default model's queue, most urgent first."""
    client = redis.Redis.from_url(settings.broker_url)
    ids: list[str] = []
    for key in queue_keys(settings.default_model.queue):
        # kombu pushes on the left and pops on the right: the right end is served first.
        for raw in reversed(client.lrange(key, 0, -1)):
            body = json.loads(base64.b64decode(json.loads(raw)["body"]))
            ids.append(body[0][0])  # the task's first argument: the job id
    client.close()
    return ids
