"""The shared event log on both backends."""

from __future__ import annotations

import pytest

from capstan.errors import InvalidParameterValue
from capstan.events.records import Event
from capstan.settings import Settings
from capstan.store.engine import create_store_engine
from capstan.store.events_sql import SqlEventLog
from helpers.clock import FakeClock


def test_append_and_read_back_in_order(backend_settings: Settings) -> None:
    log = SqlEventLog(create_store_engine(backend_settings), clock=FakeClock(1000, step=1))
    first = log.append("run", "abc", "RunCreated", "created", project="p", data={"n": 1})
    log.append("run", "other", "RunCreated")
    log.append_many([Event(0, 0, "run", "abc", "Warning", "RunFailed", "boom")])
    got = log.list("run", "abc")
    assert [e.reason for e in got] == ["RunCreated", "RunFailed"]
    assert got[0] == first and got[0].data == {"n": 1} and got[0].time == 1000
    assert got[1].type == "Warning"
    assert [e.object_id for e in log.list(since_id=first.id)] == ["other", "abc"]
    assert [e.reason for e in log.list(reason="RunFailed")] == ["RunFailed"]
    newest = log.list("run", limit=2, newest_first=True)
    assert [e.id for e in newest] == [got[1].id, got[1].id - 1]  # the last two, newest first
    assert [e.object_id for e in log.list("run", reason="RunCreated", newest_first=True)] == ["other", "abc"]


def test_bad_events_are_rejected(settings: Settings) -> None:
    log = SqlEventLog(create_store_engine(settings))
    with pytest.raises(InvalidParameterValue):
        log.append("run", "abc", "X", type="Info")
    with pytest.raises(InvalidParameterValue):
        log.append("", "abc", "X")
    assert log.list() == ()
