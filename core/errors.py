"""The service's domain errors: a stable machine-readable code and a human message.

No transport here: the API maps each error to its HTTP status and problem+json body in one
place (api/problems.py); a worker fails a job at once on a `permanent` error.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """An error with a machine-readable code, a title and a human message."""

    code: str = "internal_error"
    title: str = "Internal server error"
    # The request or job itself is at fault: retrying the same thing fails the same way.
    permanent: bool = False

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        self.headers = headers or {}
        self.extra = extra or {}


class InvalidRequest(ServiceError):
    """The request is well-formed JSON but its content is not acceptable."""

    permanent = True
    code = "invalid_params"
    title = "Invalid request"


class BadRequest(ServiceError):
    """The request itself is malformed (its target, its framing)."""

    code = "bad_request"
    title = "Bad request"


class InvalidJson(ServiceError):
    """The request body is not (strict) JSON."""

    code = "invalid_json"
    title = "Invalid JSON"


class UnsupportedMediaType(ServiceError):
    """The request body's content type is not one the endpoint reads."""

    code = "unsupported_media_type"
    title = "Unsupported media type"


class InvalidImage(ServiceError):
    """An image is empty, corrupt, too big or of a format the service does not read."""

    permanent = True
    code = "invalid_image"
    title = "Invalid image"


class InvalidVideo(ServiceError):
    """A video is empty, corrupt, too big, too long or in a container the service does not read."""

    permanent = True
    code = "invalid_video"
    title = "Invalid video"


class NotFound(ServiceError):
    """The resource does not exist, or belongs to another tenant."""

    permanent = True
    code = "not_found"
    title = "Not found"


class Conflict(ServiceError):
    """The request conflicts with the resource's current state."""

    permanent = True
    code = "conflict"
    title = "Conflict"


class Unauthorized(ServiceError):
    """No valid API key was presented."""

    permanent = True
    code = "unauthorized"
    title = "Unauthorized"


class TooManyRequests(ServiceError):
    """A queue or rate limit is exceeded; retry after the given delay."""

    code = "queue_full"
    title = "Too many requests"


class Unavailable(ServiceError):
    """A dependency (database, broker, storage) cannot be reached right now."""

    code = "unavailable"
    title = "Service unavailable"


class PermanentJobError(ServiceError):
    """A job cannot succeed however often it is retried (bad image, invalid parameters)."""

    permanent = True
    code = "job_failed"
    title = "Job failed"
