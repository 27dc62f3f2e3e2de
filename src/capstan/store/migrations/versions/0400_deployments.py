"""managed deployments: deployments, their replicas and the routers' load reports

Revision ID: 0400
Revises: 0001
Branch: deployments
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0400"
down_revision = "0001"
branch_labels = ("deployments",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deployments",
        sa.Column("project", sa.String(length=256), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("spec", sa.Text(), nullable=False),
        sa.Column("previous", sa.Text(), nullable=True),
        sa.Column("previous_versions", sa.Text(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("versions", sa.Text(), nullable=False),
        sa.Column("desired_replicas", sa.Integer(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("project", "name", name=op.f("pk_deployments")),
    )
    op.create_table(
        "deployment_replicas",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("project", sa.String(length=256), nullable=False),
        sa.Column("deployment", sa.String(length=63), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("model_version", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("url", sa.String(length=256), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("restarts", sa.Integer(), nullable=False),
        sa.Column("started_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployment_replicas")),
    )
    op.create_index(op.f("ix_deployment_replicas_project_deployment"), "deployment_replicas",
                    ["project", "deployment"])
    op.create_table(
        "deployment_load",
        sa.Column("project", sa.String(length=256), nullable=False),
        sa.Column("deployment", sa.String(length=63), nullable=False),
        sa.Column("worker", sa.String(length=128), nullable=False),
        sa.Column("in_flight", sa.Integer(), nullable=False),
        sa.Column("completed", sa.Integer(), nullable=False),
        sa.Column("waiting", sa.Integer(), nullable=False),
        sa.Column("time_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("project", "deployment", "worker", name=op.f("pk_deployment_load")),
    )


def downgrade() -> None:
    op.drop_table("deployment_load")
    op.drop_index(op.f("ix_deployment_replicas_project_deployment"), table_name="deployment_replicas")
    op.drop_table("deployment_replicas")
    op.drop_table("deployments")
