"""What the sync and async clients share: building requests, retry decisions, reading answers."""

from __future__ import annotations

import base64
import email.utils
import random
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from internvl_jobs_client.errors import error_for

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# An image: a file path, raw bytes, "sha256:..." (an uploaded image), an http(s) URL, or the
# API's own {"data"|"url"|"image_id": ...} object.
ImageInput = str | Path | bytes | Mapping[str, Any]


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter; a server's Retry-After wins when it says more."""

    max_retries: int = 3
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    max_retry_after_s: float = 120.0

    def delay_s(self, attempt: int, response: httpx.Response | None) -> float:
        """Seconds to wait before retry number attempt (1-based)."""
        backoff = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))
        backoff *= 0.5 + random.random() / 2  # noqa: S311 - jitter, not cryptography
        advised = retry_after_s(response) if response is not None else None
        if advised is not None:
            return min(max(advised, backoff), self.max_retry_after_s)
        return backoff

    def should_retry(self, attempt: int, response: httpx.Response | None) -> bool:
        """Whether a failed try (no response: a transport error) deserves another."""
        if attempt > self.max_retries:
            return False
        return response is None or response.status_code in RETRY_STATUSES


@dataclass
class Call:
    """One HTTP request, ready for either client to send (and resend on retry)."""

    method: str
    path: str
    params: dict[str, Any] | list[tuple[str, Any]] | None = None
    json: Any = None
    content: bytes | None = None
    files: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float | None = None

    def send_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of httpx's request()."""
        kwargs: dict[str, Any] = {"params": self.params, "headers": self.headers}
        if self.json is not None:
            kwargs["json"] = self.json
        if self.content is not None:
            kwargs["content"] = self.content
        if self.files is not None:
            kwargs["files"] = self.files
        if self.timeout_s is not None:
            kwargs["timeout"] = self.timeout_s
        return kwargs


def retry_after_s(response: httpx.Response) -> float | None:
    """The server's Retry-After in seconds (delta-seconds or an HTTP date), if any."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def raise_for_problem(response: httpx.Response) -> None:
    """Raise the typed APIError of an error answer; return quietly on success."""
    if response.status_code < 400:
        return
    try:
        problem = response.json()
    except ValueError:
        problem = {}
    if not isinstance(problem, dict):
        problem = {}
    code = str(problem.get("code") or f"http_{response.status_code}")
    detail = str(problem.get("detail") or response.reason_phrase or "error")
    raise error_for(response.status_code)(
        response.status_code,
        code,
        detail,
        problem=problem,
        retry_after_s=retry_after_s(response),
    )


def image_ref(image: ImageInput) -> dict[str, Any]:
    """The API's image object for a path, bytes, an image id or a URL."""
    if isinstance(image, Mapping):
        return dict(image)
    if isinstance(image, bytes):
        return {"data": base64.b64encode(image).decode()}
    text = str(image)
    if isinstance(image, str) and text.startswith("sha256:"):
        return {"image_id": text}
    if isinstance(image, str) and text.startswith(("http://", "https://")):
        return {"url": text}
    return {"data": base64.b64encode(Path(text).read_bytes()).decode()}


def video_ref(
    video: ImageInput, *, num_frames: int | None = None, fps: float | None = None
) -> dict[str, Any]:
    """The API's video object (task=video) for a path, bytes, a video id or a URL, with how
    its frames are sampled (the service's defaults where not given)."""
    ref = image_ref(video)
    if "image_id" in ref:
        ref = {"video_id": ref.pop("image_id"), **ref}
    if num_frames is not None:
        ref["num_frames"] = num_frames
    if fps is not None:
        ref["fps"] = fps
    return ref


def image_bytes(image: str | Path | bytes) -> bytes:
    """The bytes of an image given as a path or as bytes."""
    return image if isinstance(image, bytes) else Path(image).read_bytes()


def job_request(task: str, images: Iterable[ImageInput], fields: dict[str, Any]) -> dict[str, Any]:
    """The JSON body of a job: task, images and the fields that were given."""
    body: dict[str, Any] = {"task": task, "images": [image_ref(image) for image in images]}
    body.update({name: value for name, value in fields.items() if value is not None})
    if "video" in body and not isinstance(body["video"], Mapping):
        body["video"] = video_ref(body["video"])
    return body


def idempotency_headers(key: str | None) -> dict[str, str]:
    """An Idempotency-Key header: the caller's key, else a new random one."""
    return {"Idempotency-Key": key or f"ivjc-{uuid.uuid4()}"}


def list_params(**filters: Any) -> list[tuple[str, Any]]:
    """Query parameters of a listing; lists become repeated parameters."""
    params: list[tuple[str, Any]] = []
    for name, value in filters.items():
        if value is None:
            continue
        values = value if isinstance(value, list | tuple) else [value]
        params.extend((name, item) for item in values)
    return params
