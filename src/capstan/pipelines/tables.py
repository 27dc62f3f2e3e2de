"""SQL tables of the pipelines subsystem, defined on the shared `capstan.store.schema.metadata`.

Shipped by the Alembic branch ``pipelines`` (revision ``0200``). Times are integer milliseconds since the epoch.

- ``pipeline_runs``: one row per pipeline run, with the persisted DAG (``graph``) and its parameters.
- ``pipeline_steps``: the state of every step of a run (map children included, linked by ``parent``) and where its
  output lives (inline JSON or an artifact-store path), which is also the "produced" half of lineage.
- ``pipeline_attempts``: every attempt of a step: worker pid, exit code, duration, peak memory, log artifact.
- ``pipeline_inputs``: which step consumed which output (the "consumed" half of lineage).
- ``pipeline_cache``: successful outputs by cache key (code hash + parameters + input digests).
- ``pipeline_schedules`` / ``pipeline_schedule_slots``: cron schedules and the slots already started; the primary
  key of the slot table is what guarantees that a slot never starts twice.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Index, Integer, PrimaryKeyConstraint, String, Table, Text

from capstan.store.schema import metadata

pipeline_runs = Table(
    "pipeline_runs", metadata,
    Column("id", String(32), primary_key=True),
    Column("project", String(256), nullable=False),
    Column("name", String(256), nullable=False),
    Column("pipeline_ref", Text, nullable=False),
    Column("params", Text, nullable=False),
    Column("graph", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("no_cache", Boolean, nullable=False),
    Column("cancel_requested", Boolean, nullable=False),
    Column("source", String(16), nullable=False),
    Column("schedule", String(256), nullable=True),
    Column("slot", BigInteger, nullable=True),
    Column("orchestrator", String(256), nullable=True),
    Column("heartbeat_at", BigInteger, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("started_at", BigInteger, nullable=True),
    Column("finished_at", BigInteger, nullable=True),
    Column("message", Text, nullable=False),
    Index(None, "status"),
    Index(None, "created_at"),
)

pipeline_steps = Table(
    "pipeline_steps", metadata,
    Column("run_id", String(32), nullable=False),
    Column("step_id", String(256), nullable=False),
    Column("step_name", String(256), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("parent", String(256), nullable=True),
    Column("map_index", Integer, nullable=True),
    Column("state", String(16), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("retries_used", Integer, nullable=False),
    Column("reason", String(64), nullable=False),
    Column("message", Text, nullable=False),
    Column("next_attempt_at", BigInteger, nullable=True),
    Column("cache_key", String(64), nullable=True),
    Column("cached_from", String(300), nullable=True),
    Column("output_format", String(16), nullable=True),
    Column("output_inline", Text, nullable=True),
    Column("output_path", Text, nullable=True),
    Column("output_digest", String(64), nullable=True),
    Column("output_size", BigInteger, nullable=True),
    Column("started_at", BigInteger, nullable=True),
    Column("finished_at", BigInteger, nullable=True),
    PrimaryKeyConstraint("run_id", "step_id"),
    Index(None, "output_digest"),
    sqlite_with_rowid=False,
)

pipeline_attempts = Table(
    "pipeline_attempts", metadata,
    Column("run_id", String(32), nullable=False),
    Column("step_id", String(256), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("reason", String(64), nullable=False),
    Column("message", Text, nullable=False),
    Column("isolation", String(16), nullable=False),
    Column("worker_pid", Integer, nullable=True),
    Column("worker_started", BigInteger, nullable=True),
    Column("started_at", BigInteger, nullable=False),
    Column("finished_at", BigInteger, nullable=True),
    Column("duration_ms", BigInteger, nullable=True),
    Column("exit_code", Integer, nullable=True),
    Column("peak_memory", BigInteger, nullable=True),
    Column("log_path", Text, nullable=True),
    PrimaryKeyConstraint("run_id", "step_id", "attempt"),
    sqlite_with_rowid=False,
)

pipeline_inputs = Table(
    "pipeline_inputs", metadata,
    Column("run_id", String(32), nullable=False),
    Column("step_id", String(256), nullable=False),
    Column("source_step", String(256), nullable=False),
    Column("source_run", String(32), nullable=False),
    Column("digest", String(64), nullable=False),
    Column("path", Text, nullable=True),
    PrimaryKeyConstraint("run_id", "step_id", "source_step"),
    Index(None, "digest"),
    sqlite_with_rowid=False,
)

pipeline_cache = Table(
    "pipeline_cache", metadata,
    Column("key", String(64), primary_key=True),
    Column("run_id", String(32), nullable=False),
    Column("step_id", String(256), nullable=False),
    Column("output_format", String(16), nullable=False),
    Column("output_inline", Text, nullable=True),
    Column("output_path", Text, nullable=True),
    Column("output_digest", String(64), nullable=False),
    Column("output_size", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    sqlite_with_rowid=False,
)

pipeline_schedules = Table(
    "pipeline_schedules", metadata,
    Column("name", String(256), primary_key=True),
    Column("project", String(256), nullable=False),
    Column("pipeline_ref", Text, nullable=False),
    Column("cron", String(256), nullable=False),
    Column("params", Text, nullable=False),
    Column("catchup", Boolean, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("last_slot", BigInteger, nullable=True),
)

pipeline_schedule_slots = Table(
    "pipeline_schedule_slots", metadata,
    Column("schedule", String(256), nullable=False),
    Column("slot", BigInteger, nullable=False),
    Column("run_id", String(32), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    PrimaryKeyConstraint("schedule", "slot"),
    sqlite_with_rowid=False,
)
