"""Fetching image (and video) URLs for jobs: the webhooks' SSRF guard, a byte cap and a total
time cap.

A submission's URLs share one time budget (`image_fetch_timeout_s`) that bounds resolving,
connecting, headers and body together. Fetches run on a pool of their own, never on the
threads that serve requests, and the number in flight is capped (503 past it, 429 past a
tenant's share), so slow image servers cannot stall the API.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx

from core.config import Settings
from core.errors import InvalidImage, InvalidRequest, InvalidVideo, TooManyRequests, Unavailable
from core.specs import JobCreate
from core.ssrf import UnsafeAddress, UnsafeUrl, guarded_client, validate_url
from core.time_budget import time_budget

USER_AGENT = "internvl-jobs image fetcher"
# The position a video job's clip takes among a request's URLs (images count from 0).
VIDEO_REF = -1


def _what(index: int) -> str:
    return "the video" if index == VIDEO_REF else f"image {index}"


def check_image_url(url: str, settings: Settings, *, index: int) -> str:
    """Refuse an image URL before fetching it (scheme, notation, non-public literal address);
    return its normal form, the URL to fetch."""
    try:
        return validate_url(url, allow_private=settings.image_fetch_allow_private, allow_http=True)
    except UnsafeUrl as exc:
        raise InvalidRequest(f"{_what(index)}: {exc.detail}", code="invalid_image_url") from exc


def image_urls(request: JobCreate) -> list[tuple[int, str]]:
    """(position, url) of the request's images given by URL, and its video's (VIDEO_REF)."""
    refs = [(i, ref.url) for i, ref in enumerate(request.images) if ref.url is not None]
    if request.video is not None and request.video.url is not None:
        refs.append((VIDEO_REF, request.video.url))
    return refs


def fetch_images(refs: list[tuple[int, str]], settings: Settings) -> dict[str, bytes]:
    """The bytes of every URL (each fetched once), or the first refusal as a 4xx problem."""
    normal = {url: check_image_url(url, settings, index=index) for index, url in refs}
    fetched: dict[str, bytes] = {}  # every URL is checked (above) before any is fetched
    if not refs:
        return fetched
    with (
        guarded_client(
            allow_private=settings.image_fetch_allow_private,
            timeout_s=settings.image_fetch_timeout_s,
            headers={"User-Agent": USER_AGENT, "Accept": "image/*, video/*"},
        ) as client,
        time_budget(settings.image_fetch_timeout_s),  # all URLs, every phase, together
    ):
        for index, url in refs:
            if url not in fetched:
                fetched[url] = _fetch(client, normal[url], settings, index=index)
    return fetched


def _fetch(client: httpx.Client, url: str, settings: Settings, *, index: int) -> bytes:
    try:
        with client.stream("GET", url) as response:
            if response.status_code != 200:
                raise _failed(index, f"the server answered {response.status_code}")
            cap = settings.max_video_bytes if index == VIDEO_REF else settings.max_image_bytes
            return _read_capped(response, cap, index)
    except UnsafeAddress as exc:
        raise InvalidRequest(
            f"{_what(index)}: the URL resolves to a non-public address ({exc})",
            code="invalid_image_url",
        ) from exc
    except httpx.TimeoutException as exc:
        allowed = f"{settings.image_fetch_timeout_s:g} s"
        raise _failed(index, f"the images' URLs took longer than {allowed} in all") from exc
    except httpx.HTTPError as exc:
        raise _failed(index, f"{type(exc).__name__}: {exc}") from exc


def _read_capped(response: httpx.Response, max_bytes: int, index: int) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(index, max_bytes)
    received = bytearray()
    for chunk in response.iter_bytes():
        received.extend(chunk)
        if len(received) > max_bytes:
            raise _too_large(index, max_bytes)
    return bytes(received)


def _failed(index: int, why: str) -> InvalidRequest:
    return InvalidRequest(
        f"{_what(index)}: fetching the URL failed: {why}", code="image_fetch_failed"
    )


def _too_large(index: int, max_bytes: int) -> InvalidImage | InvalidVideo:
    if index == VIDEO_REF:
        return InvalidVideo(
            f"the video: the URL's file has more than {max_bytes} bytes", code="video_too_large"
        )
    return InvalidImage(
        f"image {index}: the URL's image has more than {max_bytes} bytes",
        code="image_too_large",
    )


class ImageFetcher:
    """Runs submissions' URL fetches on a pool of their own, with caps on how many at once."""

    def __init__(self, *, max_in_flight: int, max_per_tenant: int, retry_after_s: int) -> None:
        self.max_in_flight = max_in_flight
        self.max_per_tenant = max_per_tenant
        self.retry_after_s = retry_after_s
        self._pool = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="fetch")
        self._lock = threading.Lock()
        self._by_tenant: Counter[str] = Counter()

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageFetcher:
        """A fetcher with the settings' caps."""
        return cls(
            max_in_flight=settings.image_fetch_max_in_flight,
            max_per_tenant=settings.image_fetch_max_in_flight_per_tenant,
            retry_after_s=max(1, math.ceil(settings.image_fetch_timeout_s)),
        )

    async def fetch(
        self, refs: list[tuple[int, str]], settings: Settings, *, tenant_id: str
    ) -> dict[str, bytes]:
        """fetch_images off the request threads; 503 or 429 when the caps are reached."""
        if not refs:
            return {}
        for index, url in refs:  # refuse bad URLs before taking a slot
            check_image_url(url, settings, index=index)
        self._take_slot(tenant_id)
        try:
            # The slot is given back when the fetch ends, not when the caller stops waiting
            # (a client that hangs up must not free a slot its fetch still holds).
            future = self._pool.submit(self._fetch_then_release, refs, settings, tenant_id)
        except BaseException:
            self._release(tenant_id)
            raise
        return await asyncio.wrap_future(future)

    def _fetch_then_release(
        self, refs: list[tuple[int, str]], settings: Settings, tenant_id: str
    ) -> dict[str, bytes]:
        try:
            return fetch_images(refs, settings)
        finally:
            self._release(tenant_id)

    def _take_slot(self, tenant_id: str) -> None:
        retry = {"Retry-After": str(self.retry_after_s)}
        with self._lock:
            if self._by_tenant[tenant_id] >= self.max_per_tenant:
                raise TooManyRequests(
                    f"this tenant already has {self.max_per_tenant} submissions fetching "
                    "image URLs; retry later",
                    code="too_many_fetches",
                    headers=retry,
                )
            if self._by_tenant.total() >= self.max_in_flight:
                raise Unavailable(
                    "the service is fetching as many image URLs as it can; retry later",
                    code="fetch_capacity",
                    headers=retry,
                )
            self._by_tenant[tenant_id] += 1

    def _release(self, tenant_id: str) -> None:
        with self._lock:
            self._by_tenant[tenant_id] -= 1
            if self._by_tenant[tenant_id] <= 0:
                del self._by_tenant[tenant_id]

    @property
    def in_flight(self) -> int:
        """Submissions fetching now."""
        with self._lock:
            return self._by_tenant.total()

    def close(self) -> None:
        """Stop the pool (fetches in progress end by their budget)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
