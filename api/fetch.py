"""Fetching image URLs for jobs: the webhooks' SSRF guard, a byte cap and a total time cap."""

from __future__ import annotations

import time

import httpx

from core.config import Settings
from core.errors import InvalidImage, InvalidRequest
from core.specs import JobCreate
from core.ssrf import UnsafeAddress, UnsafeUrl, guarded_client, validate_url

USER_AGENT = "internvl-jobs image fetcher"


def check_image_url(url: str, settings: Settings, *, index: int) -> None:
    """Refuse an image URL before fetching it (scheme, notation, non-public literal address)."""
    try:
        validate_url(url, allow_private=settings.image_fetch_allow_private, allow_http=True)
    except UnsafeUrl as exc:
        raise InvalidRequest(f"image {index}: {exc.detail}", code="invalid_image_url") from exc


def image_urls(request: JobCreate) -> list[tuple[int, str]]:
    """(position, url) of the request's images given by URL."""
    return [(i, ref.url) for i, ref in enumerate(request.images) if ref.url is not None]


def fetch_images(refs: list[tuple[int, str]], settings: Settings) -> dict[str, bytes]:
    """The bytes of every URL (each fetched once), or the first refusal as a 4xx problem."""
    for index, url in refs:  # every URL is checked before any is fetched
        check_image_url(url, settings, index=index)
    fetched: dict[str, bytes] = {}
    if not refs:
        return fetched
    with guarded_client(
        allow_private=settings.image_fetch_allow_private,
        timeout_s=settings.image_fetch_timeout_s,
        headers={"User-Agent": USER_AGENT, "Accept": "image/*"},
    ) as client:
        for index, url in refs:
            if url not in fetched:
                fetched[url] = _fetch(client, url, settings, index=index)
    return fetched


def _fetch(client: httpx.Client, url: str, settings: Settings, *, index: int) -> bytes:
    deadline = time.monotonic() + settings.image_fetch_timeout_s
    try:
        with client.stream("GET", url) as response:
            if response.status_code != 200:
                raise _failed(index, f"the server answered {response.status_code}")
            return _read_capped(response, settings.max_image_bytes, deadline, index)
    except UnsafeAddress as exc:
        raise InvalidRequest(
            f"image {index}: the URL resolves to a non-public address ({exc})",
            code="invalid_image_url",
        ) from exc
    except httpx.HTTPError as exc:
        raise _failed(index, f"{type(exc).__name__}: {exc}") from exc


def _read_capped(response: httpx.Response, max_bytes: int, deadline: float, index: int) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(index, max_bytes)
    received = bytearray()
    for chunk in response.iter_bytes():
        received.extend(chunk)
        if len(received) > max_bytes:
            raise _too_large(index, max_bytes)
        if time.monotonic() > deadline:  # a slow drip must not hold the request for ever
            raise _failed(index, "the download took longer than allowed")
    return bytes(received)


def _failed(index: int, why: str) -> InvalidRequest:
    return InvalidRequest(
        f"image {index}: fetching the URL failed: {why}", code="image_fetch_failed"
    )


def _too_large(index: int, max_bytes: int) -> InvalidImage:
    return InvalidImage(
        f"image {index}: the URL's image has more than {max_bytes} bytes",
        code="image_too_large",
    )
