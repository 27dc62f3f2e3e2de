"""SQL adapter of the event log."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import orjson
from sqlalchemy import Connection, Engine, insert, select

from capstan.clock import Clock, system_clock
from capstan.errors import InvalidParameterValue
from capstan.events.records import NORMAL, WARNING, Event
from capstan.store.schema import events


class SqlEventLog:
    """`EventLog` over the metadata store's ``events`` table: the one owner of that table's row format."""

    INSERT_SQL = ("INSERT INTO events (time, kind, object_id, type, reason, message, project, data) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
    """For stores that write through raw DB-API cursors (`capstan.store.tracking_tx`): `raw_rows` fills it."""

    def __init__(self, engine: Engine, *, clock: Clock = system_clock) -> None:
        self._engine = engine
        self._clock = clock

    @property
    def engine(self) -> Engine:
        """The engine the log writes to (stores on the same engine append inside their own transactions)."""
        return self._engine

    def append(self, kind: str, object_id: str, reason: str, message: str = "", *, type: str = NORMAL,
               project: str = "", data: Mapping[str, object] | None = None, time: int | None = None) -> Event:
        """Append one event and return it (with its id and time)."""
        event = self._check(Event(0, time or self._clock(), kind, object_id, type, reason, message, project,
                                  dict(data or {})))
        with self._engine.begin() as conn:
            new_id = conn.execute(insert(events).values(**self._row(event))).inserted_primary_key
        assert new_id is not None
        return Event(int(new_id[0]), event.time, kind, object_id, type, reason, message, project, event.data)

    def append_many(self, batch: Sequence[Event]) -> None:
        """Append several events in one transaction."""
        if not batch:
            return
        with self._engine.begin() as conn:
            self.append_within(conn, batch)

    def append_within(self, conn: Connection, batch: Sequence[Event]) -> None:
        """Append several events inside the caller's transaction (they commit or roll back with it)."""
        if not batch:
            return
        now = self._clock()
        conn.execute(insert(events), [self._row(self._check(e), default_time=now) for e in batch])

    def list(self, kind: str | None = None, object_id: str | None = None, *, since_id: int = 0,
             limit: int = 1000, reason: str | None = None, newest_first: bool = False) -> tuple[Event, ...]:
        """Events in id order, optionally for one object, after ``since_id``; ``newest_first``: the newest
        ``limit`` of them, newest first."""
        order = events.c.id.desc() if newest_first else events.c.id
        query = select(events).where(events.c.id > since_id).order_by(order).limit(limit)
        if kind is not None:
            query = query.where(events.c.kind == kind)
        if object_id is not None:
            query = query.where(events.c.object_id == object_id)
        if reason is not None:
            query = query.where(events.c.reason == reason)
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return tuple(
            Event(r.id, r.time, r.kind, r.object_id, r.type, r.reason, r.message, r.project, orjson.loads(r.data))
            for r in rows
        )

    def raw_rows(self, batch: Sequence[Event]) -> Sequence[tuple[object, ...]]:
        """``batch`` checked and laid out as `INSERT_SQL`'s parameters, for a store appending inside its own raw
        transaction on the same database."""
        now = self._clock()
        return [tuple(self._row(self._check(event), default_time=now).values()) for event in batch]

    @staticmethod
    def _check(event: Event) -> Event:
        if event.type not in (NORMAL, WARNING):
            raise InvalidParameterValue(f"type: must be {NORMAL!r} or {WARNING!r}, got {event.type!r}")
        if not event.kind or not event.object_id or not event.reason:
            raise InvalidParameterValue("kind, object_id and reason: must not be empty")
        return event

    @staticmethod
    def _row(event: Event, *, default_time: int = 0) -> dict[str, object]:
        # In the column order of INSERT_SQL, which `raw_rows` relies on.
        return {"time": event.time or default_time, "kind": event.kind, "object_id": event.object_id,
                "type": event.type, "reason": event.reason, "message": event.message, "project": event.project,
                "data": orjson.dumps(dict(event.data), default=str).decode()}
