"""Settings: environment names, embedded defaults, model registry rules, production safety."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from core.config import ModelSpec, Settings
from core.queue import make_celery


def make(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_embedded_defaults_live_in_the_data_dir(tmp_path: Path) -> None:
    settings = make(data_dir=tmp_path)
    assert settings.database_url == f"sqlite:///{tmp_path / 'jobs.db'}"
    assert settings.broker_url == f"filesystem://{tmp_path / 'broker'}"
    assert settings.storage_url == f"file://{tmp_path / 'objects'}"


def test_operator_names_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTERNVL_JOBS_DATABASE_URL", "postgresql+psycopg://u@db/jobs")
    monkeypatch.setenv("INTERNVL_JOBS_BROKER_URL", "redis://redis:6379/0")
    monkeypatch.setenv("INTERNVL_JOBS_STORAGE_URL", "s3://images/prod")
    monkeypatch.setenv("INTERNVL_JOBS_S3_ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setenv(
        "INTERNVL_JOBS_MODELS",
        '[{"alias": "internvl3-8b", "checkpoint": "OpenGVLab/InternVL3-8B-hf"}]',
    )
    settings = make()
    assert settings.database_url == "postgresql+psycopg://u@db/jobs"
    assert settings.broker_url == "redis://redis:6379/0"
    assert settings.storage_url == "s3://images/prod"
    assert settings.s3_endpoint_url == "http://minio:9000"
    assert settings.default_model.alias == "internvl3-8b"
    assert settings.default_model.queue == "internvl.internvl3-8b"


def test_default_registry_serves_internvl3_1b() -> None:
    model = make().default_model
    assert model.checkpoint == "OpenGVLab/InternVL3-1B-hf"
    assert (model.tile_size, model.max_tiles) == (448, 12)


def test_production_refuses_disabled_auth() -> None:
    with pytest.raises(ValidationError, match="auth_enabled=false is refused in production"):
        make(auth_enabled=False)


def test_development_may_disable_auth() -> None:
    assert make(environment="development", auth_enabled=False).auth_enabled is False


def test_duplicate_aliases_are_refused() -> None:
    spec = ModelSpec(alias="a", checkpoint="x")
    with pytest.raises(ValidationError, match="unique"):
        make(models=[spec, spec])


def test_two_defaults_are_refused() -> None:
    models = [
        ModelSpec(alias="a", checkpoint="x", default=True),
        ModelSpec(alias="b", checkpoint="y", default=True),
    ]
    with pytest.raises(ValidationError, match="only one model"):
        make(models=models)


def test_bad_alias_is_refused() -> None:
    with pytest.raises(ValidationError, match="alias"):
        ModelSpec(alias="Bad Alias!", checkpoint="x")


def test_settings_round_trip_through_child_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    original = make(
        environment="development",
        auth_enabled=False,
        models=[ModelSpec(alias="tiny", checkpoint="/m", tile_size=64)],
        max_images_per_job=3,
    )
    for key, value in original.as_env().items():
        monkeypatch.setenv(key, value)
    copy = make()
    assert copy == original


def test_private_image_urls_are_refused_in_production() -> None:
    with pytest.raises(ValidationError):
        make(environment="production", image_fetch_allow_private=True)
    assert make(environment="development", image_fetch_allow_private=True).image_fetch_allow_private


def test_task_events_are_off_by_default_as_in_celery_and_can_be_turned_on() -> None:
    off, on = make_celery(make()), make_celery(make(task_events=True))
    assert (on.conf.task_send_sent_event, on.conf.worker_send_task_events) == (True, True)
    assert (off.conf.task_send_sent_event, off.conf.worker_send_task_events) == (False, False)


def test_database_pools_follow_the_setting_else_each_process_default(tmp_path: Path) -> None:
    from api.deps import Runtime
    from worker.process import worker_engine

    url = "postgresql+psycopg://u@db.invalid/jobs"  # engines connect lazily: nothing is dialed
    automatic = make(database_url=url, data_dir=tmp_path)
    # The pool holds the setting and as many again for bursts (core.db.make_engine).
    assert worker_engine(automatic).pool.size() == 2 * 4  # type: ignore[attr-defined]
    assert automatic.pool_size(10) == 10
    # Enough for the group commit's transactions at once, the heartbeat and a read.
    wide = make(database_url=url, data_dir=tmp_path, database_commit_concurrency=8)
    assert worker_engine(wide).pool.size() == 2 * 10  # type: ignore[attr-defined]
    chosen = make(database_url=url, database_pool_size=16, data_dir=tmp_path)
    assert worker_engine(chosen).pool.size() == 2 * 16  # type: ignore[attr-defined]
    assert chosen.pool_size(10) == 16
    runtime = Runtime.from_settings(chosen)
    try:
        assert runtime.engine.pool.size() == 2 * 16  # type: ignore[attr-defined]
    finally:
        runtime.close()
