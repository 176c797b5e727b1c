"""Response bodies, named by direction (requests live in core.specs, shared with workers)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


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
    attempts: int = 0
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


class ModelPublic(BaseModel):
    """A model alias clients can name in jobs."""

    alias: str
    checkpoint: str
    queue: str
    default: bool
    tile_size: int
    max_tiles: int
    workers: int = Field(description="Workers serving this model with a recent heartbeat.")


class ModelsPublic(BaseModel):
    models: list[ModelPublic]


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)
