"""Job routes: submit (JSON or multipart, with an optional Idempotency-Key), list, poll, cancel."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile

from api import strict_json
from api.deps import Runtime, RuntimeDep, SessionDep, TenantDep, WaitersDep
from api.fetch import image_urls
from api.intake import submit_job
from api.multipart import is_multipart, read_form
from api.openapi import JOB_EXAMPLES, problem_responses
from api.schemas import JobPublic, JobsPublic
from api.strict_json import StrictJsonRoute
from core import listing
from core.cancellation import request_cancel
from core.db import transaction
from core.errors import InvalidRequest, NotFound, ServiceError, UnsupportedMediaType
from core.idempotency import KEY_PATTERN, IdempotentRequest, check_key, request_fingerprint
from core.listing import JobFilter
from core.logs import bind_log_context
from core.models import Job, JobStatus
from core.queue_info import waiting_fields
from core.specs import JobCreate
from core.tasks import Task
from core.views import job_public

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], route_class=StrictJsonRoute)

_SUBMIT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/JobCreate"},
                "examples": JOB_EXAMPLES,
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["spec"],
                    "properties": {
                        "spec": {"type": "string", "description": "JobCreate as JSON"},
                        "images": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                        },
                        "video": {
                            "type": "string",
                            "format": "binary",
                            "description": "task=video: the clip (instead of video.data/url/"
                            "video_id).",
                        },
                    },
                }
            },
        },
    }
}


def parse_job_create(raw: bytes | str) -> JobCreate:
    """A JobCreate from JSON text, with schema errors as a 422 naming the field."""
    try:
        return JobCreate.model_validate_json(raw)
    except ValidationError as exc:
        raise invalid_from(exc) from exc


def invalid_from(exc: ValidationError) -> ServiceError:
    """A 422 problem for pydantic errors, without echoing the input back."""
    errors = [
        {"loc": list(err["loc"]), "msg": err["msg"], "type": err["type"]} for err in exc.errors()
    ]
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    detail = f"{where}: {first['msg']}" if where else str(first["msg"])
    return InvalidRequest(detail, code="invalid_params", extra={"errors": errors})


@dataclass
class Submission:
    """A job request as received: the spec, uploaded files, and the JSON the spec came from."""

    request: JobCreate
    files: list[bytes]
    raw_spec: Any
    video: bytes | None = None


async def read_submission(request: Request) -> Submission:
    """The job spec and any uploaded files, from a JSON or a multipart body."""
    content_type = request.headers.get("content-type", "")
    if is_multipart(request):
        # Parsed on worker threads; the context closes the uploads' temporary files.
        async with read_form(
            request,
            files=frozenset({"images", "video"}),
            texts=frozenset({"spec"}),
            max_files=1000,
            max_fields=20,
        ) as form:
            spec = form.get("spec")
            if not isinstance(spec, str):
                raise InvalidRequest("multipart uploads need a 'spec' field holding the job JSON")
            files = [
                await item.read() for item in form.getlist("images") if isinstance(item, UploadFile)
            ]
            videos = [v for v in form.getlist("video") if isinstance(v, UploadFile)]
            if len(videos) > 1:
                raise InvalidRequest("a job takes one multipart file named 'video'")
            video = await videos[0].read() if videos else None
        submission = await run_in_threadpool(parse_submission, spec, files, "'spec'")
        submission.video = video
        return submission
    if content_type and not content_type.startswith("application/json"):
        raise UnsupportedMediaType(
            f"unsupported content type {content_type!r}; send application/json or "
            "multipart/form-data"
        )
    body = await request.body()
    return await run_in_threadpool(parse_submission, body, [], "the body")


def parse_submission(raw: bytes | str, files: list[bytes], what: str) -> Submission:
    """Strict JSON, then the JobCreate schema (on a worker thread, never the event loop)."""
    value = strict_json.parse(raw, what=what)
    return Submission(parse_job_create(raw), files, value)


IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        json_schema_extra={"pattern": KEY_PATTERN},  # checked by check_key: a 400
        description="Retry-safe submission: the same key and body return the original job "
        "instead of running it again; the same key with another body is a 409.",
    ),
]


@router.post(
    "",
    status_code=202,
    response_model=JobPublic,
    openapi_extra=_SUBMIT_BODY,
    responses={
        202: {"headers": {"Location": {"schema": {"type": "string"}}}},
        **problem_responses(409),  # an Idempotency-Key reused with another request
    },
)
async def create_job(
    request: Request,
    response: Response,
    runtime: RuntimeDep,
    tenant_id: TenantDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> dict[str, Any]:
    """Submit a job; it is queued and runs on a worker of its model."""
    if idempotency_key is not None:
        check_key(idempotency_key)
    submission = await read_submission(request)
    idempotency = None
    if idempotency_key is not None:
        idempotency = IdempotentRequest(
            key=idempotency_key,
            request_hash=request_fingerprint(
                submission.raw_spec, submission.files, submission.video
            ),
            ttl_s=runtime.settings.idempotency_ttl_s,
        )
    fetched = await runtime.image_fetcher().fetch(
        image_urls(submission.request), runtime.settings, tenant_id=tenant_id
    )
    job, replayed = await run_in_threadpool(
        submit_job,
        runtime,
        tenant_id=tenant_id,
        request=submission.request,
        files=submission.files,
        idempotency=idempotency,
        fetched=fetched,
        video_file=submission.video,
    )
    bind_log_context(job_id=job.id)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return job_public(job)


@router.get("", response_model=JobsPublic)
def list_jobs(
    session: SessionDep,
    tenant_id: TenantDep,
    status: Annotated[list[JobStatus] | None, Query(description="Keep these statuses.")] = None,
    task: Annotated[Task | None, Query()] = None,
    model: Annotated[str | None, Query(max_length=64)] = None,
    batch_id: Annotated[str | None, Query(max_length=40)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    """The caller's jobs, newest first; pass `next_cursor` back as `cursor` for the next page."""
    where = JobFilter(
        statuses=[s.value for s in status] if status else None,
        task=task.value if task else None,
        model=model,
        batch_id=batch_id,
    )
    page, next_cursor = listing.list_jobs(
        session, tenant_id, where=where, limit=limit, cursor=cursor
    )
    return {"data": [job_public(job) for job in page], "next_cursor": next_cursor}


