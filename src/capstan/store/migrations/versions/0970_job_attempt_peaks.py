"""job_attempts: rank_peak_memory, each rank's peak resident memory (bytes) as a JSON list, read when it exits

Revision ID: 0970
Revises: 0700 (which creates job_attempts)
Branch: job_attempt_peaks
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0970"
down_revision = "0700"  # job_attempts is created there
branch_labels = ("job_attempt_peaks",)
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("job_attempts") as batch:
        batch.add_column(sa.Column("rank_peak_memory", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job_attempts") as batch:
        batch.drop_column("rank_peak_memory")
