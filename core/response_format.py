"""Structured output requests: `response_format` as OpenAI's API spells it, checked at submit.

A job may ask for any JSON (`{"type": "json_object"}`) or for JSON matching a schema
(`{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}`); the worker then
constrains decoding so the text parses and matches. Schemas are refused at submit (422) when
they are too large or too deep, or use a keyword the constrained decoder does not enforce:
a schema the worker would silently loosen is worse than a clear refusal.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.errors import InvalidRequest

MAX_SCHEMA_BYTES = 16 * 1024
MAX_SCHEMA_DEPTH = 12
MAX_SCHEMA_NODES = 500

# Keywords the decoder enforces, plus annotations that constrain nothing.
ENFORCED = frozenset(
    {
        "type", "properties", "required", "additionalProperties", "items", "prefixItems",
        "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs", "definitions",
        "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
        "minLength", "maxLength", "pattern", "format", "minItems", "maxItems",
    }
)  # fmt: skip
ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated"}
)
# Keywords holding one subschema, a list of them, or a map of them.
_ONE = ("items", "additionalProperties")
_MANY = ("anyOf", "oneOf", "allOf", "prefixItems")
_MAP = ("properties", "$defs", "definitions")
SCHEMA_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class JsonSchemaSpec(_Strict):
    """A named JSON Schema the answer must match (OpenAI's `json_schema` object)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    json_schema: dict[str, Any] = Field(alias="schema")
    description: str | None = Field(None, max_length=1000)
    strict: bool | None = Field(None, description="Accepted for compatibility; always strict.")


class JsonSchemaFormat(_Strict):
    """The answer is JSON matching `json_schema.schema`."""

    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


class JsonObjectFormat(_Strict):
    """The answer is a JSON object (any keys)."""

    type: Literal["json_object"]


class TextFormat(_Strict):
    """Free text, as without response_format."""

    type: Literal["text"]


ResponseFormat = Annotated[
    JsonSchemaFormat | JsonObjectFormat | TextFormat, Field(discriminator="type")
]


def stored_format(response_format: ResponseFormat | None) -> dict[str, Any] | None:
    """What the worker needs (jobs.spec["response_format"]): the schema, or None for text."""
    if response_format is None or isinstance(response_format, TextFormat):
        return None
    if isinstance(response_format, JsonObjectFormat):
        return {"type": "json_object"}
    spec = response_format.json_schema
    return {"type": "json_schema", "name": spec.name, "schema": spec.json_schema}


def format_key(stored: dict[str, Any]) -> str:
    """The SHA-256 of a stored format's canonical JSON: the compiled-grammar cache key."""
    canonical = json.dumps(stored, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_schema(schema: dict[str, Any]) -> None:
    """Refuse a schema too large, too deep, or using keywords the decoder does not enforce."""
    size = len(json.dumps(schema))
    if size > MAX_SCHEMA_BYTES:
        raise _invalid(f"the schema is {size} bytes as JSON; the limit is {MAX_SCHEMA_BYTES}")
    nodes = _walk(schema, path="schema", depth=0)
    if nodes > MAX_SCHEMA_NODES:
        raise _invalid(f"the schema has {nodes} subschemas; the limit is {MAX_SCHEMA_NODES}")


def _walk(node: Any, *, path: str, depth: int) -> int:
    """Check one subschema and those under it; the number of subschemas seen."""
    if isinstance(node, bool):
        return 1
    if not isinstance(node, dict):
        raise _invalid(f"{path} must be an object (a JSON Schema)")
    if depth > MAX_SCHEMA_DEPTH:
        raise _invalid(f"{path} is nested deeper than {MAX_SCHEMA_DEPTH} levels")
    for keyword in node:
        if keyword not in ENFORCED and keyword not in ANNOTATIONS:
            raise _invalid(f"{path}: keyword '{keyword}' is not supported", "unsupported_schema")
    _check_values(node, path)
    return 1 + sum(
        _walk(child, path=where, depth=depth + 1) for where, child in _children(node, path)
    )


def _children(node: dict[str, Any], path: str) -> list[tuple[str, Any]]:
    """The subschemas directly under a schema, with their paths."""
    found = [(f"{path}.{k}", node[k]) for k in _ONE if k in node]
    for keyword in _MANY:
        found += [(f"{path}.{keyword}[{i}]", c) for i, c in enumerate(_list(node, keyword, path))]
    for keyword in _MAP:
        found += [(f"{path}.{keyword}.{n}", c) for n, c in _map(node, keyword, path).items()]
    return found


def _check_values(node: dict[str, Any], path: str) -> None:
    types = node.get("type", [])
    for name in [types] if isinstance(types, str) else types if isinstance(types, list) else [0]:
        if not isinstance(name, str) or name not in SCHEMA_TYPES:
            raise _invalid(f"{path}.type: unknown type {name!r}")
    if "pattern" in node:
        try:
            re.compile(str(node["pattern"]))
        except re.error as exc:
            raise _invalid(f"{path}.pattern is not a valid regular expression: {exc}") from exc
    ref = node.get("$ref")
    if ref is not None and not (isinstance(ref, str) and ref.startswith("#")):
        raise _invalid(f"{path}.$ref: only local references (#/...) are supported")


def _list(node: dict[str, Any], keyword: str, path: str) -> list[Any]:
    value = node.get(keyword, [])
    if not isinstance(value, list):
        raise _invalid(f"{path}.{keyword} must be a list of schemas")
    return value


def _map(node: dict[str, Any], keyword: str, path: str) -> dict[str, Any]:
    value = node.get(keyword, {})
    if not isinstance(value, dict):
        raise _invalid(f"{path}.{keyword} must map names to schemas")
    return value


def _invalid(message: str, code: str = "invalid_schema") -> InvalidRequest:
    return InvalidRequest(f"response_format.json_schema.{message}", code=code)
