"""Job requests as clients send them (api.md), validated strictly: unknown fields are refused."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.errors import InvalidRequest
from core.response_format import JsonSchemaFormat, ResponseFormat, TextFormat, check_schema
from core.tasks import PRESETS, Task

EventType = Literal[
    "job.queued", "job.running", "job.succeeded", "job.failed", "job.canceled", "job.expired"
]
TERMINAL_EVENTS: list[EventType] = ["job.succeeded", "job.failed", "job.canceled", "job.expired"]
MAX_PARTS_PER_MESSAGE = 256
IMAGE_ID_PATTERN = r"^sha256:[0-9a-f]{64}$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GenerationParams(Strict):
    """Generation settings of one job; ranges are checked, never clamped."""

    max_new_tokens: int = Field(256, ge=1, description="Capped by the service's max_new_tokens.")
    min_new_tokens: int = Field(0, ge=0)
    temperature: float = Field(1.0, gt=0, le=5.0, description="Used only with do_sample.")
    top_p: float = Field(1.0, gt=0, le=1.0, description="Used only with do_sample.")
    do_sample: bool = False
    repetition_penalty: float = Field(1.0, gt=0, le=5.0)
    num_beams: int = Field(1, ge=1, le=8)
    max_tiles: int | None = Field(None, ge=1, description="Tile cap per image; model cap if unset.")
    seed: int | None = Field(None, ge=0, le=2**32 - 1)

    @model_validator(mode="after")
    def _min_below_max(self) -> GenerationParams:
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError("min_new_tokens must not exceed max_new_tokens")
        return self


class ImageRef(Strict):
    """One input image: inline base64 bytes, an http(s) URL, or a stored image id."""

    data: str | None = Field(None, description="Base64 of the image file's bytes.")
    url: str | None = Field(None, max_length=4096)
    image_id: str | None = Field(None, pattern=IMAGE_ID_PATTERN)

    @model_validator(mode="after")
    def _exactly_one(self) -> ImageRef:
        given = [name for name in ("data", "url", "image_id") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("an image needs exactly one of data, url or image_id")
        return self


DEFAULT_VIDEO_FRAMES = 8


class VideoRef(Strict):
    """A job's clip (inline base64 bytes, an http(s) URL, or a stored video id) and how it is
    sampled: `num_frames` frames spread evenly over the clip (the middle frame of as many equal
    segments), or with `fps`, that many frames a second, still at most `num_frames`."""

    data: str | None = Field(None, description="Base64 of the video file's bytes.")
    url: str | None = Field(None, max_length=4096)
    video_id: str | None = Field(None, pattern=r"^sha256:[0-9a-f]{64}$")
    num_frames: int = Field(
        DEFAULT_VIDEO_FRAMES,
        ge=1,
        description="Frames the model reads (at most; capped by the service's "
        "max_video_sample_frames).",
    )
    fps: float | None = Field(
        None, gt=0, le=60, description="Sample this many frames per second instead of spreading."
    )

    @model_validator(mode="after")
    def _one_source(self) -> VideoRef:
        given = [name for name in ("data", "url", "video_id") if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError("a video needs at most one of data, url or video_id")
        return self

    @property
    def has_source(self) -> bool:
        """Whether the JSON names the clip (else it comes as a multipart file)."""
        return any(v is not None for v in (self.data, self.url, self.video_id))


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ImagePart(Strict):
    """An image of the conversation: an index into the job's `images`."""

    type: Literal["image"]
    image: int = Field(ge=0)


class ImageUrl(Strict):
    url: str


class ImageUrlPart(Strict):
    """OpenAI-style image part; a data: URL carries the bytes inline."""

    type: Literal["image_url"]
    image_url: ImageUrl


ContentPart = Annotated[TextPart | ImagePart | ImageUrlPart, Field(discriminator="type")]


class Message(Strict):
    """One chat turn in the Hugging Face chat format."""

    role: Literal["system", "user", "assistant"]
    # Bounded in the schema so a hostile list is refused before its parts are validated.
    content: str | Annotated[list[ContentPart], Field(max_length=MAX_PARTS_PER_MESSAGE)]


class WebhookSpec(Strict):
    """Where to send signed notifications of a job's (or batch's) events."""

    url: str = Field(max_length=2048)
    events: list[EventType] = Field(default_factory=lambda: list(TERMINAL_EVENTS), min_length=1)


