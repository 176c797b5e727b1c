"""Strict JSON in: every request body the API parses goes through `parse`.

Python's json module accepts `NaN`, `Infinity` and `-Infinity` (not JSON), reads `1e999` as
infinity, and raises RecursionError, not a JSON error, on deeply nested input. Here a syntax
error is a 400 `invalid_json`, a non-finite number a 422 `non_finite_number`, and nesting
deeper than MAX_DEPTH a 422 `too_deep`, and a NUL character in any string or key a 422
`nul_character` (PostgreSQL's text cannot hold one), whatever entry point the body came
through.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from core.errors import InvalidJson, InvalidRequest

MAX_DEPTH = 32  # arrays and objects inside one another; job requests need about 6


class _NonFinite(ValueError):
    pass


def _constant(name: str) -> Any:
    raise _NonFinite(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NonFinite(text)
    return value


def parse(raw: bytes | str, *, what: str = "the body") -> Any:
    """The JSON value of raw; ServiceError (400 or 422) for anything that is not strict JSON."""
    try:
        value = json.loads(raw, parse_constant=_constant, parse_float=_finite_float)
    except _NonFinite as exc:
        raise InvalidRequest(
            f"{what} holds {exc}, which is not a JSON number; send finite numbers only",
            code="non_finite_number",
        ) from exc
    except RecursionError as exc:
        raise _too_deep(what) from exc
    except ValueError as exc:  # JSONDecodeError and undecodable bytes
        raise InvalidJson(f"{what} is not valid JSON") from exc
    problem = _shape_problem(value, MAX_DEPTH)
    if problem == "too_deep":
        raise _too_deep(what)
    if problem == "nul_character":
        raise InvalidRequest(
            f"{what} holds a NUL character (\\u0000), which is not accepted in any string",
            code="nul_character",
        )
    return value


def _too_deep(what: str) -> InvalidRequest:
    return InvalidRequest(
        f"{what} nests arrays and objects more than {MAX_DEPTH} deep", code="too_deep"
    )


def _shape_problem(value: Any, limit: int) -> str | None:
    """'too_deep' past `limit` levels of nesting, 'nul_character' for a NUL in a string or
    key, else None; walked without recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return "nul_character"
            continue
        if isinstance(item, dict):
            if any("\x00" in key for key in item):
                return "nul_character"
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return "too_deep"
        stack.extend((child, depth + 1) for child in children)
    return None


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "application/json").split(";")[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


class StrictJsonRoute(APIRoute):
    """A route whose JSON body FastAPI reads only after `parse` (on a worker thread) took it.

    The route class of every router: FastAPI's own parsing is json.loads on the event loop.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """FastAPI's handler, behind a strict parse of the JSON body."""
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def strict_handler(request: Request) -> Response:
            if _is_json(request.headers.get("content-type")):
                body = await request.body()
                if body:
                    # Starlette's Request.json() returns this cached value.
                    request._json = await run_in_threadpool(parse, body)
            return await handler(request)

        return strict_handler
