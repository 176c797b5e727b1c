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
