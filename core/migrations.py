"""Running the Alembic migrations from code (the `internvl-jobs migrate` command, tests)."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config

from alembic import command

SOURCE_ROOT = Path(__file__).resolve().parent.parent


def migrations_root() -> Path:
    """The folder holding alembic.ini: the source checkout, else the working directory."""
    for root in (SOURCE_ROOT, Path.cwd()):
        if (root / "alembic.ini").is_file() and (root / "alembic" / "env.py").is_file():
            return root
    raise FileNotFoundError(
        "alembic.ini not found beside the package or in the working directory; "
        "run from the project folder (the Docker images do)"
    )


def alembic_config(database_url: str) -> Config:
    """An Alembic config for this project's migrations and the given database."""
    root = migrations_root()
    config = Config(str(root / "alembic.ini"))
    config.set_main_option("script_location", str(root / "alembic"))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the database schema up to `revision`."""
    command.upgrade(alembic_config(database_url), revision)