@router.get("/{job_id}", response_model=JobPublic)
async def get_job(
    job_id: str,
    runtime: RuntimeDep,
    tenant_id: TenantDep,
    waiters: WaitersDep,
    wait: Annotated[
        int, Query(ge=0, le=600, description="Hold up to this many seconds until terminal.")
    ] = 0,
) -> dict[str, Any]:
    """A job with its status, and its result once finished; `wait` long-polls for the end."""
    if wait > runtime.settings.max_wait_s:
        raise InvalidRequest(
            f"wait={wait} exceeds the limit of {runtime.settings.max_wait_s} seconds",
            code="invalid_params",
        )
    if not wait:
        return await run_in_threadpool(read_job, runtime, tenant_id, job_id)
    # Watch before reading, so an end between the read and the wait is not missed.
    with (
        waiters.slots.hold(
            tenant_id, limit=runtime.settings.max_waits_per_tenant, retry_after_s=wait
        ),
        waiters.watch(job_id) as finished,
    ):
        ended = await run_in_threadpool(read_ended_job, runtime, tenant_id, job_id)
        if ended is not None:
            return ended
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(finished.wait(), timeout=wait)
    return await run_in_threadpool(read_job, runtime, tenant_id, job_id)


def read_job(runtime: Runtime, tenant_id: str, job_id: str) -> dict[str, Any]:
    """The public view of one of the tenant's jobs; NotFound for anyone else's."""
    with runtime.sessions() as session:
        return _job_view(session, runtime, _tenant_job(session, tenant_id, job_id))


def read_ended_job(runtime: Runtime, tenant_id: str, job_id: str) -> dict[str, Any] | None:
    """The public view of one of the tenant's jobs if it has ended, else None (a long-poll's
    first read: the view of a job still queued, with its queue position, would be thrown
    away); NotFound for anyone else's."""
    with runtime.sessions() as session:
        job = _tenant_job(session, tenant_id, job_id)
        return _job_view(session, runtime, job) if job.job_status.is_terminal() else None


def _tenant_job(session: Session, tenant_id: str, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None or job.tenant_id != tenant_id:
        raise NotFound(f"no job {job_id}")
    return job


def _job_view(session: Session, runtime: Runtime, job: Job) -> dict[str, Any]:
    public = job_public(job)
    if job.status == JobStatus.QUEUED.value:
        stats = runtime.model_stats.get(session, runtime.settings)
        limit = runtime.settings.max_running_jobs_per_tenant
        public.update(waiting_fields(session, job, stats, running_limit=limit))
    return public


@router.post(
    "/{job_id}/cancel",
    response_model=JobPublic,
    responses={
        200: {"description": "The job was queued and is now canceled."},
        202: {"description": "The job is running; its worker stops it at the next step."},
        **problem_responses(409),
    },
)
def cancel_job(
    job_id: str, response: Response, runtime: RuntimeDep, tenant_id: TenantDep
) -> dict[str, Any]:
    """Cancel a job: a queued one never runs, a running one stops at its next step."""
    with transaction(runtime.sessions) as session:
        job = request_cancel(session, job_id, tenant_id=tenant_id)
    response.status_code = 200 if job.status == JobStatus.CANCELED else 202
    return job_public(job)