# The furthest deadline a job or batch may set.
MAX_EXPIRES_AFTER_S = 30 * 86400


class DeadlineFields(Strict):
    """When an unstarted job gives up: relative (`expires_after_s`) or absolute (`expires_at`)."""

    expires_after_s: int | None = Field(
        None,
        ge=1,
        le=MAX_EXPIRES_AFTER_S,
        description="Not started within this many seconds of submission: the job ends "
        "`expired` (nothing runs); still running then: it is canceled.",
    )
    expires_at: datetime | None = Field(
        None, description="The same deadline as an absolute RFC 3339 time with a time zone."
    )

    @model_validator(mode="after")
    def _one_deadline(self) -> DeadlineFields:
        if self.expires_after_s is not None and self.expires_at is not None:
            raise ValueError("give either expires_after_s or expires_at, not both")
        if self.expires_at is not None and self.expires_at.tzinfo is None:
            raise ValueError("expires_at needs a time zone (e.g. 2026-12-01T12:00:00Z)")
        return self


class JobCreate(DeadlineFields):
    """The body of POST /v1/jobs."""

    task: Task
    model: str | None = None
    images: list[ImageRef] = Field(default_factory=list)
    video: VideoRef | None = Field(
        None, description="task=video: the clip, and how its frames are sampled."
    )
    question: str | None = None
    prompt: str | None = None
    preset: str | None = Field(None, description="A named instruction for task=prompt.")
    messages: list[Message] | None = None
    params: GenerationParams = Field(default_factory=GenerationParams)
    response_format: ResponseFormat | None = Field(
        None,
        description="JSON output: json_object (any object) or json_schema (matching a "
        "schema); the result then carries the parsed value as `json`.",
    )
    webhook: WebhookSpec | None = None
    priority: int = Field(0, ge=0, le=9, description="0 (default) to 9 (most urgent).")
    metadata: dict[str, Any] = Field(default_factory=dict)
    custom_id: str | None = Field(None, max_length=200)


BatchEventType = Literal["batch.completed"]


def _batch_events() -> list[BatchEventType]:
    return ["batch.completed"]


class BatchWebhookSpec(Strict):
    """Where to send the batch's signed notification once every job of it is terminal."""

    url: str = Field(max_length=2048)
    events: list[BatchEventType] = Field(default_factory=_batch_events, min_length=1)


class BatchOptions(DeadlineFields):
    """A batch's own settings (the JSONL upload sends them beside the file, as `spec`)."""

    webhook: BatchWebhookSpec | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class BatchCreate(BatchOptions):
    """The JSON body of POST /v1/batches: job requests, each with an optional custom_id."""

    jobs: list[JobCreate] = Field(min_length=1)


class RequestLimits(BaseModel):
    """The service-side caps a job request must fit (from Settings)."""

    max_images_per_job: int
    max_new_tokens_cap: int
    max_text_chars: int
    max_metadata_bytes: int = 16 * 1024
    max_messages_per_job: int = 64
    max_tiles_per_job: int = 0  # 0: no cap beyond max_images_per_job x the tile cap
    max_video_sample_frames: int = 32


_TASK_FIELDS: dict[Task, set[str]] = {
    Task.CAPTION: {"prompt"},
    Task.VQA: {"question"},
    Task.OCR: {"prompt"},
    Task.COMPARE: {"prompt"},
    Task.CHAT: {"messages"},
    Task.PROMPT: {"prompt", "preset"},
    Task.VIDEO: {"question", "prompt", "video"},
}


