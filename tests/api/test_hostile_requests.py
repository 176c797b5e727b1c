"""Hostile requests answer a clear 4xx on every entry point, never a 500 (PostgreSQL)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from api.app import create_app
from api.deps import Runtime
from api.strict_json import StrictJsonRoute
from tests.api import hostile_requests as corpus
from tests.support.api import b64, make_key, png_bytes, stored_state

JSON = {"content-type": "application/json"}


def _jsonl(line: bytes) -> bytes:
    """A JSON job body as a JSONL batch line (with a custom_id)."""
    return line.replace(b"{", b'{"custom_id": "a", ', 1)


def _entry_points(client: TestClient, body: bytes) -> dict[str, int]:
    """The status each JSON-reading entry point answers to `body`."""
    jsonl = {"content-type": "application/jsonl"}
    batch = b'{"jobs": [' + _jsonl(body) + b"]}"
    answers = {
        "jobs": client.post("/v1/jobs", content=body, headers=JSON),
        "jobs multipart": client.post("/v1/jobs", files={"spec": (None, body)}),
        "batch": client.post("/v1/batches", content=batch, headers=JSON),
        "batch jsonl": client.post("/v1/batches", content=_jsonl(body), headers=jsonl),
        "batch spec": client.post(
            "/v1/batches",
            files={
                "file": ("b.jsonl", b'{"custom_id": "a", "task": "caption"}'),
                "spec": (None, body),
            },
        ),
        "rotate": client.post("/v1/webhooks/secret/rotate", content=body, headers=JSON),
        "replay": client.post("/v1/jobs/job_x/webhooks/replay", content=body, headers=JSON),
    }
    return {name: response.status_code for name, response in answers.items()}


@pytest.mark.parametrize("body", corpus.NON_FINITE, ids=lambda b: b.decode()[-30:])
def test_non_finite_numbers_are_422_everywhere(
    client: TestClient, runtime: Runtime, body: bytes
) -> None:
    statuses = _entry_points(client, body)
    assert set(statuses.values()) == {422}, statuses
    assert stored_state(runtime) == (0, 0, 0)
    rotate = client.post("/v1/webhooks/secret/rotate", content=body, headers=JSON)
    assert rotate.json()["code"] == "non_finite_number"  # refused as JSON, not by the schema


def test_deep_nesting_is_4xx_everywhere(client: TestClient) -> None:
    statuses = _entry_points(client, corpus.deeply_nested())
    assert all(400 <= status < 500 for status in statuses.values()), statuses
    response = client.post("/v1/jobs", content=corpus.deeply_nested(40), headers=JSON)
    assert response.json()["code"] == "too_deep"


@pytest.mark.parametrize("where", ["custom_id", "metadata", "prompt"])
def test_nul_in_custom_id_and_strings_is_422(
    client: TestClient, runtime: Runtime, where: str
) -> None:
    body = corpus.with_nul(b64(png_bytes()), where)
    statuses = _entry_points(client, body)
    assert set(statuses.values()) == {422}, statuses
    answer = client.post("/v1/jobs", content=body, headers=JSON)
    assert answer.json()["code"] == "nul_character"
    assert stored_state(runtime) == (0, 0, 0)


@pytest.mark.parametrize("target", corpus.NUL_TARGETS)
def test_nul_in_targets_is_400(client: TestClient, target: str) -> None:
    response = client.get(target)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "nul_character"


@pytest.mark.parametrize("cursor", corpus.BAD_CURSORS)
def test_unusable_cursors_are_422(client: TestClient, cursor: str) -> None:
    response = client.get("/v1/jobs", params={"cursor": cursor})
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_cursor"


def _api_routes(runtime: Runtime) -> list[APIRoute]:
    """Every API route of the app, inside included routers too."""
    found: list[APIRoute] = []
    pending: list[Any] = list(create_app(runtime=runtime).routes)
    while pending:
        route = pending.pop()
        if isinstance(route, APIRoute):
            found.append(route)
        elif hasattr(route, "original_router"):  # an included router
            pending.extend(route.original_router.routes)
    return found


def test_anonymous_callers_get_401_before_any_body_is_read(
    auth_client: TestClient, auth_runtime: Runtime
) -> None:
    routes = [r for r in _api_routes(auth_runtime) if r.path.startswith("/v1/")]
    assert routes
    for route in routes:
        path = route.path.replace("{", "").replace("}", "")
        for method in route.methods:
            response = auth_client.request(method, path, content=b"{not json", headers=JSON)
            assert response.status_code == 401, (method, path, response.text)


def test_a_bad_key_is_401_even_with_a_valid_body(auth_client: TestClient) -> None:
    bad = {"Authorization": "Bearer ij_nope_nope", **JSON}
    response = auth_client.post("/v1/webhooks/secret/rotate", content=b"{}", headers=bad)
    assert response.status_code == 401


def test_authenticated_callers_get_the_body_errors(
    auth_client: TestClient, auth_runtime: Runtime
) -> None:
    headers = {**make_key(auth_runtime, "acme"), **JSON}
    response = auth_client.post("/v1/webhooks/secret/rotate", content=b"{no", headers=headers)
    assert response.status_code == 400 and response.json()["code"] == "invalid_json"


def test_every_route_with_a_body_parses_strictly(runtime: Runtime) -> None:
    with_body = [r for r in _api_routes(runtime) if r.body_field]
    assert with_body and all(isinstance(r, StrictJsonRoute) for r in with_body)


def test_problem_titles_match_their_status(client: TestClient) -> None:
    invalid = client.post("/v1/jobs", content=b"{", headers=JSON)
    assert (invalid.status_code, invalid.json()["title"]) == (400, "Invalid JSON")
    for path in ("/v1/jobs", "/v1/batches", "/v1/images"):
        refused = client.post(path, content=b"x", headers={"content-type": "text/plain"})
        assert refused.status_code == 415
        assert refused.json()["title"] == "Unsupported media type"


def test_the_batch_spec_error_does_not_echo_values(client: TestClient) -> None:
    secret = "SECRET-VALUE-1234"
    spec = json.dumps({"metadata": secret})
    response = client.post(
        "/v1/batches",
        files={"file": ("b.jsonl", b'{"custom_id": "a", "task": "caption"}')},
        data={"spec": spec},
    )
    assert response.status_code == 422, response.text
    assert secret not in response.text


def test_requests_documented_as_strict_do_not_coerce(client: TestClient) -> None:
    for body in ({"overlap_s": False}, {"overlap_s": "60"}):
        response = client.post("/v1/webhooks/secret/rotate", json=body)
        assert response.status_code == 422, (body, response.text)
    replay = client.post("/v1/jobs/job_x/webhooks/replay", json={"delivery_id": 5})
    assert replay.status_code == 422


def test_replay_documents_its_409(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/v1/jobs/{job_id}/webhooks/replay"]
    assert "409" in operation["post"]["responses"]
