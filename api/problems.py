"""The one place where errors become RFC 9457 problem+json responses."""

from __future__ import annotations

import logging
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from core.errors import (
    BadRequest,
    Conflict,
    InvalidImage,
    InvalidJson,
    InvalidRequest,
    InvalidVideo,
    NotFound,
    PermanentJobError,
    ServiceError,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
)
from core.retry import is_transient

PROBLEM_JSON = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:internvl-jobs:problem:"
log = logging.getLogger("api.problems")

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    411: "length_required",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "invalid_params",
    429: "too_many_requests",
}


def problem_response(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    """A problem+json response with the service's stable `code`."""
    body = {
        "type": PROBLEM_TYPE_PREFIX + code,
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        **(extra or {}),
    }
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


# The HTTP status of each domain error: by code where one error class spans several statuses,
# else by class, else 500.
_STATUS_BY_CODE = {
    "invalid_json": 400,
    "invalid_idempotency_key": 400,
    "image_too_large": 413,
    "image_too_many_pixels": 413,
    "unsupported_image_format": 415,
    "unsupported_media_type": 415,
    "video_too_large": 413,
    "video_frame_too_large": 413,
    "unsupported_video_format": 415,
    "unsupported_video_codec": 415,
}
_STATUS_BY_CLASS: tuple[tuple[type[ServiceError], int], ...] = (
    (BadRequest, 400),
    (InvalidJson, 400),
    (UnsupportedMediaType, 415),
    (InvalidRequest, 422),
    (InvalidImage, 422),
    (InvalidVideo, 422),
    (PermanentJobError, 422),
    (NotFound, 404),
    (Conflict, 409),
    (Unauthorized, 401),
    (TooManyRequests, 429),
    (Unavailable, 503),
)


def http_status(exc: ServiceError) -> int:
    """The HTTP status a domain error answers with."""
    if exc.code in _STATUS_BY_CODE:
        return _STATUS_BY_CODE[exc.code]
    return next((status for kind, status in _STATUS_BY_CLASS if isinstance(exc, kind)), 500)


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    status = http_status(exc)
    if status >= 500:
        log.warning("service error %s: %s", exc.code, exc.detail)
    extra = {"instance": request.url.path, **exc.extra}
    return problem_response(
        status, exc.code, exc.title, exc.detail, headers=exc.headers, extra=extra
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Never echo the input back: it may be megabytes of base64.
    errors = [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
        for err in exc.errors()
    ]
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(part) for part in first["loc"] if part != "body")
    detail = f"{where}: {first['msg']}" if where else str(first["msg"])
    return problem_response(
        422, "invalid_params", "Invalid request", detail, extra={"errors": errors}
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    title = code.replace("_", " ").capitalize()
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405:
        headers["Allow"] = allowed_methods(request)
    return problem_response(exc.status_code, code, title, str(exc.detail), headers=headers)


def allowed_methods(request: Request) -> str:
    """Every method the request's path serves, for a 405's Allow header.

    The router names only the first route whose path matched; a path served by several
    routes (GET and POST on /v1/jobs) serves the union of their methods. Each method is
    tried on a scope of its own, so the request's scope is left as it is.
    """
    allowed = []
    for method in HTTP_METHODS:
        probe = {
            "type": "http",
            "method": method,
            "path": request.scope["path"],
            "root_path": request.scope.get("root_path", ""),
            "headers": [],
        }
        if any(route.matches(probe)[0] is Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return ", ".join(allowed)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    if is_transient(exc) or isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        # A dependency is down for a while: the client may retry; no details leak.
        log.warning("dependency unavailable on %s %s: %r", request.method, request.url.path, exc)
        return problem_response(
            503,
            "unavailable",
            "Service unavailable",
            "a dependency of the service is unreachable; retry shortly",
            headers={"Retry-After": "5"},
        )
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response(
        500, "internal_error", "Internal server error", "the server failed; it has been logged"
    )


def install_problem_handlers(app: FastAPI) -> None:
    """Map every error the app can raise to problem+json."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
