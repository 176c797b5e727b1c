"""The OpenAPI description: request schemas of hand-read bodies, and problem+json errors."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from api.contract import state_validation
from api.problems import PROBLEM_JSON
from core.config import Settings

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
# An 8x8 red PNG: request examples that the service really accepts.
EXAMPLE_PNG_BASE64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFElEQVR4nGM8ISfHgA0w"
    "YRUdtBIA0MoBFD5jqJkAAAAASUVORK5CYII="
)
JOB_EXAMPLES: dict[str, Any] = {
    "caption": {
        "summary": "Caption one inline image",
        "value": {
            "task": "caption",
            "images": [{"data": EXAMPLE_PNG_BASE64}],
            "params": {"max_new_tokens": 64},
            "metadata": {"order": 1234},
        },
    },
    "vqa": {
        "summary": "Ask about an image",
        "value": {
            "task": "vqa",
            "question": "What colour is the square?",
            "images": [{"data": EXAMPLE_PNG_BASE64}],
        },
    },
    "chat": {
        "summary": "A multi-turn chat about one image",
        "value": {
            "task": "chat",
            "images": [{"data": EXAMPLE_PNG_BASE64}],
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "image": 0},
                        {"type": "text", "text": "What is this?"},
                    ],
                },
                {"role": "assistant", "content": "A red square."},
                {"role": "user", "content": "Is it bright?"},
            ],
        },
    },
}
_DESCRIPTIONS = {
    400: "Malformed request (invalid JSON, or a NUL in the path or query)",
    401: "Missing or invalid API key",
    404: "No such resource for this tenant",
    409: "Conflicts with the resource's state",
    413: "Too large",
    415: "Unsupported media type or image format",
    422: "Invalid request",
    429: "Queue full or rate limited; see Retry-After",
    503: "A dependency is unavailable",
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for these error statuses, each a problem+json document."""
    return {
        status: {
            "description": _DESCRIPTIONS.get(status, "Error"),
            "content": {PROBLEM_JSON: {"schema": PROBLEM_REF}},
        }
        for status in statuses
    }


def publish_schemas(app: FastAPI, models: dict[str, type[BaseModel]], settings: Settings) -> None:
    """Add schemas of bodies that routes read by hand (JSON or multipart) to the description,
    with the limits and rules validation applies under these settings."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, model in models.items():
            definition = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(definition.pop("$defs", {}))
            components[name] = definition
        state_validation(schema, settings)
        _drop_default_validation_errors(schema)
        _document_problems(schema)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _drop_default_validation_errors(schema: dict[str, Any]) -> None:
    # FastAPI documents 422 as its own HTTPValidationError; this service answers problem+json.
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            responses = operation.get("responses", {})
            if "422" in responses:
                responses["422"] = problem_responses(422)[422]
    components = schema.get("components", {}).get("schemas", {})
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)


def _document_problems(schema: dict[str, Any]) -> None:
    # The errors each operation can answer; statuses a route documents itself are kept.
    # Every request: 400 for a NUL (%00) in its path or query, 413 for a body over the cap.
    # /v1/: 401 and 429 (the auth gate: keys and their rate), 503 (a dependency is down).
    # Parameters or a body: 422; a body: 400 and 415; an id in the path: 404.
    for path, item in schema.get("paths", {}).items():
        for operation in item.values():
            statuses = [400, 413]
            if path.startswith("/v1/"):
                statuses += [401, 429, 503]
            if operation.get("parameters") or "requestBody" in operation:
                statuses.append(422)
            if "requestBody" in operation:
                statuses.append(415)
            if "{" in path:
                statuses.append(404)
            responses = operation.setdefault("responses", {})
            for status, response in problem_responses(*statuses).items():
                responses.setdefault(str(status), response)
