"""Jobs in the database as the API would leave them, the messages Redis holds for them, and
sessions on both databases the service runs on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from core.config import Settings
from core.db import make_engine, make_session_factory
from core.migrations import upgrade
from core.queue import make_celery


@pytest.fixture
def celery_app(service_settings: Settings) -> Iterator[Celery]:
    app = make_celery(service_settings)
    yield app
    app.close()


@pytest.fixture(params=["postgresql", "sqlite"])
def any_sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A session factory on the PostgreSQL test database, then on a migrated SQLite file."""
    if request.param == "postgresql":
        yield request.getfixturevalue("sessions")
        return
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield make_session_factory(engine)
    engine.dispose()
