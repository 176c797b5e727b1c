"""A Celery app on the test broker (sessions on both databases: tests.support.services)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery

from core.config import Settings
from core.queue import make_celery


@pytest.fixture
def celery_app(service_settings: Settings) -> Iterator[Celery]:
    app = make_celery(service_settings)
    yield app
    app.close()
