"""The client against the real service: the API over HTTP on PostgreSQL, Redis and S3."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from api.app import create_app
from api.deps import Runtime
from core.config import Settings
from tests.support import LiveServer


@pytest.fixture
def runtime(service_settings: Settings) -> Iterator[Runtime]:
    runtime = Runtime.from_settings(service_settings)
    yield runtime
    runtime.close()


@pytest.fixture
def api_url(runtime: Runtime) -> Iterator[str]:
    """The base URL of a live API server (no auth: the embedded development default)."""
    with LiveServer(create_app(runtime=runtime)) as server:
        yield server.url


@pytest.fixture
def auth_runtime(service_settings: Settings) -> Iterator[Runtime]:
    runtime = Runtime.from_settings(service_settings.model_copy(update={"auth_enabled": True}))
    yield runtime
    runtime.close()


@pytest.fixture
def auth_api_url(auth_runtime: Runtime) -> Iterator[str]:
    """The base URL of a live API server that requires API keys."""
    with LiveServer(create_app(runtime=auth_runtime)) as server:
        yield server.url
