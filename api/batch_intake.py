"""Batch submission: every job is checked before anything is stored; then one transaction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from api import strict_json
from api.backpressure import check_queue_room
from api.deps import Runtime
from api.fetch import fetch_images, image_urls
from api.intake import (
    ImageSet,
    collect_images,
    collect_video,
    forget_objects,
    job_spec,
    put_new_objects,
    request_limits,
    resolve_model,
    upsert_image_rows,
)
from core.batches import create_batch
from core.config import ModelSpec
from core.db import transaction, utcnow
from core.deadlines import deadline_of, earliest
from core.dispatch import publish_or_defer
from core.errors import InvalidRequest, ServiceError
from core.jobs import insert_job, new_job
from core.models import Batch, Job
from core.retention import ensure_stored, hold_image_objects
from core.specs import (
    BatchCreate,
    BatchOptions,
    JobCreate,
    check_deadline,
    validate_job_request,
)
from core.webhooks import check_webhook_url


@dataclass
class PreparedJob:
    """A checked job of a batch, ready to store."""

    request: JobCreate
    custom_id: str
    model: ModelSpec
    images: ImageSet
    spec: dict[str, Any]


def parse_jsonl(text: bytes, options: BatchOptions, *, max_jobs: int | None = None) -> BatchCreate:
    """A batch from JSONL: one job request per non-empty line, each with its custom_id;
    refused as soon as it holds more than max_jobs lines."""
    jobs: list[JobCreate] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if max_jobs is not None and len(jobs) >= max_jobs:
            raise too_many_jobs(max_jobs)
        strict_json.parse(line, what=f"line {number}")
        try:
            job = JobCreate.model_validate_json(line)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise InvalidRequest(
                f"line {number}: {where + ': ' if where else ''}{first['msg']}",
                code="invalid_params",
                extra={"line": number},
            ) from exc
        if job.custom_id is None:
            raise InvalidRequest(
                f"line {number}: every line of a JSONL batch needs a custom_id",
                code="missing_custom_id",
                extra={"line": number},
            )
        jobs.append(job)
    if not jobs:
        raise InvalidRequest("the JSONL upload holds no job", code="invalid_params")
    return BatchCreate(jobs=jobs, webhook=options.webhook, metadata=options.metadata)


def too_many_jobs(max_jobs: int, count: int | None = None) -> InvalidRequest:
    """The refusal of a batch over max_jobs_per_batch."""
    held = f"{count} jobs" if count is not None else "more jobs"
    return InvalidRequest(f"{held} in one batch; the limit is {max_jobs}", code="too_many_jobs")


def _in_job(index: int, custom_id: str, exc: ServiceError) -> ServiceError:
    exc.detail = f"jobs[{index}] (custom_id {custom_id!r}): {exc.detail}"
    exc.extra = {**exc.extra, "job_index": index, "custom_id": custom_id}
    return exc


def batch_image_urls(batch: BatchCreate) -> list[tuple[int, str]]:
    """(position, url) of every image given by URL in the batch's jobs."""
    return [ref for request in batch.jobs for ref in image_urls(request)]


