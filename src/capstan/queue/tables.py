"""SQL tables of the queue, defined on the shared `capstan.store.schema.metadata`.

Shipped by the Alembic branch ``queue`` (revision ``0100``, file ``capstan/queue/migrations/0100_queue.py``).
Times are integer milliseconds since the epoch.

- ``queue_config``: the applied configuration YAML (one row).
- ``queue_workloads``: one row per workload with its state and the full record as JSON.
- ``queue_usage``: one row per admission, start to end, for usage showback.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, String, Table, Text

from capstan.store.schema import metadata

queue_config = Table(
    "queue_config", metadata,
    Column("id", Integer, primary_key=True),
    Column("yaml", Text, nullable=False),
    Column("applied_at", BigInteger, nullable=False),
)

queue_workloads = Table(
    "queue_workloads", metadata,
    Column("id", String(256), primary_key=True),
    Column("project", String(256), nullable=False),
    Column("user", String(256), nullable=False),
    Column("local_queue", String(256), nullable=False),
    Column("cluster_queue", String(256), nullable=False),
    Column("state", String(16), nullable=False),
    Column("reason", String(32), nullable=False),
    Column("submitted_at", BigInteger, nullable=False),
    Column("data", Text, nullable=False),
    Index("ix_queue_workloads_state", "state"),
)

queue_usage = Table(
    "queue_usage", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("workload_id", String(256), nullable=False),
    Column("project", String(256), nullable=False),
    Column("user", String(256), nullable=False),
    Column("local_queue", String(256), nullable=False),
    Column("cluster_queue", String(256), nullable=False),
    Column("usage", Text, nullable=False),
    Column("start", BigInteger, nullable=False),
    Column("end", BigInteger, nullable=True),
    Index("ix_queue_usage_workload_id", "workload_id"),
    Index("ix_queue_usage_end", "end"),
)

QUEUE_TABLES = (queue_config, queue_workloads, queue_usage)
