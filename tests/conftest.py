"""The submit API in process on the real services: runtime and client, with or without auth."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.deps import Runtime
from core.config import Settings


@pytest.fixture
def runtime(service_settings: Settings) -> Iterator[Runtime]:
    runtime = Runtime.from_settings(service_settings)
    yield runtime
    runtime.close()


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime=runtime)) as test_client:
        yield test_client


@pytest.fixture
def auth_runtime(service_settings: Settings) -> Iterator[Runtime]:
    """A runtime that requires API keys, as production does."""
    runtime = Runtime.from_settings(service_settings.model_copy(update={"auth_enabled": True}))
    yield runtime
    runtime.close()


@pytest.fixture
def auth_client(auth_runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime=auth_runtime)) as test_client:
        yield test_client
