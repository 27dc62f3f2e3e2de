"""The event-log contract: append-only, readable by object."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from capstan.events.records import Event

if TYPE_CHECKING:
    from sqlalchemy import Connection


class EventLog(Protocol):
    """Every subsystem writes its transitions here; `capstan events KIND/ID` and the API read them back."""

    def append(self, kind: str, object_id: str, reason: str, message: str = "", *, type: str = "Normal",
               project: str = "", data: Mapping[str, object] | None = None, time: int | None = None) -> Event:
        """Append one event and return it (with its id and time)."""
        ...

    def append_many(self, events: Sequence[Event]) -> None:
        """Append several events in one transaction (ids and, when 0, times are assigned by the log)."""
        ...

    def append_within(self, conn: Connection, events: Sequence[Event]) -> None:
        """Append ``events`` inside the caller's open transaction on the metadata store, so they commit (or roll
        back) with the records they describe; ids and, when 0, times are assigned as by `append_many`."""
        ...

    def list(self, kind: str | None = None, object_id: str | None = None, *, since_id: int = 0,
             limit: int = 1000, reason: str | None = None, newest_first: bool = False) -> tuple[Event, ...]:
        """Events in id order, optionally for one object, after ``since_id``; ``newest_first``: the newest
        ``limit`` of them, newest first (e.g. the latest preemptions)."""
        ...
