"""Every error is problem+json with a stable code; an unreachable dependency is a clean 503."""

from __future__ import annotations

from fastapi.testclient import TestClient

from api.app import create_app
from api.deps import Runtime
from core.config import Settings
from devtools.harness import free_port


def test_unknown_route_is_a_404_problem(client: TestClient) -> None:
    response = client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "not_found"


def test_wrong_method_is_a_405_problem(client: TestClient) -> None:
    response = client.delete("/v1/jobs")
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"


def test_unreachable_database_is_a_503_without_internals(service_settings: Settings) -> None:
    dead = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/gone"
    settings = service_settings.model_copy(update={"database_url": dead, "auth_enabled": True})
    runtime = Runtime.from_settings(settings)
    try:
        with TestClient(create_app(runtime=runtime), raise_server_exceptions=False) as client:
            response = client.get("/v1/jobs", headers={"Authorization": "Bearer ivj_abc_def"})
    finally:
        runtime.close()
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    problem = response.json()
    assert problem["code"] == "unavailable"
    assert "Traceback" not in response.text and "psycopg" not in response.text
