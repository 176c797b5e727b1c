"""Response bodies, named by direction (requests live in core.specs, shared with workers)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field


def _integral(value: Any) -> Any:
    # JSON Schema's integer is any number without a fraction (3.0 included); a bool is none.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# An integer as JSON Schema defines it, for strict models (no bool -> int, no "3" -> 3).
AS_JSON_INT = BeforeValidator(_integral)


class JobError(BaseModel):
    code: str
    message: str


class JobPublic(BaseModel):
    """A job as clients see it."""

    id: str = Field(examples=["job_01jd5k3m8q9v2x7c4n6b0t1r5w"])
    object: str = "job"
    status: str = Field(examples=["succeeded"])
    task: str = Field(examples=["caption"])
    model: str = Field(examples=["internvl3-1b"])
    priority: int = 0
    batch_id: str | None = None
    custom_id: str | None = None
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    cancel_requested_at: str | None = Field(
        None, description="Set when a cancel was asked for while the job was running."
    )
    expires_at: str | None = Field(
        None, description="Not started by then: `expired`; still running then: canceled."
    )
    attempts: int = Field(0, description="Times a worker claimed the job (retries show here).")
    metadata: dict[str, Any] = Field(default_factory=dict)
    result: dict[str, Any] | None = Field(None, examples=[{"text": "A cat lying on a rug."}])
    usage: dict[str, Any] | None = Field(
        None,
        examples=[
            {
                "prompt_tokens": 3350,
                "completion_tokens": 42,
                "image_tiles": [13],
                "queue_s": 0.4,
                "inference_s": 1.2,
            }
        ],
    )
    error: JobError | None = None
    queue_position: int | None = Field(
        None,
        description="Queued jobs of its model ahead of it (higher priority, or the same and "
        "older), counted up to 10000; only on GET /v1/jobs/{id} of a queued job.",
    )
    estimated_start_s: float | None = Field(
        None, description="Seconds until it should start, from the model's recent throughput."
    )
    queue_reason: str | None = Field(
        None,
        description="Why it waits: tenant_limit (its tenant already runs as many jobs as its "
        "running limit allows), no_worker (no worker serves the model) or workers_starting "
        "(its workers are still loading the model); null otherwise.",
    )


class JobsPublic(BaseModel):
    """One page of jobs, newest first."""

    data: list[JobPublic]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: last.")


class ModelPublic(BaseModel):
    """A model alias clients can name in jobs."""

    alias: str
    checkpoint: str
    queue: str
    default: bool
    tile_size: int
    max_tiles: int
    workers: int = Field(description="Workers serving this model with a recent heartbeat.")
    ready_workers: int = Field(0, description="Of those, workers ready to run jobs.")
    starting_workers: int = Field(0, description="Of those, workers still loading the model.")
    queued: int = Field(0, description="Jobs waiting for this model (the queue depth).")
    running: int = Field(0, description="Jobs a worker of this model holds now.")
    throughput_per_min: float = Field(
        0.0, description="Jobs finished (succeeded or failed) per minute over the last 5 min."
    )


class ModelsPublic(BaseModel):
    models: list[ModelPublic]


class WorkerPublic(BaseModel):
    """A worker process as its last heartbeat described it."""

    id: str = Field(examples=["gpu0.internvl3-1b@gpu-host-1"])
    host: str
    device: str = Field(examples=["gpu0"])
    model: str
    queue: str
    state: str = Field(
        description="starting | ready | stopping | stopped | defunct, or lost when its "
        "heartbeat is overdue."
    )
    pid: int
    started_at: str
    last_heartbeat_at: str
    jobs_done: int
    stats: dict[str, Any] = Field(
        default_factory=dict,
        description="Batch statistics: batches, jobs, mean_batch_size, tiles, busy_s, ...",
    )


class WorkersPublic(BaseModel):
    workers: list[WorkerPublic]


class PresetPublic(BaseModel):
    """A named instruction for task=prompt."""

    name: str
    instruction: str
    response_format: dict[str, Any] | None = Field(
        None, description="For structured presets: the JSON Schema the answer is held to."
    )


class PresetsPublic(BaseModel):
    presets: list[PresetPublic]


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)


class WebhookSecretPublic(BaseModel):
    """The tenant's Standard Webhooks signing secret."""

    secret: str = Field(examples=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"])
    created_at: str
    previous_expires_at: str | None = Field(
        None, description="Until when a rotated-out secret still signs, as a second signature."
    )


class SecretRotate(BaseModel):
    """Options of a secret rotation."""

    model_config = {"extra": "forbid", "strict": True}  # as documented: no bool -> int

    overlap_s: Annotated[int, Field(ge=0, le=30 * 86400), AS_JSON_INT] | None = Field(
        None,
        description="How long the old secret keeps signing; 0 revokes it at once. "
        "Default: the service's webhook_secret_overlap_s.",
    )


class WebhookAttemptPublic(BaseModel):
    """One try at sending a webhook."""

    attempted_at: str
    status_code: int | None = None
    latency_ms: int
    error: str | None = None
    response: str | None = Field(None, description="The start of the receiver's answer.")


class WebhookDeliveryPublic(BaseModel):
    """One webhook message (its id is the webhook-id header) and its attempts."""

    id: str = Field(examples=["msg_01jd5k3m8q9v2x7c4n6b0t1r5w"])
    object: str = "webhook_delivery"
    event_type: str = Field(examples=["job.succeeded"])
    url: str
    status: str = Field(description="pending | succeeded | failed | disabled (410 Gone)")
    attempt_count: int
    next_attempt_at: str | None = None
    created_at: str
    finished_at: str | None = None
    attempts: list[WebhookAttemptPublic]


class WebhookDeliveriesPublic(BaseModel):
    data: list[WebhookDeliveryPublic]


class WebhookReplay(BaseModel):
    """Which delivery to send again; all failed ones of the job when empty."""

    model_config = {"extra": "forbid", "strict": True}

    delivery_id: str | None = None


class ImagePublic(BaseModel):
    """An uploaded image: reference it in jobs as {"image_id": ...}."""

    image_id: str = Field(examples=["sha256:" + "ab" * 32])
    object: str = "image"
    format: str = Field(examples=["JPEG"])
    width: int = Field(examples=[640], description="As displayed (EXIF orientation applied).")
    height: int = Field(examples=[480])
    bytes: int
    model: str = Field(description="The model the tile count is quoted for.")
    tiles: int = Field(examples=[13], description="Tiles the model will see for this image.")


class VideoPublic(BaseModel):
    """An uploaded video: reference it in video jobs as {"video": {"video_id": ...}}."""

    video_id: str = Field(examples=["sha256:" + "cd" * 32])
    object: str = "video"
    format: str = Field(examples=["MP4"], description="The container: MP4, MOV, WEBM, MKV, AVI.")
    width: int = Field(examples=[640], description="Frame width.")
    height: int = Field(examples=[360])
    bytes: int


class Problem(BaseModel):
    """An error (RFC 9457); `code` is stable and machine-readable."""

    type: str = Field(examples=["urn:internvl-jobs:problem:not_found"])
    title: str = Field(examples=["Not found"])
    status: int = Field(examples=[404])
    detail: str = Field(examples=["no job job_01jd5k3m8q9v2x7c4n6b0t1r5w"])
    code: str = Field(examples=["not_found"])
    instance: str | None = None


class BatchCounts(BaseModel):
    """How many of a batch's jobs are in each status."""

    queued: int
    running: int
    succeeded: int
    failed: int
    canceled: int
    expired: int = Field(0, description="Jobs whose deadline passed before they started.")


class BatchWebhook(BaseModel):
    url: str
    events: list[str]


class BatchPublic(BaseModel):
    """A batch: its jobs are listed by GET /v1/jobs?batch_id=..., its results as JSONL."""

    id: str = Field(examples=["batch_01jd5k3m8q9v2x7c4n6b0t1r5w"])
    object: str = "batch"
    status: str = Field(
        examples=["in_progress"], description="in_progress, canceling, completed or canceled"
    )
    total: int
    counts: BatchCounts
    metadata: dict[str, Any] = Field(default_factory=dict)
    webhook: BatchWebhook | None = None
    created_at: str
    cancel_requested_at: str | None = None
    expires_at: str | None = Field(None, description="The deadline the batch's jobs got.")
    finished_at: str | None = None
