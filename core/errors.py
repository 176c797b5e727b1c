"""The service's error base: every failure a client can see carries a status and a stable code."""

from __future__ import annotations

from typing import Any

PROBLEM_TYPE_PREFIX = "urn:internvl-jobs:problem:"


class ServiceError(Exception):
    """An error with an HTTP status, a machine-readable code and a human message."""

    status: int = 500
    code: str = "internal_error"
    title: str = "Internal server error"

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = headers or {}
        self.extra = extra or {}

    def to_problem(self, *, instance: str | None = None) -> dict[str, Any]:
        """The RFC 9457 problem document for this error."""
        body: dict[str, Any] = {
            "type": PROBLEM_TYPE_PREFIX + self.code,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body


class InvalidRequest(ServiceError):
    """The request is well-formed JSON but its content is not acceptable."""

    status = 422
    code = "invalid_params"
    title = "Invalid request"


class BadRequest(ServiceError):
    """The request itself is malformed (its target, its framing)."""

    status = 400
    code = "bad_request"
    title = "Bad request"


class InvalidJson(ServiceError):
    """The request body is not (strict) JSON."""

    status = 400
    code = "invalid_json"
    title = "Invalid JSON"


class UnsupportedMediaType(ServiceError):
    """The request body's content type is not one the endpoint reads."""

    status = 415
    code = "unsupported_media_type"
    title = "Unsupported media type"


class InvalidImage(ServiceError):
    """An image is empty, corrupt, too big or of a format the service does not read."""

    status = 422
    code = "invalid_image"
    title = "Invalid image"


class NotFound(ServiceError):
    """The resource does not exist, or belongs to another tenant."""

    status = 404
    code = "not_found"
    title = "Not found"


class Conflict(ServiceError):
    """The request conflicts with the resource's current state."""

    status = 409
    code = "conflict"
    title = "Conflict"


class Unauthorized(ServiceError):
    """No valid API key was presented."""

    status = 401
    code = "unauthorized"
    title = "Unauthorized"


class TooManyRequests(ServiceError):
    """A queue or rate limit is exceeded; retry after the given delay."""

    status = 429
    code = "queue_full"
    title = "Too many requests"


class Unavailable(ServiceError):
    """A dependency (database, broker, storage) cannot be reached right now."""

    status = 503
    code = "unavailable"
    title = "Service unavailable"


class PermanentJobError(ServiceError):
    """A job cannot succeed however often it is retried (bad image, invalid parameters)."""

    status = 422
    code = "job_failed"
    title = "Job failed"
