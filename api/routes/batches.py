"""Batch routes: submit many jobs at once (JSON or JSONL), follow their counts, read results."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from api import strict_json
from api.batch_intake import (
    batch_image_urls,
    parse_jsonl,
    parse_options,
    submit_batch,
    too_many_jobs,
)
from api.deps import Runtime, RuntimeDep, SessionDep, TenantDep
from api.jsonl import read_jsonl, read_jsonl_file
from api.multipart import is_multipart, read_form
from api.openapi import JOB_EXAMPLES, problem_responses
from api.routes.jobs import invalid_from
from api.schemas import BatchPublic
from api.strict_json import StrictJsonRoute
from core.batches import batch_counts, cancel_batch, result_lines
from core.db import transaction
from core.errors import Conflict, InvalidRequest, NotFound, UnsupportedMediaType
from core.models import Batch
from core.specs import BatchCreate
from core.views import batch_public

router = APIRouter(prefix="/v1/batches", tags=["batches"], route_class=StrictJsonRoute)
JSONL_TYPES = ("application/jsonl", "application/x-ndjson", "application/jsonlines")
_JSONL_SCHEMA = {"type": "string", "description": "One JobCreate per line, each with custom_id"}
_SUBMIT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/BatchCreate"},
                "example": {
                    "jobs": [
                        {**JOB_EXAMPLES["caption"]["value"], "custom_id": "photo-1"},
                        {**JOB_EXAMPLES["vqa"]["value"], "custom_id": "photo-2"},
                    ],
                    "metadata": {"run": "nightly"},
                },
            },
            "application/jsonl": {"schema": _JSONL_SCHEMA},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "spec": {"type": "string", "description": "BatchOptions as JSON"},
                    },
                }
            },
        },
    }
}


async def read_batch(request: Request, max_jobs: int) -> BatchCreate:
    """The batch from a JSON body, a JSONL body, or a multipart JSONL file plus `spec`."""
    content_type = request.headers.get("content-type", "")
    if is_multipart(request):
        # Parsed on worker threads; the context closes the uploads' temporary files.
        async with read_form(
            request, files=frozenset({"file"}), texts=frozenset({"spec"}), max_files=1, max_fields=2
        ) as form:
            upload, spec = form.get("file"), form.get("spec")
            if not isinstance(upload, UploadFile):
                raise InvalidRequest("multipart batches need a JSONL file field named 'file'")
            text = await run_in_threadpool(read_jsonl_file, upload.file, max_jobs=max_jobs)
            raw_spec = spec if isinstance(spec, str) else None
        return await run_in_threadpool(parse_jsonl_batch, text, raw_spec, max_jobs)
    if content_type.startswith(JSONL_TYPES):
        text = await read_jsonl(request.stream(), max_jobs=max_jobs)
        return await run_in_threadpool(parse_jsonl_batch, text, None, max_jobs)
    if content_type and not content_type.startswith("application/json"):
        raise UnsupportedMediaType(
            f"unsupported content type {content_type!r}; send application/json, "
            "application/jsonl or multipart/form-data"
        )
    return await run_in_threadpool(parse_json_batch, await request.body(), max_jobs)


def parse_json_batch(body: bytes, max_jobs: int) -> BatchCreate:
    """A batch from a JSON body: strict JSON, then the BatchCreate schema (off the loop)."""
    value = strict_json.parse(body)
    jobs = value.get("jobs") if isinstance(value, dict) else None
    if isinstance(jobs, list) and len(jobs) > max_jobs:  # before building every JobCreate
        raise too_many_jobs(max_jobs, len(jobs))
    try:
        return BatchCreate.model_validate_json(body)
    except ValidationError as exc:
        raise invalid_from(exc) from exc


def parse_jsonl_batch(text: bytes, raw_spec: str | None, max_jobs: int) -> BatchCreate:
    """A batch from JSONL and its optional settings (off the loop)."""
    return parse_jsonl(text, parse_options(raw_spec), max_jobs=max_jobs)


def find_batch(session: Any, tenant_id: str, batch_id: str) -> Batch:
    """One of the tenant's batches; NotFound for anyone else's."""
    batch = session.get(Batch, batch_id)
    if batch is None or batch.tenant_id != tenant_id:
        raise NotFound(f"no batch {batch_id}")
    return batch


def read_batch_public(runtime: Runtime, tenant_id: str, batch_id: str) -> dict[str, Any]:
    """The batch with its counts, read in one short session."""
    with runtime.sessions() as session:
        batch = find_batch(session, tenant_id, batch_id)
        return batch_public(batch, batch_counts(session, batch.id))


@router.post(
    "",
    status_code=202,
    response_model=BatchPublic,
    openapi_extra=_SUBMIT_BODY,
    responses=problem_responses(400, 401, 413, 415, 422, 429),
)
async def create_batch(
    request: Request, response: Response, runtime: RuntimeDep, tenant_id: TenantDep
) -> dict[str, Any]:
    """Submit many jobs at once; all are checked first, and none is stored if one is refused."""
    batch = await read_batch(request, runtime.settings.max_jobs_per_batch)
    fetched = await runtime.image_fetcher().fetch(
        batch_image_urls(batch), runtime.settings, tenant_id=tenant_id
    )
    row = await run_in_threadpool(
        submit_batch, runtime, tenant_id=tenant_id, batch=batch, fetched=fetched
    )
    response.headers["Location"] = f"/v1/batches/{row.id}"
    return await run_in_threadpool(read_batch_public, runtime, tenant_id, row.id)


@router.get("/{batch_id}", response_model=BatchPublic, responses=problem_responses(401, 404))
def get_batch(batch_id: str, session: SessionDep, tenant_id: TenantDep) -> dict[str, Any]:
    """A batch with its status and how many of its jobs are in each status."""
    batch = find_batch(session, tenant_id, batch_id)
    return batch_public(batch, batch_counts(session, batch.id))


@router.get(
    "/{batch_id}/results",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/jsonl": {"schema": _JSONL_SCHEMA}}},
        **problem_responses(401, 404),
    },
)
def get_batch_results(batch_id: str, runtime: RuntimeDep, tenant_id: TenantDep) -> Response:
    """The batch's jobs as JSONL, one line each with its custom_id, status and result."""
    with runtime.sessions() as session:
        find_batch(session, tenant_id, batch_id)

    def lines() -> Iterator[bytes]:
        with runtime.sessions() as session:
            for record in result_lines(session, batch_id):
                yield json.dumps(record, ensure_ascii=False).encode() + b"\n"

    return StreamingResponse(lines(), media_type="application/jsonl")


@router.post(
    "/{batch_id}/cancel", response_model=BatchPublic, responses=problem_responses(401, 404, 409)
)
def cancel(batch_id: str, runtime: RuntimeDep, tenant_id: TenantDep) -> dict[str, Any]:
    """Cancel the batch: queued jobs never run, running ones stop as soon as their worker can."""
    with transaction(runtime.sessions) as session:
        batch = find_batch(session, tenant_id, batch_id)
        if batch.finished_at is not None:
            raise Conflict(f"batch {batch_id} is already finished", code="batch_finished")
        cancel_batch(session, batch)
    # Read after the commit: settling (all jobs ended) runs as the transaction commits.
    return read_batch_public(runtime, tenant_id, batch_id)
