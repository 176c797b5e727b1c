"""The tiny model loaded once, and a worker runtime on the real database and S3 server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.config import ModelSpec, Settings
from core.storage import ObjectStorage, settings_storage
from tests.support.runtimes import started_runtime


@pytest.fixture(scope="session")
def engine(tiny_model_path: Path) -> Any:
    from worker.engine import InternVLEngine

    spec = ModelSpec(alias="tiny", checkpoint=str(tiny_model_path), tile_size=64)
    return InternVLEngine(spec, device="cpu")


@pytest.fixture
def storage(service_settings: Settings) -> ObjectStorage:
    return settings_storage(service_settings)


@pytest.fixture
def worker_runtime(
    service_settings: Settings, sessions: Any, storage: ObjectStorage, engine: Any
) -> Iterator[Any]:
    with started_runtime(service_settings, sessions, storage, engine=engine) as runtime:
        yield runtime