def validate_job_request(
    request: JobCreate,
    *,
    limits: RequestLimits,
    max_tiles: int,
    extra_images: int = 0,
    video_file: bool = False,
) -> None:
    """Check the rules a schema cannot express; raise InvalidRequest naming the problem.

    `extra_images` counts images sent beside the JSON (multipart files), `video_file` whether
    the clip came that way.
    """
    _check_task_fields(request, len(request.images) + extra_images)
    if request.task == Task.VIDEO or video_file:
        _check_video(request, limits, extra_images=extra_images, video_file=video_file)
    image_count = len(request.images) + len(inline_image_parts(request)) + extra_images
    if image_count > limits.max_images_per_job:
        raise InvalidRequest(
            f"{image_count} images in one job; the limit is {limits.max_images_per_job}",
            code="too_many_images",
        )
    _check_image_count(request, image_count)
    _check_image_uses(request, image_count, limits, max_tiles)
    if request.params.max_new_tokens > limits.max_new_tokens_cap:
        raise InvalidRequest(
            f"params.max_new_tokens={request.params.max_new_tokens} exceeds the limit "
            f"{limits.max_new_tokens_cap}",
            code="invalid_params",
        )
    if request.params.max_tiles is not None and request.params.max_tiles > max_tiles:
        raise InvalidRequest(
            f"params.max_tiles={request.params.max_tiles} exceeds the model's cap {max_tiles}",
            code="invalid_params",
        )
    if text_length(request) > limits.max_text_chars:
        raise InvalidRequest(
            f"the job's text has more than {limits.max_text_chars} characters",
            code="text_too_long",
        )
    check_deadline(request)
    _check_response_format(request)
    if len(json.dumps(request.metadata)) > limits.max_metadata_bytes:
        raise InvalidRequest(
            f"metadata is larger than {limits.max_metadata_bytes} bytes as JSON",
            code="invalid_params",
        )


def _check_response_format(request: JobCreate) -> None:
    fmt = request.response_format
    if fmt is None or isinstance(fmt, TextFormat):
        return
    if request.params.num_beams > 1:
        raise InvalidRequest("response_format needs num_beams=1", code="invalid_params")
    if request.params.min_new_tokens > 0:
        raise InvalidRequest(
            "min_new_tokens does not combine with response_format (JSON ends where it ends)",
            code="invalid_params",
        )
    if isinstance(fmt, JsonSchemaFormat):
        check_schema(fmt.json_schema.json_schema)


def check_deadline(fields: DeadlineFields) -> None:
    """Refuse an expires_at already past or further than MAX_EXPIRES_AFTER_S away."""
    if fields.expires_at is None:
        return
    now = datetime.now(UTC)
    if fields.expires_at <= now:
        raise InvalidRequest("expires_at is already past", code="invalid_params")
    if fields.expires_at > now + timedelta(seconds=MAX_EXPIRES_AFTER_S):
        raise InvalidRequest(
            f"expires_at is more than {MAX_EXPIRES_AFTER_S} seconds away", code="invalid_params"
        )


def image_uses(request: JobCreate, image_count: int) -> int:
    """Images the model reads: each chat reference to an image counts once more."""
    references = sum(
        1
        for message in request.messages or []
        if isinstance(message.content, list)
        for part in message.content
        if isinstance(part, ImagePart | ImageUrlPart)
    )
    return max(image_count, references)


def _check_image_uses(
    request: JobCreate, image_count: int, limits: RequestLimits, max_tiles: int
) -> None:
    # A chat may name one image many times; each use costs the GPU its tiles again.
    if len(request.messages or []) > limits.max_messages_per_job:
        raise InvalidRequest(
            f"{len(request.messages or [])} messages in one job; the limit is "
            f"{limits.max_messages_per_job}",
            code="too_many_messages",
        )
    uses = image_uses(request, image_count)
    if uses > limits.max_images_per_job:
        raise InvalidRequest(
            f"{uses} image uses (listed images and chat references) in one job; the limit is "
            f"{limits.max_images_per_job}",
            code="too_many_images",
        )
    tiles = request.params.max_tiles or max_tiles
    worst = uses * (tiles + 1 if tiles > 1 else 1)  # the grid plus its thumbnail, per use
    if limits.max_tiles_per_job and worst > limits.max_tiles_per_job:
        raise InvalidRequest(
            f"this job may cost up to {worst} tiles; the limit is {limits.max_tiles_per_job} "
            "(fewer images, or a lower params.max_tiles)",
            code="too_many_tiles",
        )


def video_tiles_per_frame(request: JobCreate) -> int:
    """Tiles one sampled frame costs at most: params.max_tiles (default 1), plus a thumbnail
    when a frame may be split."""
    tiles = request.params.max_tiles or 1
    return tiles + 1 if tiles > 1 else 1


