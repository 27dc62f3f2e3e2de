"""deployment_replicas: peak_memory, the replica process's peak resident memory (bytes), sampled while it runs

Revision ID: 0980
Revises: 0400 (which creates deployment_replicas)
Branch: replica_peaks
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0980"
down_revision = "0400"  # deployment_replicas is created there
branch_labels = ("replica_peaks",)
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deployment_replicas") as batch:
        batch.add_column(sa.Column("peak_memory", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deployment_replicas") as batch:
        batch.drop_column("peak_memory")
