"""The synchronous client."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from internvl_jobs_client import _calls
from internvl_jobs_client._requests import Call, ImageInput, RetryPolicy, raise_for_problem
from internvl_jobs_client.errors import APIConnectionError
from internvl_jobs_client.models import (
    Batch,
    BatchResult,
    ImageInfo,
    Job,
    Page,
    ResponseFormat,
    VideoInfo,
)

DEFAULT_URL = "http://127.0.0.1:8000"


class Client:
    """internvl-jobs over HTTP: submit jobs, wait for them, batches, images."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout_s: float = 30.0,
        long_poll_s: float = _calls.LONG_POLL_S,
        retry: RetryPolicy | None = None,
        http_client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = http_client or httpx.Client(base_url=base_url, timeout=timeout_s)
        self._http.headers.update(headers)
        self._retry = retry or RetryPolicy()
        self._long_poll_s = long_poll_s  # at most the server's max_wait_s
        self._sleep = sleep

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def send(self, call: Call) -> httpx.Response:
        """Send a call, retrying transport errors, 429 and 5xx as the retry policy says."""
        attempt = 0
        while True:
            attempt += 1
            response: httpx.Response | None = None
            try:
                response = self._http.request(call.method, call.path, **call.send_kwargs())
            except httpx.TransportError as exc:
                if not self._retry.should_retry(attempt, None):
                    raise APIConnectionError(f"{call.method} {call.path}: {exc}") from exc
            if response is not None and not self._retry.should_retry(attempt, response):
                raise_for_problem(response)
                return response
            self._sleep(self._retry.delay_s(attempt, response))

    # -- jobs ------------------------------------------------------------------------------

    def submit(
        self,
        task: str,
        images: Iterable[ImageInput] = (),
        *,
        wait: bool = False,
        timeout_s: float | None = None,
        idempotency_key: str | None = None,
        response_format: ResponseFormat | None = None,
        expires_after_s: int | None = None,
        **fields: Any,
    ) -> Job:
        """Submit a job (fields: question, prompt, messages, params, model, webhook, ...;
        for task="video", `video`: a path, bytes, URL, video_id or video_ref(...)).

        response_format (see json_schema_format) makes the answer JSON, parsed in
        job.result.json; a job not started within expires_after_s ends `expired`.
        """
        fields.update(response_format=response_format, expires_after_s=expires_after_s)
        call = _calls.submit(task, images, idempotency_key=idempotency_key, fields=fields)
        job = _calls.job(self.send(call))
        return self.wait(job.id, timeout_s=timeout_s) if wait else job

    def get(self, job_id: str, *, wait_s: float = 0) -> Job:
        """A job; with wait_s, held by the server until it ends or wait_s passes."""
        return _calls.job(self.send(_calls.get(job_id, wait_s=wait_s)))

    def wait(self, job_id: str, *, timeout_s: float | None = None) -> Job:
        """Long-poll until the job is terminal (or timeout_s passes: then as it is)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            left = self._long_poll_s if deadline is None else deadline - time.monotonic()
            job = self.get(job_id, wait_s=min(self._long_poll_s, max(0.0, left)))
            if job.done or (deadline is not None and time.monotonic() >= deadline):
                return job

    def cancel(self, job_id: str) -> Job:
        """Cancel a job: at once if queued, at the next step if running."""
        return _calls.job(self.send(_calls.cancel(job_id)))

    def list_jobs(
        self,
        *,
        status: str | Sequence[str] | None = None,
        task: str | None = None,
        model: str | None = None,
        batch_id: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> Page[Job]:
        """One page of the caller's jobs, newest first."""
        call = _calls.list_jobs(
            status=status, task=task, model=model, batch_id=batch_id, limit=limit, cursor=cursor
        )
        return _calls.job_page(self.send(call))

    def iter_jobs(self, **filters: Any) -> Iterator[Job]:
        """Every job matching the filters, newest first, fetching pages as needed."""
        cursor = None
        while True:
            page = self.list_jobs(cursor=cursor, **filters)
            yield from page.data
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    # -- images ----------------------------------------------------------------------------

    def upload_image(self, image: str | Path | bytes, *, model: str | None = None) -> ImageInfo:
        """Upload an image once; pass its image_id to later jobs instead of the bytes."""
        return _calls.image(self.send(_calls.upload_image(image, model=model)))

    def get_image(self, image_id: str) -> ImageInfo:
        """An uploaded image's size, format and tile cost."""
        return _calls.image(self.send(_calls.get_image(image_id)))

    # -- videos ----------------------------------------------------------------------------

    def upload_video(self, video: str | Path | bytes) -> VideoInfo:
        """Upload a clip once; pass its video_id as later video jobs' `video`."""
        return _calls.video(self.send(_calls.upload_video(video)))

    def get_video(self, video_id: str) -> VideoInfo:
        """An uploaded video's container and frame size."""
        return _calls.video(self.send(_calls.get_video(video_id)))

    # -- batches ---------------------------------------------------------------------------

    def create_batch(
        self,
        jobs: Sequence[Mapping[str, Any]],
        *,
        webhook: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        expires_after_s: int | None = None,
    ) -> Batch:
        """Submit job requests together (see job_request()); all are checked before any runs."""
        call = _calls.create_batch(
            jobs,
            webhook=webhook,
            metadata=metadata,
            idempotency_key=idempotency_key,
            expires_after_s=expires_after_s,
        )
        return _calls.batch(self.send(call))

    def get_batch(self, batch_id: str) -> Batch:
        """A batch with its counts by status."""
        return _calls.batch(self.send(_calls.get_batch(batch_id)))

    def batch_results(self, batch_id: str) -> list[BatchResult]:
        """One result per job of the batch, with its custom_id."""
        return list(_calls.result_lines(self.send(_calls.batch_results(batch_id)).text))

    def cancel_batch(self, batch_id: str) -> Batch:
        """Cancel every job of the batch that has not finished."""
        return _calls.batch(self.send(_calls.cancel_batch(batch_id)))

    def wait_batch(
        self, batch_id: str, *, timeout_s: float | None = None, poll_s: float = 2.0
    ) -> Batch:
        """Poll until the batch is completed or canceled (or timeout_s passes)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            batch = self.get_batch(batch_id)
            if batch.done or (deadline is not None and time.monotonic() >= deadline):
                return batch
            self._sleep(poll_s)
