"""deadlines and queue position

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 23:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa

import core.models
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The new `expired` status needs no change: jobs.status is a plain string column.
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("expires_at", core.models.UTCDateTime(timezone=True), nullable=True)
        )

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("expires_at", core.models.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.create_index("ix_jobs_status_expires", ["status", "expires_at"], unique=False)
        batch_op.create_index(
            "ix_jobs_model_status_priority",
            ["model", "status", "priority", "created_at"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_model_status_priority")
        batch_op.drop_index("ix_jobs_status_expires")
        batch_op.drop_column("expires_at")

    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_column("expires_at")
