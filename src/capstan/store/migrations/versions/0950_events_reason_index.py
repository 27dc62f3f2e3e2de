"""events: an index on (kind, reason, id), so the newest events of one reason are found without a scan

Revision ID: 0950
Revises: 0001
Branch: events_reason
"""

from __future__ import annotations

from alembic import op

revision = "0950"
down_revision = "0001"
branch_labels = ("events_reason",)
depends_on = None


def upgrade() -> None:
    op.create_index(op.f("ix_events_kind_reason_id"), "events", ["kind", "reason", "id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_events_kind_reason_id"), table_name="events")