def prepare_jobs(
    runtime: Runtime,
    *,
    tenant_id: str,
    batch: BatchCreate,
    fetched: dict[str, bytes] | None = None,
) -> list[PreparedJob]:
    """Check every job (limits, images, queue room); raise naming the first job refused."""
    settings = runtime.settings
    if len(batch.jobs) > settings.max_jobs_per_batch:
        raise too_many_jobs(settings.max_jobs_per_batch, len(batch.jobs))
    custom_ids = [job.custom_id or str(index) for index, job in enumerate(batch.jobs)]
    if len(set(custom_ids)) != len(custom_ids):
        raise InvalidRequest("custom_id values must be unique", code="duplicate_custom_id")
    for request in batch.jobs:
        if request.webhook is not None:
            request.webhook.url = check_webhook_url(request.webhook.url, settings)
    if batch.webhook is not None:
        batch.webhook.url = check_webhook_url(batch.webhook.url, settings)
    check_deadline(batch)
    if fetched is None:  # the API fetches first, off its request threads (api.fetch)
        fetched = fetch_images(batch_image_urls(batch), settings)  # before a connection
    prepared: list[PreparedJob] = []
    with runtime.sessions() as session:
        check_queue_room(
            session,
            settings=settings,
            depth=runtime.queue_depth,
            tenant_id=tenant_id,
            adding=len(batch.jobs),
        )
        for index, (request, custom_id) in enumerate(zip(batch.jobs, custom_ids, strict=True)):
            try:
                model = resolve_model(settings, request.model)
                validate_job_request(
                    request, limits=request_limits(settings), max_tiles=model.max_tiles
                )
                images, messages = collect_images(
                    request,
                    [],
                    session=session,
                    tenant_id=tenant_id,
                    settings=settings,
                    fetched=fetched,
                )
                collect_video(
                    request,
                    images,
                    None,
                    session=session,
                    tenant_id=tenant_id,
                    settings=settings,
                    fetched=fetched,
                )
            except ServiceError as exc:
                raise _in_job(index, custom_id, exc) from exc
            spec = job_spec(request, images, messages)
            prepared.append(PreparedJob(request, custom_id, model, images, spec))
    return prepared


def submit_batch(
    runtime: Runtime,
    *,
    tenant_id: str,
    batch: BatchCreate,
    fetched: dict[str, bytes] | None = None,
) -> Batch:
    """Validate, store and queue a whole batch; nothing is stored when any job is refused."""
    prepared = prepare_jobs(runtime, tenant_id=tenant_id, batch=batch, fetched=fetched)
    all_images = ImageSet()
    for ready in prepared:
        all_images.new.update(ready.images.new)
        all_images.shas.extend(ready.images.objects)
    stored = put_new_objects(runtime, all_images)
    try:
        with transaction(runtime.sessions) as session:
            hold_image_objects(session, all_images.shas)  # against retention, see core.retention
            ensure_stored(runtime.storage, all_images.shas, all_images.new)
            row = create_batch(
                session,
                tenant_id=tenant_id,
                total=len(prepared),
                webhook=batch.webhook.model_dump() if batch.webhook else None,
                metadata=batch.metadata,
                expires_at=deadline_of(batch, now=utcnow()),
            )
            upsert_image_rows(session, tenant_id, all_images)
            jobs = [_create(session, runtime, tenant_id, row, ready) for ready in prepared]
    except BaseException:
        forget_objects(runtime, stored)
        raise
    runtime.queue_depth.admitted(tenant_id, len(jobs))
    for job, ready in zip(jobs, prepared, strict=True):
        publish_or_defer(
            sessions=runtime.sessions,
            celery=runtime.celery,
            model=ready.model,
            job_id=job.id,
            priority=job.priority,
        )
    return row


def _create(session: Any, runtime: Runtime, tenant_id: str, batch: Batch, job: PreparedJob) -> Job:
    return insert_job(
        session,
        new_job(
            tenant_id=tenant_id,
            model=job.model,
            spec=job.spec,
            max_attempts=runtime.settings.max_attempts,
            priority=job.request.priority,
            metadata=job.request.metadata,
            webhook=job.request.webhook.model_dump() if job.request.webhook else None,
            batch_id=batch.id,
            custom_id=job.custom_id,
            expires_at=earliest(batch.expires_at, deadline_of(job.request, now=utcnow())),
        ),
        image_shas=job.images.objects,
    )


def parse_options(raw: str | None) -> BatchOptions:
    """The batch settings sent beside a JSONL file (a JSON object), or the defaults."""
    if raw is None:
        return BatchOptions()
    strict_json.parse(raw, what="'spec'")
    try:
        return BatchOptions.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]  # its message only: the caller's values are not echoed
        where = ".".join(str(part) for part in first["loc"])
        raise InvalidRequest(
            f"'spec' is not valid batch settings: {where + ': ' if where else ''}{first['msg']}"
        ) from exc
