"""SQL adapter of `QueueStore` (SQLAlchemy Core; SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, bindparam, delete, insert, inspect, or_, select, update

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


class _Prepared:
    """A statement compiled once for the engine's dialect and run through the driver: the queue's hot paths run
    for every orchestration round of every pipeline, where SQLAlchemy's per-call compilation would dominate."""

    def __init__(self, stmt: Any, engine: Engine, *, literal: bool = False) -> None:
        compiled = stmt.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True} if literal else {})
        self.sql: str = compiled.string
        self.names: tuple[str, ...] | None = tuple(compiled.positiontup or ()) if compiled.positional else None

    def args(self, values: Mapping[str, Any]) -> Any:
        """Parameters in the driver's style."""
        return tuple(values[n] for n in self.names) if self.names is not None else dict(values)

    def run(self, conn: Connection, values: Mapping[str, Any] | None = None) -> Any:
        """Execute once."""
        return conn.exec_driver_sql(self.sql, self.args(values or {}))

    def run_many(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Execute once per row (the driver's executemany)."""
        conn.exec_driver_sql(self.sql, [self.args(r) for r in rows])


class _Statements:
    def __init__(self, engine: Engine) -> None:
        w, u = queue_workloads.c, queue_usage.c
        self.config = _Prepared(select(queue_config.c.yaml).where(queue_config.c.id == 1), engine, literal=True)
        self.active = _Prepared(select(w.data).where(w.state.in_(ACTIVE_STATES)), engine, literal=True)
        self.get = _Prepared(select(w.data).where(w.id == bindparam("k_id")), engine)
        self.delete = _Prepared(delete(queue_workloads).where(w.id == bindparam("k_id")), engine)
        self.insert = _Prepared(insert(queue_workloads).values({c.name: bindparam(c.name) for c in queue_workloads.c}),
                                engine)
        self.open_usage = _Prepared(insert(queue_usage).values({c.name: bindparam(c.name) for c in queue_usage.c
                                                                if c.name != "id"}), engine)
        self.close_usage = _Prepared(update(queue_usage).where(u.workload_id == bindparam("k_id"), u.end.is_(None))
                                     .values(end=bindparam("k_end")), engine)


class SqlQueueStore:
    """`QueueStore` over the metadata store's ``queue_*`` tables."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._local = threading.local()
        self._parsed: dict[str, WorkloadRecord] = {}  # stored JSON -> record, for the active workloads
        self._st = _Statements(engine)
        existing = set(inspect(engine).get_table_names())
        if any(t.name not in existing for t in QUEUE_TABLES):
            raise StoreUnavailable("the queue tables are missing from the metadata store; run `capstan db upgrade`")

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """Run every call this thread makes inside the block in one transaction (one commit for a whole session
        of the manager: its reads, workload records, usage records, and what the caller adds on the yielded
        connection). Nested blocks join the outer one."""
        current: Connection | None = getattr(self._local, "conn", None)
        if current is not None:
            yield current
            return
        with self._engine.begin() as conn:
            self._local.conn = conn
            try:
                yield conn
            finally:
                self._local.conn = None

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        current: Connection | None = getattr(self._local, "conn", None)
        if current is not None:
            yield current
            return
        with self._engine.begin() as conn:
            yield conn

    @contextmanager
    def _connect(self) -> Iterator[Connection]:
        current: Connection | None = getattr(self._local, "conn", None)
        if current is not None:
            yield current
            return
        with self._engine.connect() as conn:
            yield conn

    def load_config(self) -> str | None:
        """The last applied configuration YAML, or None."""
        with self._connect() as conn:
            row = self._st.config.run(conn).first()
        return None if row is None else str(row[0])

    def save_config(self, text: str, applied_at: int) -> None:
        """Store the applied configuration YAML."""
        with self._begin() as conn:
            conn.execute(delete(queue_config).where(queue_config.c.id == 1))
            conn.execute(insert(queue_config).values(id=1, yaml=text, applied_at=applied_at))

    def put_workloads(self, records: Sequence[WorkloadRecord]) -> None:
        """Insert or replace workload records in one transaction."""
        if not records:
            return
        with self._begin() as conn:
            self._st.delete.run_many(conn, [{"k_id": r.id} for r in records])
            self._st.insert.run_many(conn, [
                {"id": r.id, "project": r.workload.project, "user": r.workload.user, "local_queue": r.workload.queue,
                 "cluster_queue": r.workload.cluster_queue, "state": r.state, "reason": r.reason.value,
                 "submitted_at": r.submitted_at, "data": orjson.dumps(record_to_json(r)).decode()}
                for r in records])

    def active_workloads(self) -> list[WorkloadRecord]:
        """Workloads that are pending, admitted or being evicted.

        Records whose stored JSON did not change since the last call are not parsed again (managers are rebuilt
        from the store for every locked session; records are immutable, so sharing them is safe)."""
        with self._connect() as conn:
            texts = [str(row[0]) for row in self._st.active.run(conn)]
        known = self._parsed
        fresh = {text: known.get(text) or record_from_json(orjson.loads(text)) for text in texts}
        self._parsed = fresh
        return [fresh[text] for text in texts]

    def get_workload(self, workload_id: str) -> WorkloadRecord | None:
        """One workload record, in any state."""
        with self._connect() as conn:
            row = self._st.get.run(conn, {"k_id": workload_id}).first()
        return None if row is None else record_from_json(orjson.loads(row[0]))

    def open_usage(self, record: UsageRecord) -> None:
        """Start a usage record."""
        with self._begin() as conn:
            self._st.open_usage.run(conn, {
                "workload_id": record.workload_id, "project": record.project, "user": record.user,
                "local_queue": record.local_queue, "cluster_queue": record.cluster_queue,
                "usage": orjson.dumps(usage_to_json(record.usage)).decode(), "start": record.start, "end": record.end})

    def close_usage(self, workload_id: str, end: int) -> None:
        """End the open usage record of a workload."""
        with self._begin() as conn:
            self._st.close_usage.run(conn, {"k_id": workload_id, "k_end": end})

    def usage_since(self, since: int) -> list[UsageRecord]:
        """Usage records still open or ended after ``since``."""
        query = select(queue_usage).where(or_(queue_usage.c.end.is_(None), queue_usage.c.end > since)) \
            .order_by(queue_usage.c.id)
        with self._connect() as conn:
            return [UsageRecord(r.workload_id, r.project, r.user, r.local_queue, r.cluster_queue,
                                usage_from_json(orjson.loads(r.usage)), r.start, r.end)
                    for r in conn.execute(query)]
