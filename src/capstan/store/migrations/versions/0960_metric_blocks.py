"""metric_blocks: write-time summaries of metric points per block of 64 steps, filled from the points already stored

Revision ID: 0960
Revises: 0001
Branch: metric_blocks
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0960"
down_revision = "0001"
branch_labels = ("metric_blocks",)
depends_on = None

_FILL = ("INSERT INTO metric_blocks (run_id, key_id, block, points, step_sum, value_sum, value_min, value_max, nans) "
         "SELECT run_id, key_id, step >> 6, count(*), sum(CAST(step AS DOUBLE PRECISION)), sum(value), min(value), "
         "max(value), sum(CASE WHEN is_nan THEN 1 ELSE 0 END) FROM metrics GROUP BY run_id, key_id, step >> 6")


def upgrade() -> None:
    op.create_table(
        "metric_blocks",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("block", sa.BigInteger(), nullable=False),
        sa.Column("points", sa.Integer(), nullable=False),
        sa.Column("step_sum", sa.Float(), nullable=False),
        sa.Column("value_sum", sa.Float(), nullable=True),
        sa.Column("value_min", sa.Float(), nullable=False),
        sa.Column("value_max", sa.Float(), nullable=False),
        sa.Column("nans", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "key_id", "block", name=op.f("pk_metric_blocks")),
        sqlite_with_rowid=False,
    )
    op.execute(_FILL)


def downgrade() -> None:
    op.drop_table("metric_blocks")
