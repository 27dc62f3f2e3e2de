"""SQL adapter of `QueueStore` (SQLAlchemy Core; SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
from sqlalchemy import Engine, delete, insert, inspect, or_, select, update

from capstan.errors import StoreUnavailable
from capstan.queue.records import (
    ACTIVE_STATES,
    UsageRecord,
    WorkloadRecord,
    record_from_json,
    record_to_json,
    usage_from_json,
    usage_to_json,
)
from capstan.queue.tables import QUEUE_TABLES, queue_config, queue_usage, queue_workloads


class SqlQueueStore:
    """`QueueStore` over the metadata store's ``queue_*`` tables."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        existing = set(inspect(engine).get_table_names())
        if any(t.name not in existing for t in QUEUE_TABLES):
            raise StoreUnavailable("the queue tables are missing from the metadata store; run `capstan db upgrade`")

    def load_config(self) -> str | None:
        """The last applied configuration YAML, or None."""
        with self._engine.connect() as conn:
            row = conn.execute(select(queue_config.c.yaml).where(queue_config.c.id == 1)).first()
        return None if row is None else str(row[0])

    def save_config(self, text: str, applied_at: int) -> None:
        """Store the applied configuration YAML."""
        with self._engine.begin() as conn:
            conn.execute(delete(queue_config).where(queue_config.c.id == 1))
            conn.execute(insert(queue_config).values(id=1, yaml=text, applied_at=applied_at))

    def put_workloads(self, records: Sequence[WorkloadRecord]) -> None:
        """Insert or replace workload records in one transaction."""
        if not records:
            return
        ids = [r.id for r in records]
        with self._engine.begin() as conn:
            for start in range(0, len(ids), 500):
                conn.execute(delete(queue_workloads).where(queue_workloads.c.id.in_(ids[start:start + 500])))
            conn.execute(insert(queue_workloads), [
                {"id": r.id, "project": r.workload.project, "user": r.workload.user, "local_queue": r.workload.queue,
                 "cluster_queue": r.workload.cluster_queue, "state": r.state, "reason": r.reason.value,
                 "submitted_at": r.submitted_at, "data": orjson.dumps(record_to_json(r)).decode()}
                for r in records])

    def active_workloads(self) -> list[WorkloadRecord]:
        """Workloads that are pending, admitted or being evicted."""
        query = select(queue_workloads.c.data).where(queue_workloads.c.state.in_(ACTIVE_STATES))
        with self._engine.connect() as conn:
            return [record_from_json(orjson.loads(row[0])) for row in conn.execute(query)]

    def get_workload(self, workload_id: str) -> WorkloadRecord | None:
        """One workload record, in any state."""
        with self._engine.connect() as conn:
            row = conn.execute(select(queue_workloads.c.data).where(queue_workloads.c.id == workload_id)).first()
        return None if row is None else record_from_json(orjson.loads(row[0]))

    def open_usage(self, record: UsageRecord) -> None:
        """Start a usage record."""
        with self._engine.begin() as conn:
            conn.execute(insert(queue_usage).values(
                workload_id=record.workload_id, project=record.project, user=record.user,
                local_queue=record.local_queue, cluster_queue=record.cluster_queue,
                usage=orjson.dumps(usage_to_json(record.usage)).decode(), start=record.start, end=record.end))

    def close_usage(self, workload_id: str, end: int) -> None:
        """End the open usage record of a workload."""
        with self._engine.begin() as conn:
            conn.execute(update(queue_usage).where(queue_usage.c.workload_id == workload_id,
                                                   queue_usage.c.end.is_(None)).values(end=end))

    def usage_since(self, since: int) -> list[UsageRecord]:
        """Usage records still open or ended after ``since``."""
        query = select(queue_usage).where(or_(queue_usage.c.end.is_(None), queue_usage.c.end > since)) \
            .order_by(queue_usage.c.id)
        with self._engine.connect() as conn:
            return [UsageRecord(r.workload_id, r.project, r.user, r.local_queue, r.cluster_queue,
                                usage_from_json(orjson.loads(r.usage)), r.start, r.end)
                    for r in conn.execute(query)]
