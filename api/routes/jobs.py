"""Job routes: submit (JSON or multipart) and poll."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from api.deps import Runtime, RuntimeDep, SessionDep, TenantDep, WaitersDep
from api.intake import submit_job
from api.openapi import JOB_EXAMPLES
from api.schemas import JobPublic, JobsPublic
from core import listing
from core.errors import InvalidRequest, NotFound, ServiceError
from core.jobs import job_public
from core.listing import JobFilter
from core.logs import bind_log_context
from core.models import Job, JobStatus
from core.specs import JobCreate
from core.tasks import Task

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

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


async def read_submission(request: Request) -> tuple[JobCreate, list[bytes]]:
    """The job spec and any uploaded files, from a JSON or a multipart body."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=1000, max_fields=20)
        spec = form.get("spec")
        if not isinstance(spec, str):
            raise InvalidRequest("multipart uploads need a 'spec' field holding the job JSON")
        files = [
            await item.read() for item in form.getlist("images") if isinstance(item, UploadFile)
        ]
        return parse_job_create(spec), files
    if content_type and not content_type.startswith("application/json"):
        raise ServiceError(
            f"unsupported content type {content_type!r}; send application/json or "
            "multipart/form-data",
            code="unsupported_media_type",
            status=415,
        )
    body = await request.body()
    try:
        json.loads(body)
    except ValueError as exc:
        raise ServiceError("the body is not valid JSON", code="invalid_json", status=400) from exc
    return parse_job_create(body), []


@router.post(
    "",
    status_code=202,
    response_model=JobPublic,
    openapi_extra=_SUBMIT_BODY,
    responses={202: {"headers": {"Location": {"schema": {"type": "string"}}}}},
)
async def create_job(
    request: Request, response: Response, runtime: RuntimeDep, tenant_id: TenantDep
) -> dict[str, Any]:
    """Submit a job; it is queued and runs on a worker of its model."""
    job_request, files = await read_submission(request)
    job = await run_in_threadpool(
        submit_job, runtime, tenant_id=tenant_id, request=job_request, files=files
    )
    bind_log_context(job_id=job.id)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
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
    with waiters.watch(job_id) as finished:
        job = await run_in_threadpool(read_job, runtime, tenant_id, job_id)
        if JobStatus(job["status"]).is_terminal():
            return job
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(finished.wait(), timeout=wait)
    return await run_in_threadpool(read_job, runtime, tenant_id, job_id)


def read_job(runtime: Runtime, tenant_id: str, job_id: str) -> dict[str, Any]:
    """The public view of one of the tenant's jobs; NotFound for anyone else's."""
    with runtime.sessions() as session:
        job = session.get(Job, job_id)
        if job is None or job.tenant_id != tenant_id:
            raise NotFound(f"no job {job_id}")
        return job_public(job)
