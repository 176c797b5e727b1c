"""Real services for the tests: PostgreSQL, Redis and an S3-protocol server, plus the tiny model.

Where the service lives comes from INTERNVL_JOBS_TEST_POSTGRES / _REDIS / _S3_ENDPOINT (CI sets
them); a service that cannot be reached fails the tests that need it, loudly, never skips them.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from core.config import ModelSpec, Settings
from core.db import make_engine, make_session_factory
from core.migrations import upgrade
from core.models import Base

POSTGRES_URL = os.environ.get(
    "INTERNVL_JOBS_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("INTERNVL_JOBS_TEST_REDIS", "redis://127.0.0.1:6379/9")
S3_ENDPOINT = os.environ.get("INTERNVL_JOBS_TEST_S3_ENDPOINT", "")

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def create_database(admin_url: str, name: str) -> str:
    """Create an empty PostgreSQL database next to admin_url's and return its URL."""
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        pytest.fail(f"PostgreSQL at {admin_url} is required and unreachable: {exc}")
    finally:
        admin.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, name: str) -> None:
    """Drop a test database, closing whatever still connects to it."""
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A migrated PostgreSQL database for this test session."""
    name = f"ivj_test_{secrets.token_hex(4)}"
    url = create_database(POSTGRES_URL, name)
    upgrade(url)
    yield url
    drop_database(POSTGRES_URL, name)


@pytest.fixture
def db_url(pg_url: str) -> Iterator[str]:
    """The session database, emptied after each test."""
    yield pg_url
    engine = create_engine(pg_url)
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} CASCADE"))
    engine.dispose()


@pytest.fixture
def sessions(db_url: str) -> Iterator[Any]:
    """A session factory on the test database."""
    engine = make_engine(db_url)
    yield make_session_factory(engine)
    engine.dispose()


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


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database, flushed before and after each test."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.flushdb()
    except redis.RedisError as exc:
        pytest.fail(f"Redis at {REDIS_URL} is required and unreachable: {exc}")
    yield REDIS_URL
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """An S3-protocol server over HTTP: CI's, or a moto server started for this session."""
    if S3_ENDPOINT:
        yield S3_ENDPOINT
        return
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def s3_bucket(s3_endpoint: str) -> str:
    """A bucket for this test session."""
    import boto3

    name = f"ivj-test-{secrets.token_hex(4)}"
    try:
        boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    except Exception as exc:
        pytest.fail(f"the S3 server at {s3_endpoint} is required and unreachable: {exc}")
    return name


@pytest.fixture
def s3_url(s3_bucket: str) -> str:
    """A storage URL with a prefix of its own for each test."""
    return f"s3://{s3_bucket}/t-{secrets.token_hex(4)}"


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny InternVL checkpoint, built once per session."""
    from devtools.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-internvl", preset="test")


@pytest.fixture(scope="session")
def seeing_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny InternVL trained on drawn shapes and words (shipped weights), built once."""
    from devtools.tiny_training import build_seeing_model

    return build_seeing_model(tmp_path_factory.mktemp("seeing") / "tiny-seeing")


@pytest.fixture
def tiny_spec(tiny_model_path: Path) -> ModelSpec:
    """A registry entry for the tiny model."""
    return ModelSpec(
        alias="tiny", checkpoint=str(tiny_model_path), default=True, tile_size=64, max_tiles=12
    )


@pytest.fixture
def service_settings(
    db_url: str,
    redis_url: str,
    s3_url: str,
    s3_endpoint: str,
    tiny_spec: ModelSpec,
    tmp_path: Path,
) -> Settings:
    """Settings for the real stack: PostgreSQL, Redis, S3 and the tiny model."""
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        environment="test",
        data_dir=tmp_path / "data",
        database_url=db_url,
        broker_url=redis_url,
        storage_url=s3_url,
        s3_endpoint_url=s3_endpoint,
        models=[tiny_spec],
        auth_enabled=False,
        log_json=False,
        lease_s=10,
        sweep_interval_s=1,
        heartbeat_s=1,
    )
