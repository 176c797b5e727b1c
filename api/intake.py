"""Job submission: check everything, then store images and commit the job, then publish."""

from __future__ import annotations

import base64
import binascii
import functools
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pybase64
from sqlalchemy import update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.backpressure import check_queue_room
from api.deps import Runtime
from api.fetch import fetch_images, image_urls
from core.config import ModelSpec, Settings
from core.db import transaction, utcnow
from core.deadlines import deadline_of
from core.dispatch import publish_or_defer
from core.errors import InvalidImage, InvalidRequest, InvalidVideo
from core.idempotency import IdempotentRequest, find_original, remember
from core.images import ImageInfo, ImageLimits, inspect_image
from core.jobs import insert_job, new_job
from core.models import Image, Job
from core.response_format import stored_format
from core.retention import delete_if_unreferenced, hold_image_objects, store_held
from core.specs import (
    ImagePart,
    ImageUrlPart,
    JobCreate,
    RequestLimits,
    VideoRef,
    validate_job_request,
)
from core.storage import store_once
from core.submission_pg import insert_submission
from core.tasks import preset_format
from core.video import VideoInfo, VideoLimits, inspect_video, is_video_format
from core.webhooks import check_webhook_url

log = logging.getLogger("api.intake")
# INSERT ... ON CONFLICT for the two databases the service runs on.
upsert_dialects = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


@dataclass
class ImageSet:
    """The images of one job, in prompt order, and its video: new bytes to store, or objects
    already stored."""

    new: dict[str, tuple[ImageInfo | VideoInfo, bytes]] = field(default_factory=dict)
    shas: list[str] = field(default_factory=list)
    video: str | None = None

    @property
    def objects(self) -> list[str]:
        """Every stored object the job refers to (its images, then its video)."""
        return [*self.shas, self.video] if self.video is not None else list(self.shas)


def request_limits(settings: Settings) -> RequestLimits:
    """The request caps from the settings."""
    return RequestLimits(
        max_images_per_job=settings.max_images_per_job,
        max_new_tokens_cap=settings.max_new_tokens_cap,
        max_text_chars=settings.max_text_chars,
        max_messages_per_job=settings.max_messages_per_job,
        max_tiles_per_job=settings.max_tiles_per_job,
        max_video_sample_frames=settings.max_video_sample_frames,
    )


def image_limits(settings: Settings) -> ImageLimits:
    """The per-image caps from the settings."""
    return ImageLimits(max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)


def video_limits(settings: Settings) -> VideoLimits:
    """The per-video caps from the settings."""
    return VideoLimits(
        max_bytes=settings.max_video_bytes,
        max_duration_s=settings.max_video_duration_s,
        max_frame_pixels=settings.max_video_frame_pixels,
        max_frames=settings.max_video_frames,
        max_streams=settings.max_video_streams,
    )


def resolve_model(settings: Settings, alias: str | None) -> ModelSpec:
    """The registry entry a job names (or the default); unknown aliases are refused."""
    if alias is None:
        return settings.default_model
    model = settings.model(alias)
    if model is None:
        known = ", ".join(m.alias for m in settings.models)
        raise InvalidRequest(f"unknown model '{alias}'; known: {known}", code="unknown_model")
    return model


def decode_base64(text: str, *, index: int, what: str | None = None) -> bytes:
    """Strict base64 (whitespace allowed); anything else is a clear 422."""
    try:
        # Most clients send no whitespace: decoded as it is, without copying a string that
        # can be megabytes long (1.2 ms for a 12-Mpx photo's 3 MB).
        return _b64decode(text)
    except (binascii.Error, ValueError):
        pass  # line-wrapped, or not base64 at all: the second try tells
    try:
        return _b64decode("".join(text.split()))
    except (binascii.Error, ValueError) as exc:
        error = InvalidVideo if what else InvalidImage
        raise error(
            f"{what or f'image {index}'}: 'data' is not valid base64", code="invalid_base64"
        ) from exc


