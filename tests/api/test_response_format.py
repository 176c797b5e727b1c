"""response_format at submit: schemas checked (422 with nothing stored) and kept for the worker."""

from __future__ import annotations

import json
from typing import Any

from fastapi.testclient import TestClient

from api.deps import Runtime
from core.models import Job
from core.response_format import MAX_SCHEMA_BYTES, MAX_SCHEMA_DEPTH
from tests.support.api import b64, caption_body, png_bytes, stored_state

INVOICE = {
    "type": "object",
    "properties": {
        "total": {"type": "number", "minimum": 0},
        "currency": {"enum": ["EUR", "USD"]},
        "lines": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
    },
    "required": ["total", "currency"],
    "additionalProperties": False,
}


def schema_format(schema: Any, name: str = "invoice") -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}


def stored_spec(runtime: Runtime, job_id: str) -> dict[str, Any]:
    with runtime.sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return dict(job.spec)


def test_a_schema_is_kept_for_the_worker(client: TestClient, runtime: Runtime) -> None:
    response = client.post("/v1/jobs", json=caption_body(response_format=schema_format(INVOICE)))
    assert response.status_code == 202, response.text
    spec = stored_spec(runtime, response.json()["id"])
    assert spec["response_format"] == {"type": "json_schema", "name": "invoice", "schema": INVOICE}


def test_json_object_and_text_formats(client: TestClient, runtime: Runtime) -> None:
    as_object = client.post("/v1/jobs", json=caption_body(response_format={"type": "json_object"}))
    as_text = client.post("/v1/jobs", json=caption_body(response_format={"type": "text"}))
    assert stored_spec(runtime, as_object.json()["id"])["response_format"] == {
        "type": "json_object"
    }
    assert "response_format" not in stored_spec(runtime, as_text.json()["id"])


def test_a_structured_preset_brings_its_schema(client: TestClient, runtime: Runtime) -> None:
    body = {"task": "prompt", "images": [{"data": b64(png_bytes())}], "preset": "document_json"}
    spec = stored_spec(runtime, client.post("/v1/jobs", json=body).json()["id"])
    schema = spec["response_format"]["schema"]
    assert set(schema["required"]) == {"text", "document_type", "fields", "summary"}
    presets = {p["name"] for p in client.get("/v1/presets").json()["presets"]}
    assert {"document_json", "document_type", "document_fields", "document_summary"} <= presets


def nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"x": schema}}
    return schema


def test_bad_schemas_are_refused_with_nothing_stored(client: TestClient, runtime: Runtime) -> None:
    huge = {"type": "object", "description": "x" * MAX_SCHEMA_BYTES}
    cases = {
        "unsupported_schema": [
            {"type": "object", "patternProperties": {"^a": {"type": "string"}}},
            {"type": "array", "items": {"not": {"type": "string"}}},
            {"if": {"type": "string"}, "then": {"minLength": 1}},
        ],
        "invalid_schema": [
            nested(MAX_SCHEMA_DEPTH + 2),
            huge,
            {"type": "strnig"},
            {"type": "string", "pattern": "("},
            {"$ref": "https://example.com/schema.json"},
            {"type": "object", "properties": ["a"]},
        ],
    }
    for code, schemas in cases.items():
        for schema in schemas:
            body = caption_body(response_format=schema_format(schema))
            response = client.post("/v1/jobs", json=body)
            assert response.status_code == 422, (schema, response.text)
            assert response.json()["code"] == code, response.json()
    assert stored_state(runtime) == (0, 0, 0)


def test_formats_that_cannot_combine_are_refused(client: TestClient) -> None:
    fmt = {"type": "json_object"}
    for params in ({"num_beams": 2}, {"min_new_tokens": 3}):
        response = client.post("/v1/jobs", json=caption_body(response_format=fmt, params=params))
        assert response.status_code == 422 and response.json()["code"] == "invalid_params"
    for bad in ({"type": "xml"}, {"type": "json_schema"}, schema_format({}, name="bad name")):
        assert client.post("/v1/jobs", json=caption_body(response_format=bad)).status_code == 422


def test_a_jsonl_batch_carries_schemas_per_line(client: TestClient, runtime: Runtime) -> None:
    lines = [
        caption_body(custom_id="with", response_format=schema_format(INVOICE)),
        caption_body(custom_id="without"),
    ]
    body = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    response = client.post(
        "/v1/batches", content=body, headers={"content-type": "application/jsonl"}
    )
    assert response.status_code == 202, response.text
    listed = client.get("/v1/jobs", params={"batch_id": response.json()["id"]}).json()["data"]
    specs = {job["custom_id"]: stored_spec(runtime, job["id"]) for job in listed}
    assert specs["with"]["response_format"]["schema"] == INVOICE
    assert "response_format" not in specs["without"]
