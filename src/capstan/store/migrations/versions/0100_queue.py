"""queue tables

Revision ID: 0100
Revises: 0001
Branch: queue
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0100"
down_revision = "0001"
branch_labels = ("queue",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "queue_config",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("yaml", sa.Text(), nullable=False),
        sa.Column("applied_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_queue_config")),
    )
    op.create_table(
        "queue_workloads",
        sa.Column("id", sa.String(length=256), nullable=False),
        sa.Column("project", sa.String(length=256), nullable=False),
        sa.Column("user", sa.String(length=256), nullable=False),
        sa.Column("local_queue", sa.String(length=256), nullable=False),
        sa.Column("cluster_queue", sa.String(length=256), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("submitted_at", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_queue_workloads")),
    )
    op.create_index("ix_queue_workloads_state", "queue_workloads", ["state"])
    op.create_table(
        "queue_usage",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("workload_id", sa.String(length=256), nullable=False),
        sa.Column("project", sa.String(length=256), nullable=False),
        sa.Column("user", sa.String(length=256), nullable=False),
        sa.Column("local_queue", sa.String(length=256), nullable=False),
        sa.Column("cluster_queue", sa.String(length=256), nullable=False),
        sa.Column("usage", sa.Text(), nullable=False),
        sa.Column("start", sa.BigInteger(), nullable=False),
        sa.Column("end", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_queue_usage")),
    )
    op.create_index("ix_queue_usage_workload_id", "queue_usage", ["workload_id"])
    op.create_index("ix_queue_usage_end", "queue_usage", ["end"])


def downgrade() -> None:
    op.drop_table("queue_usage")
    op.drop_table("queue_workloads")
    op.drop_table("queue_config")
