"""Migrations build the schema on PostgreSQL and SQLite, and match the models exactly."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from core.migrations import upgrade
from core.models import Base
from tests.support.services import POSTGRES_URL, create_database, drop_database


@pytest.fixture
def empty_pg() -> str:
    name = f"ivj_mig_{secrets.token_hex(4)}"
    url = create_database(POSTGRES_URL, name)
    yield url
    drop_database(POSTGRES_URL, name)


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()  # a pooled connection left to the garbage collector warns


def _differences(url: str) -> list:
    engine = create_engine(url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    return diff


def test_upgrade_head_on_empty_postgresql_creates_every_table(empty_pg: str) -> None:
    upgrade(empty_pg)
    tables = _tables(empty_pg)
    assert set(Base.metadata.tables) <= tables
    assert "alembic_version" in tables


def test_models_and_migrations_agree_on_postgresql(empty_pg: str) -> None:
    upgrade(empty_pg)
    assert _differences(empty_pg) == []


def test_models_and_migrations_agree_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    assert _differences(url) == []


def test_upgrade_is_idempotent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    upgrade(url)
    assert "jobs" in _tables(url)
