"""Errors the client raises: one per kind of problem+json answer, each with its stable code."""

from __future__ import annotations

from typing import Any


class InternVLJobsError(Exception):
    """Base of every error this library raises."""


class APIConnectionError(InternVLJobsError):
    """The service could not be reached (after retries)."""


class APIError(InternVLJobsError):
    """The service answered with an error (RFC 9457 problem+json)."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        problem: dict[str, Any] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.problem = problem or {}
        self.retry_after_s = retry_after_s


class InvalidRequestError(APIError):
    """The request was refused as it is (400, 413, 415, 422): fix it, do not retry it."""


class AuthenticationError(APIError):
    """The API key is missing, wrong or revoked (401)."""


class PermissionDeniedError(APIError):
    """The key may not do this (403)."""


class NotFoundError(APIError):
    """No such job, batch or image for this tenant (404)."""


class ConflictError(APIError):
    """The resource's state forbids this (409), e.g. canceling a finished job."""


class RateLimitError(APIError):
    """A queue is full or the key is over its rate (429); see retry_after_s."""


class ServerError(APIError):
    """The service failed or a dependency is down (5xx)."""


class WebhookVerificationError(InternVLJobsError):
    """A webhook's signature or timestamp does not check out."""


_BY_STATUS: dict[int, type[APIError]] = {
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    429: RateLimitError,
}


def error_for(status: int) -> type[APIError]:
    """The error class for an HTTP error status."""
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return ServerError if status >= 500 else InvalidRequestError
