"""deployment outcomes

Revision ID: 0500
Revises: 0001
Branch: deployment_outcomes
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0500"
down_revision = "0001"
branch_labels = ("deployment_outcomes",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deployment_outcomes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("project", sa.String(length=256), nullable=False),
        sa.Column("deployment", sa.String(length=256), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("time_ms", sa.BigInteger(), nullable=False),
        sa.Column("predictions", sa.Text(), nullable=True),
        sa.Column("disagrees", sa.Boolean(), nullable=True),
        sa.Column("truth", sa.Text(), nullable=True),
        sa.Column("truth_ms", sa.BigInteger(), nullable=True),
        sa.Column("cold_start_ms", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployment_outcomes")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_deployment_outcomes_request", "deployment_outcomes",
                    ["project", "deployment", "request_id"], unique=False)
    op.create_index("ix_deployment_outcomes_deployment_id", "deployment_outcomes",
                    ["project", "deployment", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_deployment_outcomes_deployment_id", table_name="deployment_outcomes")
    op.drop_index("ix_deployment_outcomes_request", table_name="deployment_outcomes")
    op.drop_table("deployment_outcomes")
