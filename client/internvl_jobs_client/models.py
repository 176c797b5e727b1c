"""Typed views of the service's JSON: jobs, pages, images, batches and batch results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypedDict, TypeVar

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "canceled", "expired"})
T = TypeVar("T")


class JsonSchema(TypedDict):
    """A named JSON Schema (the `json_schema` member of a response_format)."""

    name: str
    schema: dict[str, Any]


class JsonSchemaFormat(TypedDict):
    """Answer JSON matching a schema: {"type": "json_schema", "json_schema": {...}}."""

    type: Literal["json_schema"]
    json_schema: JsonSchema


class JsonObjectFormat(TypedDict):
    """Answer any JSON object: {"type": "json_object"}."""

    type: Literal["json_object"]


ResponseFormat = JsonSchemaFormat | JsonObjectFormat


def json_schema_format(name: str, schema: dict[str, Any]) -> JsonSchemaFormat:
    """A response_format asking for JSON that matches `schema`."""
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}


class JobResult(dict[str, Any]):
    """A job's result: the JSON object, with typed access to its usual fields."""

    @property
    def text(self) -> str | None:
        """The generated text."""
        return self.get("text")

    @property
    def finish_reason(self) -> str | None:
        """stop, length (cut by max_new_tokens) or canceled."""
        return self.get("finish_reason")

    @property
    def json(self) -> Any:
        """The parsed answer of a response_format job (None when cut or not structured)."""
        return self.get("json")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> JobResult | None:
        """A JobResult from the job's JSON (None while the job has none)."""
        return None if data is None else cls(data)


@dataclass(frozen=True)
class Usage:
    """What a job cost: tokens, tiles per image (per frame for a video), and time queued and
    running; a video job also reports the frames it read and which (`frame_indices`)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    image_tiles: list[int] = field(default_factory=list)
    queue_s: float = 0.0
    inference_s: float = 0.0
    frames: int | None = None
    frame_indices: list[int] | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Usage | None:
        """Usage from the job's JSON (None while the job has none)."""
        if not data:
            return None
        return cls(
            prompt_tokens=int(data.get("prompt_tokens", 0)),
            completion_tokens=int(data.get("completion_tokens", 0)),
            image_tiles=list(data.get("image_tiles", [])),
            queue_s=float(data.get("queue_s", 0.0)),
            inference_s=float(data.get("inference_s", 0.0)),
            frames=int(data["frames"]) if "frames" in data else None,
            frame_indices=list(data["frame_indices"]) if "frame_indices" in data else None,
        )


@dataclass(frozen=True)
class JobError:
    """Why a job failed."""

    code: str
    message: str


@dataclass(frozen=True)
class Job:
    """A job as the service reports it; `raw` keeps every field, including newer ones."""

    id: str
    status: str
    task: str
    model: str
    created_at: str
    started_at: str | None
    finished_at: str | None
    attempts: int
    metadata: dict[str, Any]
    result: JobResult | None
    usage: Usage | None
    error: JobError | None
    batch_id: str | None
    custom_id: str | None
    raw: dict[str, Any]
    expires_at: str | None = None
    queue_position: int | None = None  # while queued (GET of one job): jobs ahead of it
    estimated_start_s: float | None = None
    queue_reason: str | None = None  # tenant_limit | no_worker | workers_starting, or None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        """A Job from the service's JSON."""
        error = data.get("error")
        return cls(
            id=data["id"],
            status=data["status"],
            task=data.get("task", ""),
            model=data.get("model", ""),
            created_at=data.get("created_at", ""),
            started_at=data.get("started_at"),
            finished_at=data.get("finished_at"),
            attempts=int(data.get("attempts", 0)),
            metadata=data.get("metadata") or {},
            result=JobResult.from_dict(data.get("result")),
            usage=Usage.from_dict(data.get("usage")),
            error=JobError(error["code"], error.get("message", "")) if error else None,
            batch_id=data.get("batch_id"),
            custom_id=data.get("custom_id"),
            raw=data,
            expires_at=data.get("expires_at"),
            queue_position=data.get("queue_position"),
            estimated_start_s=data.get("estimated_start_s"),
            queue_reason=data.get("queue_reason"),
        )

    @property
    def done(self) -> bool:
        """True once the job can no longer change."""
        return self.status in TERMINAL_STATUSES

    @property
    def text(self) -> str | None:
        """The generated text of a succeeded job."""
        return self.result.text if self.result is not None else None


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing; pass next_cursor back for the next one."""

    data: list[T]
    next_cursor: str | None


@dataclass(frozen=True)
class ImageInfo:
    """An uploaded image and the tiles it costs on a model."""

    image_id: str
    format: str
    width: int
    height: int
    bytes: int
    tiles: int
    model: str

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageInfo:
        """An ImageInfo from the service's JSON."""
        return cls(
            image_id=data["image_id"],
            format=data["format"],
            width=int(data["width"]),
            height=int(data["height"]),
            bytes=int(data["bytes"]),
            tiles=int(data["tiles"]),
            model=data.get("model", ""),
        )


@dataclass(frozen=True)
class VideoInfo:
    """An uploaded video: pass its video_id as a video job's `video`."""

    video_id: str
    format: str
    width: int
    height: int
    bytes: int

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VideoInfo:
        """A VideoInfo from the service's JSON."""
        return cls(
            video_id=data["video_id"],
            format=data["format"],
            width=int(data["width"]),
            height=int(data["height"]),
            bytes=int(data["bytes"]),
        )


@dataclass(frozen=True)
class Batch:
    """A batch: its status and how many of its jobs are in each status."""

    id: str
    status: str
    total: int
    counts: dict[str, int]
    metadata: dict[str, Any]
    created_at: str
    finished_at: str | None
    raw: dict[str, Any]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Batch:
        """A Batch from the service's JSON."""
        return cls(
            id=data["id"],
            status=data["status"],
            total=int(data["total"]),
            counts=dict(data.get("counts", {})),
            metadata=data.get("metadata") or {},
            created_at=data.get("created_at", ""),
            finished_at=data.get("finished_at"),
            raw=data,
        )

    @property
    def done(self) -> bool:
        """True once every job of the batch is terminal."""
        return self.status in ("completed", "canceled")


@dataclass(frozen=True)
class BatchResult:
    """One line of a batch's results."""

    custom_id: str | None
    job_id: str
    status: str
    result: JobResult | None
    error: JobError | None
    usage: Usage | None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchResult:
        """A BatchResult from one JSONL line."""
        error = data.get("error")
        return cls(
            custom_id=data.get("custom_id"),
            job_id=data["job_id"],
            status=data["status"],
            result=JobResult.from_dict(data.get("result")),
            error=JobError(error["code"], error.get("message", "")) if error else None,
            usage=Usage.from_dict(data.get("usage")),
        )

    @property
    def text(self) -> str | None:
        """The generated text of a succeeded job."""
        return self.result.text if self.result is not None else None
