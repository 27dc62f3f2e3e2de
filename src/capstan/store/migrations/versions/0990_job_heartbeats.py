"""jobs: heartbeat_ms, when the runner holding the job last renewed its hold (epoch ms), so that a runner on another
machine can tell a dead holder from a live one

Revision ID: 0990
Revises: 0700 (which creates jobs)
Branch: job_heartbeats
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0990"
down_revision = "0700"  # jobs is created there
branch_labels = ("job_heartbeats",)
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("heartbeat_ms", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("heartbeat_ms")