def _b64decode(text: str) -> bytes:
    """The standard library's strict base64, decoded by pybase64 where it can.

    pybase64 decodes with SIMD instructions what the standard library decodes byte by byte (a
    12-Mpx photo's 3.2 MB of base64: 10-11 ms of the API's CPU, now 0.3-1 ms). It is stricter
    about padding (it refuses "AAAA=", which the standard library takes), so what it refuses
    goes to the standard library, whose rules stay the API's: the same strings are accepted, as
    the same bytes, and refused (tests/api/test_images.py compares them).
    """
    try:
        return pybase64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return base64.b64decode(text, validate=True)


def _data_url_bytes(url: str, *, index: int) -> bytes:
    header, _, payload = url.partition(",")
    if not header.startswith("data:") or not header.endswith(";base64"):
        raise InvalidRequest(
            f"image {index}: only base64 data: URLs are accepted in image_url parts",
            code="unsupported_image_source",
        )
    return decode_base64(payload, index=index)


def collect_images(
    request: JobCreate,
    files: list[bytes],
    *,
    session: Session,
    tenant_id: str,
    settings: Settings,
    fetched: dict[str, bytes] | None = None,
) -> tuple[ImageSet, list[dict[str, Any]] | None]:
    """Decode and check every image of a request (URLs already fetched into `fetched`);
    rewrite chat image_url parts to indexes."""
    images = ImageSet()
    limits = image_limits(settings)

    def add_bytes(data: bytes) -> None:
        info = inspect_image(data, limits=limits, index=len(images.shas))
        images.new.setdefault(info.sha256, (info, data))
        images.shas.append(info.sha256)

    for ref in request.images:
        if ref.data is not None:
            add_bytes(decode_base64(ref.data, index=len(images.shas)))
        elif ref.image_id is not None:
            images.shas.append(_known_image(session, tenant_id, ref.image_id))
        elif ref.url is not None and fetched is not None and ref.url in fetched:
            add_bytes(fetched[ref.url])
        else:
            raise InvalidRequest(f"image {len(images.shas)}: the URL was not fetched")
    for data in files:
        add_bytes(data)
    messages = _normalized_messages(request, images, add_bytes)
    return images, messages


def collect_video(
    request: JobCreate,
    images: ImageSet,
    video_file: bytes | None,
    *,
    session: Session,
    tenant_id: str,
    settings: Settings,
    fetched: dict[str, bytes] | None = None,
) -> None:
    """Check a video job's clip (sent, fetched, or stored) and add it to `images`."""
    ref = request.video
    if ref is None:
        return
    if ref.video_id is not None:
        images.video = known_video(session, tenant_id, ref.video_id)
        return
    if video_file is not None:
        data = video_file
    elif ref.data is not None:
        data = decode_base64(ref.data, index=0, what="the video")
    elif ref.url is not None and fetched is not None and ref.url in fetched:
        data = fetched[ref.url]
    else:
        raise InvalidRequest("the video's URL was not fetched")
    info = inspect_video(data, limits=video_limits(settings))
    images.new.setdefault(info.sha256, (info, data))
    images.video = info.sha256


def _normalized_messages(
    request: JobCreate, images: ImageSet, add_bytes: Any
) -> list[dict[str, Any]] | None:
    if request.messages is None:
        return None
    rendered: list[dict[str, Any]] = []
    for message in request.messages:
        if isinstance(message.content, str):
            rendered.append({"role": message.role, "content": message.content})
            continue
        parts: list[dict[str, Any]] = []
        for part in message.content:
            if isinstance(part, ImageUrlPart):
                add_bytes(_data_url_bytes(part.image_url.url, index=len(images.shas)))
                parts.append({"type": "image", "image": len(images.shas) - 1})
            elif isinstance(part, ImagePart):
                parts.append({"type": "image", "image": part.image})
            else:
                parts.append({"type": "text", "text": part.text})
        rendered.append({"role": message.role, "content": parts})
    return rendered


def _known_image(session: Session, tenant_id: str, image_id: str) -> str:
    sha = image_id.removeprefix("sha256:")
    row = session.get(Image, (tenant_id, sha))
    if row is None or is_video_format(row.format):
        raise InvalidRequest(
            f"image {image_id} is not stored for this tenant", code="image_not_found"
        )
    return sha


