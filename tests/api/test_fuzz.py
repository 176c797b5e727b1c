"""Property-based fuzzing of the API against its own OpenAPI description (schemathesis).

Runs in process (ASGI) on the real PostgreSQL, Redis and S3 server. Every generated request,
valid or not, must get a documented status, never a 5xx, and a body matching its schema.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from api.deps import Runtime
from core.config import Settings

MAX_EXAMPLES = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@pytest.fixture
def fuzz_schema(service_settings: Settings) -> Iterator[schemathesis.BaseSchema]:
    # Short long-polls keep generated ?wait= values from holding the run.
    runtime = Runtime.from_settings(service_settings.model_copy(update={"max_wait_s": 1}))
    app = create_app(runtime=runtime)
    with TestClient(app):  # runs the lifespan: default tenant, job feed listener
        yield schemathesis.openapi.from_asgi("/openapi.json", app)
    runtime.close()


def fuzz_operation(operation: schemathesis.APIOperation) -> str | None:
    """Run the generated cases of one operation; the first failure's report, if any."""

    @given(case=operation.as_strategy())
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=CHECKS)

    try:
        run()
    except (Exception, BaseExceptionGroup) as exc:  # every operation is fuzzed; all reported
        return f"{operation.label}: {exc!r}"[:3000]
    return None


def test_api_never_fails_and_keeps_its_schema(fuzz_schema: schemathesis.BaseSchema) -> None:
    operations = [result.ok() for result in fuzz_schema.get_all_operations()]
    assert len(operations) >= 12
    failures = [report for op in operations if (report := fuzz_operation(op)) is not None]
    assert not failures, "\n\n".join(failures)


def test_every_documented_request_example_is_accepted(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    posted = 0
    for path in ("/v1/jobs", "/v1/batches"):
        content = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        examples = [e["value"] for e in content.get("examples", {}).values()]
        examples += [content["example"]] if "example" in content else []
        for example in examples:
            response = client.post(path, json=example)
            assert response.status_code == 202, (path, response.text)
            posted += 1
    assert posted == 4
