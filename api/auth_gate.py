"""Authenticate every /v1/ request before anything reads its body; refuse NUL in its target.

A route's own dependencies run only after FastAPI has read and parsed the body, so an
anonymous caller could make the API read (up to max_body_bytes) and parse bodies, and learn
from a 422 what it would accept. This gate, in front of the routes, answers 401 (or 429 for
a key over its rate limit) from the headers alone; the routes find the tenant it established.
A NUL character (%00) in the path or the query string is a 400 here, for every route: no id,
filter or cursor can hold one, and PostgreSQL refuses them in text with an error.
"""

from __future__ import annotations

from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from api.deps import TENANT_STATE_KEY, resolve_tenant
from api.problems import http_status, problem_response
from core.errors import BadRequest, ServiceError

API_PREFIX = "/v1/"


class AuthGateMiddleware:
    """401 for /v1/ requests without a valid API key, before the body is read; 400 for NUL."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            if scope["path"].startswith(API_PREFIX):
                runtime = scope["app"].state.runtime
                authorization = Headers(scope=scope).get("authorization")
                if runtime.settings.auth_enabled:  # a database read: off the event loop
                    tenant_id = await run_in_threadpool(resolve_tenant, runtime, authorization)
                else:
                    tenant_id = resolve_tenant(runtime, authorization)
                scope.setdefault("state", {})[TENANT_STATE_KEY] = tenant_id
            _refuse_nul(scope)
        except ServiceError as exc:
            response = problem_response(
                http_status(exc),
                exc.code,
                exc.title,
                exc.detail,
                headers=exc.headers,
                extra={"instance": scope["path"].replace("\x00", "%00"), **exc.extra},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _refuse_nul(scope: Scope) -> None:
    if "\x00" in scope["path"] or b"%00" in scope.get("query_string", b""):
        raise BadRequest(
            "the request's path or query string holds a NUL character (%00)",
            code="nul_character",
        )