def known_video(session: Session, tenant_id: str, video_id: str) -> str:
    """The content address of one of the tenant's stored videos; 422 video_not_found else."""
    sha = video_id.removeprefix("sha256:")
    row = session.get(Image, (tenant_id, sha))
    if row is None or not is_video_format(row.format):
        raise InvalidRequest(
            f"video {video_id} is not stored for this tenant", code="video_not_found"
        )
    return sha


def job_spec(
    request: JobCreate, images: ImageSet, messages: list[dict[str, Any]] | None
) -> dict[str, Any]:
    """What the worker needs to run the job, as stored in jobs.spec."""
    spec: dict[str, Any] = {
        "task": request.task.value,
        "images": images.shas,
        "params": request.params.model_dump(),
    }
    response_format = stored_format(request.response_format) or preset_format(request.preset)
    if response_format is not None:
        spec["response_format"] = response_format
    for name in ("question", "prompt", "preset"):
        if getattr(request, name) is not None:
            spec[name] = getattr(request, name)
    if request.video is not None and images.video is not None:
        spec["video"] = {
            "sha256": images.video,
            "num_frames": request.video.num_frames,
            "fps": request.video.fps,
        }
        # A frame is one tile unless the job asks for more.
        spec["params"]["max_tiles"] = request.params.max_tiles or 1
    if messages is not None:
        spec["messages"] = messages
    return spec


def put_new_objects(runtime: Runtime, images: ImageSet) -> list[str]:
    """Put image bytes not yet in storage there; return the content addresses newly stored."""
    stored: list[str] = []
    for sha, (info, data) in images.new.items():
        _, created = store_once(runtime.storage, data, content_type=info.content_type)
        if created:
            stored.append(sha)
    return stored


@functools.cache
def _image_upsert(dialect: str) -> Any:
    """INSERT ... ON CONFLICT refreshing last_used_at, built once per dialect: its rows are
    bound at execution, so its compiled form is cached (rows inlined with .values() made
    SQLAlchemy compile it anew on every submission)."""
    insert: Any = upsert_dialects[dialect](Image)
    return insert.on_conflict_do_update(
        index_elements=[Image.tenant_id, Image.sha256],
        set_={"last_used_at": insert.excluded.last_used_at},
    )


def sent_image_rows(tenant_id: str, images: ImageSet, now: datetime) -> list[dict[str, Any]]:
    """The image rows of the images sent as bytes (new, or known: last_used_at refreshed)."""
    return [
        {
            "tenant_id": tenant_id,
            "sha256": sha,
            "format": info.format,
            "width": info.width,
            "height": info.height,
            "byte_size": info.byte_size,
            "created_at": now,
            "last_used_at": now,
        }
        for sha, (info, _) in images.new.items()
    ]


def upsert_image_rows(session: Session, tenant_id: str, images: ImageSet) -> None:
    """Record the tenant's images (new rows, or a fresh last_used_at for known ones).

    One INSERT ... ON CONFLICT for the images sent as bytes (no SELECT first: a round trip
    per image saved on every submission), one UPDATE for those referenced by image_id.
    """
    now = utcnow()
    sent = sent_image_rows(tenant_id, images, now)
    if sent:
        session.execute(_image_upsert(session.get_bind().dialect.name), sent)
    touch_referenced(session, tenant_id, images, now)


