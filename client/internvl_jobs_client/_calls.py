"""The API's operations as Calls (what to send) and parsers (what the answer means)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from internvl_jobs_client._requests import (
    Call,
    ImageInput,
    idempotency_headers,
    image_bytes,
    job_request,
    list_params,
)
from internvl_jobs_client.models import Batch, BatchResult, ImageInfo, Job, Page, VideoInfo

# Seconds one long-poll asks the server to hold (the server's cap is 60 by default).
LONG_POLL_S = 30.0
# Extra seconds the HTTP read may take beyond a long-poll's hold.
READ_MARGIN_S = 15.0


def submit(
    task: str,
    images: Iterable[ImageInput],
    *,
    idempotency_key: str | None,
    fields: dict[str, Any],
) -> Call:
    """POST /v1/jobs."""
    return Call(
        "POST",
        "/v1/jobs",
        json=job_request(task, images, fields),
        headers=idempotency_headers(idempotency_key),
    )


def get(job_id: str, *, wait_s: float = 0) -> Call:
    """GET /v1/jobs/{id}, holding up to wait_s seconds for the job to end."""
    hold = int(max(0, wait_s))
    return Call(
        "GET",
        f"/v1/jobs/{job_id}",
        params={"wait": hold} if hold else None,
        timeout_s=hold + READ_MARGIN_S if hold else None,
    )


def cancel(job_id: str) -> Call:
    """POST /v1/jobs/{id}/cancel."""
    return Call("POST", f"/v1/jobs/{job_id}/cancel")


def list_jobs(
    *,
    status: str | Sequence[str] | None,
    task: str | None,
    model: str | None,
    batch_id: str | None,
    limit: int,
    cursor: str | None,
) -> Call:
    """GET /v1/jobs with filters."""
    statuses = [status] if isinstance(status, str) else list(status) if status else None
    return Call(
        "GET",
        "/v1/jobs",
        params=list_params(
            status=statuses, task=task, model=model, batch_id=batch_id, limit=limit, cursor=cursor
        ),
    )


def upload_image(image: str | Path | bytes, *, model: str | None) -> Call:
    """POST /v1/images with the raw bytes."""
    return Call(
        "POST",
        "/v1/images",
        content=image_bytes(image),
        params={"model": model} if model else None,
        headers={"Content-Type": "application/octet-stream"},
    )


def get_image(image_id: str) -> Call:
    """GET /v1/images/{id}."""
    return Call("GET", f"/v1/images/{image_id}")


def upload_video(video: str | Path | bytes) -> Call:
    """POST /v1/videos with the raw bytes."""
    return Call(
        "POST",
        "/v1/videos",
        content=image_bytes(video),
        headers={"Content-Type": "application/octet-stream"},
    )


def get_video(video_id: str) -> Call:
    """GET /v1/videos/{id}."""
    return Call("GET", f"/v1/videos/{video_id}")


def create_batch(
    jobs: Sequence[Mapping[str, Any]],
    *,
    webhook: Mapping[str, Any] | None,
    metadata: Mapping[str, Any] | None,
    idempotency_key: str | None,
    expires_after_s: int | None = None,
) -> Call:
    """POST /v1/batches with a JSON list of job requests."""
    body: dict[str, Any] = {"jobs": [dict(job) for job in jobs]}
    if expires_after_s is not None:
        body["expires_after_s"] = expires_after_s
    if webhook is not None:
        body["webhook"] = dict(webhook)
    if metadata is not None:
        body["metadata"] = dict(metadata)
    return Call("POST", "/v1/batches", json=body, headers=idempotency_headers(idempotency_key))


def get_batch(batch_id: str) -> Call:
    """GET /v1/batches/{id}."""
    return Call("GET", f"/v1/batches/{batch_id}")


def batch_results(batch_id: str) -> Call:
    """GET /v1/batches/{id}/results (JSONL)."""
    return Call("GET", f"/v1/batches/{batch_id}/results")


def cancel_batch(batch_id: str) -> Call:
    """POST /v1/batches/{id}/cancel."""
    return Call("POST", f"/v1/batches/{batch_id}/cancel")


def job(response: httpx.Response) -> Job:
    """A Job from an answer."""
    return Job.from_dict(response.json())


def job_page(response: httpx.Response) -> Page[Job]:
    """A Page of Jobs from an answer."""
    body = response.json()
    return Page([Job.from_dict(item) for item in body["data"]], body.get("next_cursor"))


def image(response: httpx.Response) -> ImageInfo:
    """An ImageInfo from an answer."""
    return ImageInfo.from_dict(response.json())


def video(response: httpx.Response) -> VideoInfo:
    """A VideoInfo from an answer."""
    return VideoInfo.from_dict(response.json())


def batch(response: httpx.Response) -> Batch:
    """A Batch from an answer."""
    return Batch.from_dict(response.json())


def result_lines(text: str) -> Iterator[BatchResult]:
    """BatchResults from a JSONL answer."""
    for line in text.splitlines():
        if line.strip():
            yield BatchResult.from_dict(json.loads(line))