def _check_video(
    request: JobCreate, limits: RequestLimits, *, extra_images: int, video_file: bool
) -> None:
    if request.task != Task.VIDEO:
        raise InvalidRequest(
            f"a video file does not apply to task '{request.task}'", code="invalid_params"
        )
    video = request.video
    if request.images or extra_images:
        raise InvalidRequest(
            "task 'video' reads its frames from 'video'; send no images", code="invalid_params"
        )
    if video is None or not (video.has_source or video_file):
        raise InvalidRequest(
            "task 'video' needs a video: 'video' with data, url or video_id, or a multipart "
            "file named 'video'",
            code="missing_video",
        )
    if video.has_source and video_file:
        raise InvalidRequest(
            "give the video either in 'video' or as a multipart file, not both",
            code="invalid_params",
        )
    if video.num_frames > limits.max_video_sample_frames:
        raise InvalidRequest(
            f"video.num_frames={video.num_frames} exceeds the limit "
            f"{limits.max_video_sample_frames}",
            code="invalid_params",
        )
    if request.question is not None and request.prompt is not None:
        raise InvalidRequest("give either 'question' or 'prompt', not both", code="invalid_params")
    if request.question is not None and not request.question.strip():
        raise InvalidRequest("'question' must not be empty", code="missing_question")
    worst = video.num_frames * video_tiles_per_frame(request)
    if limits.max_tiles_per_job and worst > limits.max_tiles_per_job:
        raise InvalidRequest(
            f"this video job may cost up to {worst} tiles ({video.num_frames} frames); the limit "
            f"is {limits.max_tiles_per_job} (fewer video.num_frames, or a lower params.max_tiles)",
            code="too_many_tiles",
        )


def _check_task_fields(request: JobCreate, listed_images: int) -> None:
    allowed = _TASK_FIELDS[request.task]
    for name in ("question", "prompt", "preset", "messages", "video"):
        if getattr(request, name) is not None and name not in allowed:
            raise InvalidRequest(
                f"'{name}' does not apply to task '{request.task}'", code="invalid_params"
            )
    if request.task == Task.VQA and not (request.question or "").strip():
        raise InvalidRequest("task 'vqa' needs a non-empty 'question'", code="missing_question")
    if request.task == Task.CHAT:
        _check_messages(request, listed_images)
    if request.task == Task.PROMPT and not ((request.prompt or "").strip() or request.preset):
        raise InvalidRequest("task 'prompt' needs a 'prompt' or a 'preset'", code="missing_prompt")
    if request.prompt is not None and request.preset is not None:
        raise InvalidRequest("give either 'prompt' or 'preset', not both", code="invalid_params")
    if request.preset is not None and request.preset not in PRESETS:
        raise InvalidRequest(
            f"unknown preset '{request.preset}'; choose one of {sorted(PRESETS)}",
            code="invalid_params",
        )
    if request.prompt is not None and not request.prompt.strip():
        raise InvalidRequest("'prompt' must not be empty", code="missing_prompt")


def _check_image_count(request: JobCreate, count: int) -> None:
    needed = {Task.CAPTION: 1, Task.VQA: 1, Task.OCR: 1, Task.COMPARE: 2}.get(request.task, 0)
    if count < needed:
        raise InvalidRequest(
            f"task '{request.task}' needs at least {needed} image(s); got {count}",
            code="missing_image",
        )


def _check_messages(request: JobCreate, listed_images: int) -> None:
    messages = request.messages or []
    if not messages:
        raise InvalidRequest("task 'chat' needs 'messages'", code="missing_messages")
    if messages[-1].role != "user":
        raise InvalidRequest("the last message must come from the user", code="invalid_messages")
    referenced = set()
    for message in messages:
        for part in message.content if isinstance(message.content, list) else []:
            if isinstance(part, ImagePart):
                if part.image >= listed_images:
                    raise InvalidRequest(
                        f"message refers to image {part.image}, but the job has "
                        f"{listed_images} image(s)",
                        code="invalid_messages",
                    )
                referenced.add(part.image)
    unused = set(range(listed_images)) - referenced
    if unused:
        raise InvalidRequest(
            f"images {sorted(unused)} are not referenced by any message", code="invalid_messages"
        )


def inline_image_parts(request: JobCreate) -> list[ImageUrlPart]:
    """The OpenAI-style image parts of a chat, in order."""
    parts: list[ImageUrlPart] = []
    for message in request.messages or []:
        if isinstance(message.content, list):
            parts.extend(p for p in message.content if isinstance(p, ImageUrlPart))
    return parts


def text_length(request: JobCreate) -> int:
    """Characters of instruction text a job carries (question, prompt and messages)."""
    total = len(request.question or "") + len(request.prompt or "")
    for message in request.messages or []:
        if isinstance(message.content, str):
            total += len(message.content)
        else:
            total += sum(len(p.text) for p in message.content if isinstance(p, TextPart))
    return total