def touch_referenced(session: Session, tenant_id: str, images: ImageSet, now: datetime) -> None:
    """Refresh last_used_at of the images referenced by image_id; 422 image_not_found when one
    is no longer stored."""
    referenced = [sha for sha in dict.fromkeys(images.objects) if sha not in images.new]
    if referenced:
        touched = session.execute(
            update(Image)
            .where(Image.tenant_id == tenant_id, Image.sha256.in_(referenced))
            .values(last_used_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        if touched != len(referenced):  # retention deleted one since the request was read
            raise InvalidRequest(
                "an image_id of this job is no longer stored for this tenant",
                code="image_not_found",
            )


def forget_objects(runtime: Runtime, shas: list[str]) -> None:
    """Delete objects stored for a submission that failed, unless something refers to them."""
    for sha in shas:
        delete_if_unreferenced(runtime.sessions, runtime.storage, sha)


def original_job(runtime: Runtime, tenant_id: str, idempotency: IdempotentRequest) -> Job | None:
    """The job an earlier request with the same Idempotency-Key created, if any."""
    with runtime.sessions() as session:
        job_id = find_original(session, tenant_id, idempotency)
        return session.get(Job, job_id) if job_id else None


def submit_job(
    runtime: Runtime,
    *,
    tenant_id: str,
    request: JobCreate,
    files: list[bytes],
    idempotency: IdempotentRequest | None = None,
    fetched: dict[str, bytes] | None = None,
    video_file: bytes | None = None,
) -> tuple[Job, bool]:
    """Validate, store and queue one job; (job, replayed). Nothing is stored when refused."""
    if idempotency is not None and (earlier := original_job(runtime, tenant_id, idempotency)):
        return earlier, True
    settings = runtime.settings
    model = resolve_model(settings, request.model)
    if video_file is not None and request.video is None:
        request.video = VideoRef()  # the file alone: sampled with the defaults
    validate_job_request(
        request,
        limits=request_limits(settings),
        max_tiles=model.max_tiles,
        extra_images=len(files),
        video_file=video_file is not None,
    )
    if request.webhook is not None:
        request.webhook.url = check_webhook_url(request.webhook.url, settings)
    if fetched is None:  # the API fetches first, off its request threads (api.fetch)
        fetched = fetch_images(image_urls(request), settings)  # before a connection is held
    with runtime.sessions() as session:  # reads only: queue room, image_id look-ups
        check_queue_room(
            session,
            settings=settings,
            depth=runtime.queue_depth,
            tenant_id=tenant_id,
            adding=1,
        )
        images, messages = collect_images(
            request,
            files,
            session=session,
            tenant_id=tenant_id,
            settings=settings,
            fetched=fetched,
        )
        collect_video(
            request,
            images,
            video_file,
            session=session,
            tenant_id=tenant_id,
            settings=settings,
            fetched=fetched,
        )
    stored: list[str] = []  # objects the commit stored, forgotten again if it fails
    try:
        spec = job_spec(request, images, messages)
        job = commit_job(runtime, tenant_id, model, images, spec, request, idempotency, stored)
    except IntegrityError:
        forget_objects(runtime, stored)
        # Another request with the same Idempotency-Key committed first: answer with its job.
        earlier = original_job(runtime, tenant_id, idempotency) if idempotency else None
        if earlier is None:
            raise
        return earlier, True
    except BaseException:
        forget_objects(runtime, stored)
        raise
    runtime.queue_depth.admitted(tenant_id, 1)
    publish_or_defer(
        sessions=runtime.sessions,
        celery=runtime.celery,
        model=model,
        job_id=job.id,
        priority=job.priority,
    )
    return job, False


def commit_job(
    runtime: Runtime,
    tenant_id: str,
    model: ModelSpec,
    images: ImageSet,
    spec: dict[str, Any],
    request: JobCreate,
    idempotency: IdempotentRequest | None,
    stored: list[str],
) -> Job:
    """In one transaction: the images' bytes (under their lock, see core.retention; what it
    stores is added to `stored`), image rows, the queued job, its Idempotency-Key. On
    PostgreSQL the locks and rows are one statement (core.submission_pg)."""
    job = new_job(
        tenant_id=tenant_id,
        model=model,
        spec=spec,
        max_attempts=runtime.settings.max_attempts,
        priority=request.priority,
        metadata=request.metadata,
        webhook=request.webhook.model_dump() if request.webhook else None,
        custom_id=request.custom_id,
        expires_at=deadline_of(request, now=utcnow()),
    )
    with transaction(runtime.sessions) as session:
        if session.get_bind().dialect.name == "postgresql":
            sent = sent_image_rows(tenant_id, images, job.created_at)
            insert_submission(session, job, sent=sent, objects=images.objects)
            stored += store_held(runtime.storage, images.objects, images.new)
            touch_referenced(session, tenant_id, images, job.created_at)
        else:
            hold_image_objects(session, images.objects)
            stored += store_held(runtime.storage, images.objects, images.new)
            upsert_image_rows(session, tenant_id, images)
            insert_job(session, job, image_shas=images.objects)
        if idempotency is not None:
            remember(session, tenant_id, idempotency, job.id)
    return job
