"""Python client of the internvl-jobs HTTP API (depends on httpx only)."""

from internvl_jobs_client._requests import RetryPolicy, video_ref
from internvl_jobs_client.aio import AsyncClient
from internvl_jobs_client.client import DEFAULT_URL, Client
from internvl_jobs_client.errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    ConflictError,
    InternVLJobsError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    WebhookVerificationError,
)
from internvl_jobs_client.models import (
    Batch,
    BatchResult,
    ImageInfo,
    Job,
    JobError,
    JobResult,
    JsonObjectFormat,
    JsonSchemaFormat,
    Page,
    ResponseFormat,
    Usage,
    VideoInfo,
    json_schema_format,
)
from internvl_jobs_client.webhooks import verify_webhook

__all__ = [
    "DEFAULT_URL",
    "APIConnectionError",
    "APIError",
    "AsyncClient",
    "AuthenticationError",
    "Batch",
    "BatchResult",
    "Client",
    "ConflictError",
    "ImageInfo",
    "InternVLJobsError",
    "InvalidRequestError",
    "Job",
    "JobError",
    "JobResult",
    "JsonObjectFormat",
    "JsonSchemaFormat",
    "NotFoundError",
    "Page",
    "PermissionDeniedError",
    "RateLimitError",
    "ResponseFormat",
    "RetryPolicy",
    "ServerError",
    "Usage",
    "VideoInfo",
    "WebhookVerificationError",
    "json_schema_format",
    "verify_webhook",
    "video_ref",
]
