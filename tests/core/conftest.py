"""Jobs in the database as the API would leave them, and the messages Redis holds for them."""

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
