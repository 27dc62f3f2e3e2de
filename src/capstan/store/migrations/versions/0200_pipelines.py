"""pipelines tables

Revision ID: 0200
Revises: 0001
Branch: pipelines
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0200"
down_revision = "0001"
branch_labels = ("pipelines",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pipeline_runs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("project", sa.String(length=256), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("pipeline_ref", sa.Text(), nullable=False),
        sa.Column("params", sa.Text(), nullable=False),
        sa.Column("graph", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("no_cache", sa.Boolean(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("schedule", sa.String(length=256), nullable=True),
        sa.Column("slot", sa.BigInteger(), nullable=True),
        sa.Column("orchestrator", sa.String(length=256), nullable=True),
        sa.Column("heartbeat_at", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("started_at", sa.BigInteger(), nullable=True),
        sa.Column("finished_at", sa.BigInteger(), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pipeline_runs")),
    )
    op.create_index(op.f("ix_pipeline_runs_status"), "pipeline_runs", ["status"], unique=False)
    op.create_index(op.f("ix_pipeline_runs_created_at"), "pipeline_runs", ["created_at"], unique=False)

    op.create_table(
        "pipeline_steps",
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("step_id", sa.String(length=256), nullable=False),
        sa.Column("step_name", sa.String(length=256), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("parent", sa.String(length=256), nullable=True),
        sa.Column("map_index", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("retries_used", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("next_attempt_at", sa.BigInteger(), nullable=True),
        sa.Column("cache_key", sa.String(length=64), nullable=True),
        sa.Column("cached_from", sa.String(length=300), nullable=True),
        sa.Column("output_format", sa.String(length=16), nullable=True),
        sa.Column("output_inline", sa.Text(), nullable=True),
        sa.Column("output_path", sa.Text(), nullable=True),
        sa.Column("output_digest", sa.String(length=64), nullable=True),
        sa.Column("output_size", sa.BigInteger(), nullable=True),
        sa.Column("started_at", sa.BigInteger(), nullable=True),
        sa.Column("finished_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("run_id", "step_id", name=op.f("pk_pipeline_steps")),
        sqlite_with_rowid=False,
    )
    op.create_index(op.f("ix_pipeline_steps_output_digest"), "pipeline_steps", ["output_digest"], unique=False)

    op.create_table(
        "pipeline_attempts",
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("step_id", sa.String(length=256), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("isolation", sa.String(length=16), nullable=False),
        sa.Column("worker_pid", sa.Integer(), nullable=True),
        sa.Column("worker_started", sa.BigInteger(), nullable=True),
        sa.Column("started_at", sa.BigInteger(), nullable=False),
        sa.Column("finished_at", sa.BigInteger(), nullable=True),
        sa.Column("duration_ms", sa.BigInteger(), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("peak_memory", sa.BigInteger(), nullable=True),
        sa.Column("log_path", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("run_id", "step_id", "attempt", name=op.f("pk_pipeline_attempts")),
        sqlite_with_rowid=False,
    )

    op.create_table(
        "pipeline_inputs",
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("step_id", sa.String(length=256), nullable=False),
        sa.Column("source_step", sa.String(length=256), nullable=False),
        sa.Column("source_run", sa.String(length=32), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("path", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("run_id", "step_id", "source_step", name=op.f("pk_pipeline_inputs")),
        sqlite_with_rowid=False,
    )
    op.create_index(op.f("ix_pipeline_inputs_digest"), "pipeline_inputs", ["digest"], unique=False)

    op.create_table(
        "pipeline_cache",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("step_id", sa.String(length=256), nullable=False),
        sa.Column("output_format", sa.String(length=16), nullable=False),
        sa.Column("output_inline", sa.Text(), nullable=True),
        sa.Column("output_path", sa.Text(), nullable=True),
        sa.Column("output_digest", sa.String(length=64), nullable=False),
        sa.Column("output_size", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_pipeline_cache")),
        sqlite_with_rowid=False,
    )

    op.create_table(
        "pipeline_schedules",
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("project", sa.String(length=256), nullable=False),
        sa.Column("pipeline_ref", sa.Text(), nullable=False),
        sa.Column("cron", sa.String(length=256), nullable=False),
        sa.Column("params", sa.Text(), nullable=False),
        sa.Column("catchup", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("last_slot", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_pipeline_schedules")),
    )

    op.create_table(
        "pipeline_schedule_slots",
        sa.Column("schedule", sa.String(length=256), nullable=False),
        sa.Column("slot", sa.BigInteger(), nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("schedule", "slot", name=op.f("pk_pipeline_schedule_slots")),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table("pipeline_schedule_slots")
    op.drop_table("pipeline_schedules")
    op.drop_table("pipeline_cache")
    op.drop_index(op.f("ix_pipeline_inputs_digest"), table_name="pipeline_inputs")
    op.drop_table("pipeline_inputs")
    op.drop_table("pipeline_attempts")
    op.drop_index(op.f("ix_pipeline_steps_output_digest"), table_name="pipeline_steps")
    op.drop_table("pipeline_steps")
    op.drop_index(op.f("ix_pipeline_runs_created_at"), table_name="pipeline_runs")
    op.drop_index(op.f("ix_pipeline_runs_status"), table_name="pipeline_runs")
    op.drop_table("pipeline_runs")
