"""The OpenAPI description and the API agree: 405 answers name exactly the methods a path
serves, published request schemas state what validation checks, and every status an
operation answers is documented."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def concrete(path: str) -> str:
    """A path of the description with each {parameter} filled in."""
    return re.sub(r"\{[^}]+\}", "x", path)


def test_every_405_allows_exactly_the_methods_its_path_serves(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    tried = 0
    for path, item in spec["paths"].items():
        served = {method.upper() for method in item}
        for method in set(METHODS) - served:
            response = client.request(method, concrete(path))
            assert response.status_code == 405, (method, path, response.status_code)
            allow = {m.strip() for m in response.headers["allow"].split(",")}
            assert allow == served, (method, path, allow)
            if method != "HEAD":
                assert response.json()["code"] == "method_not_allowed"
            tried += 1
    assert tried > 100
    assert set(spec["paths"]["/v1/jobs"]) == {"get", "post"}  # two routes, one path


def multipart_schema(spec: dict[str, Any], path: str) -> dict[str, Any]:
    return spec["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]


def test_image_id_is_described_as_validated(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    operation = spec["paths"]["/v1/images/{image_id}"]["get"]
    params = {p["name"]: p["schema"] for p in operation["parameters"]}
    assert params["image_id"]["pattern"] == "^sha256:[0-9a-f]{64}$"
    assert params["model"] == {"type": "string", "enum": ["tiny"]}
    assert {"401", "404", "422"} <= set(operation["responses"])
    malformed = client.get("/v1/images/sha256:ABC")
    assert malformed.status_code == 422
    assert malformed.json()["code"] == "invalid_params"
    assert client.get("/v1/images/sha256:" + "0" * 64).status_code == 404
    assert client.get("/v1/images/sha256:" + "0" * 64 + "?model=other").status_code == 422


def test_multipart_bodies_are_described_part_by_part(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    images = multipart_schema(spec, "/v1/images")
    assert images["schema"]["required"] == ["image"]
    assert images["schema"]["additionalProperties"] is False
    assert images["encoding"]["image"]["contentType"].startswith("image/*")
    jobs = multipart_schema(spec, "/v1/jobs")
    assert jobs["schema"]["properties"]["spec"]["$ref"] == "#/components/schemas/JobCreate"
    assert jobs["encoding"]["spec"] == {"contentType": "application/json"}
    assert jobs["schema"]["properties"]["images"]["maxItems"] == 16
    batches = multipart_schema(spec, "/v1/batches")
    assert batches["schema"]["required"] == ["file"]
    assert batches["schema"]["properties"]["spec"]["$ref"] == "#/components/schemas/BatchOptions"
    assert batches["schema"]["additionalProperties"] is False
    assert "BatchOptions" in spec["components"]["schemas"]


@pytest.mark.parametrize(
    ("path", "files"),
    [
        ("/v1/images", {"image": ("a.png", b"x", "image/png"), "extra": (None, "1")}),
        ("/v1/images", {"image": (None, "not a file")}),
        ("/v1/jobs", {"spec": ("spec.json", b'{"task": "caption"}', "application/json")}),
        ("/v1/batches", {"file": ("b.jsonl", b"{}"), "spec": ("s.json", b"{}")}),
    ],
)
def test_multipart_parts_the_description_forbids_are_refused(
    client: TestClient, path: str, files: dict[str, Any]
) -> None:
    response = client.post(path, files=files)
    # 400 where a part passes a count the parser enforces first (a second file)
    assert response.status_code in (400, 422), response.text
    assert response.json()["code"] in ("invalid_params", "bad_request")


def test_multipart_without_a_boundary_is_a_400(client: TestClient) -> None:
    for path in ("/v1/images", "/v1/jobs", "/v1/batches"):
        response = client.post(
            path, content=b"--x\r\n", headers={"content-type": "multipart/form-data"}
        )
        assert response.status_code == 400, (path, response.text)


def test_job_and_batch_bodies_state_the_limits_and_task_rules(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    components = spec["components"]["schemas"]
    job = components["JobCreate"]
    assert job["properties"]["model"]["anyOf"][0]["enum"] == ["tiny"]
    assert job["properties"]["images"]["maxItems"] == 16
    assert job["properties"]["messages"]["anyOf"][0]["maxItems"] == 64
    assert components["GenerationParams"]["properties"]["max_new_tokens"]["maximum"] == 4096
    assert components["BatchCreate"]["properties"]["jobs"]["maxItems"] == 10_000
    rules = {rule["if"]["properties"]["task"]["const"]: rule["then"] for rule in job["allOf"]}
    assert rules["compare"]["properties"]["images"] == {"minItems": 2}
    assert rules["vqa"]["required"] == ["question"]
    assert rules["chat"]["required"] == ["messages"]
    assert rules["caption"]["properties"]["question"] == {"type": "null"}
    assert len(components["ImageRef"]["oneOf"]) == 3
    wait = next(
        p for p in spec["paths"]["/v1/jobs/{job_id}"]["get"]["parameters"] if p["name"] == "wait"
    )
    assert wait["schema"]["maximum"] == 60
    key = next(
        p for p in spec["paths"]["/v1/jobs"]["post"]["parameters"] if p["name"] == "Idempotency-Key"
    )
    assert "pattern" in str(key["schema"])


@pytest.mark.parametrize(
    "body",
    [
        {"task": "compare", "images": [{"data": "aGk="}]},  # minItems 2
        {"task": "vqa", "images": [{"data": "aGk="}]},  # question required
        {"task": "caption", "question": "why?", "images": [{"data": "aGk="}]},  # not for caption
        {"task": "caption", "model": "other", "images": [{"data": "aGk="}]},  # not in the enum
        {"task": "caption", "images": [{"data": "aGk=", "url": "https://example.com/a.png"}]},
        {"task": "prompt", "preset": "nonexistent", "images": [{"data": "aGk="}]},
    ],
)
def test_job_bodies_the_description_forbids_are_refused(
    client: TestClient, body: dict[str, Any]
) -> None:
    for path, payload in (("/v1/jobs", body), ("/v1/batches", {"jobs": [body]})):
        response = client.post(path, json=payload)
        assert response.status_code == 422, (path, response.text)


def test_statuses_each_operation_answers_are_documented(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]

    def documented(path: str, method: str) -> set[str]:
        return set(paths[path][method]["responses"])

    for path, item in paths.items():
        for method in item:
            statuses = documented(path, method)
            assert {"400", "413"} <= statuses, (method, path)
            if path.startswith("/v1/"):
                assert {"401", "429", "503"} <= statuses, (method, path)
            if "{" in path:
                assert "404" in statuses, (method, path)
            if method == "post" and "requestBody" in item[method]:
                assert {"415", "422"} <= statuses, (method, path)
    assert "409" in documented("/v1/jobs", "post")  # Idempotency-Key reused
    assert "409" in documented("/v1/jobs/{job_id}/webhooks/replay", "post")
    assert "409" in documented("/v1/batches/{batch_id}/cancel", "post")
    assert "401" not in documented("/healthz", "get")  # outside the auth gate


def test_strings_the_api_reads_are_described_without_nul(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    replay = spec["components"]["schemas"]["WebhookReplay"]["properties"]["delivery_id"]
    assert replay["anyOf"][0]["pattern"] == "^[^\\u0000]*$"
    params = spec["paths"]["/v1/jobs"]["get"]["parameters"]
    cursor = next(p for p in params if p["name"] == "cursor")["schema"]["anyOf"][0]
    assert re.fullmatch(cursor["pattern"], "abc")
    assert not re.fullmatch(cursor["pattern"], "a\x00c")
    assert client.get("/v1/jobs?cursor=a%00c").status_code == 400
    nul = client.post("/v1/webhooks/secret/rotate", content=b'{"overlap_s": 1, "x\\u0000": 1}')
    assert nul.status_code == 422


def test_rotate_takes_integers_as_json_schema_defines_them(client: TestClient) -> None:
    # 3600.0 is an integer to JSON Schema; a bool or a fraction is not.
    assert client.post("/v1/webhooks/secret/rotate", json={"overlap_s": 3600.0}).status_code == 200
    for value in (True, 1.5, "60"):
        response = client.post("/v1/webhooks/secret/rotate", json={"overlap_s": value})
        assert response.status_code == 422, value
