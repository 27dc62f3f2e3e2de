"""Schedules: due slots (pure), catch-up or not after downtime, no slot started twice, backfill; injected clock."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import pytest
from pipeline_helpers import write_pipeline

from capstan.errors import InvalidParameterValue
from capstan.pipelines.runner import PipelineRunner
from capstan.pipelines.schedules import (
    Scheduler,
    check_cron,
    create_schedule,
    due_slots,
    iso,
    parse_time,
    slots_between,
)
from capstan.store.events_sql import SqlEventLog
from helpers.clock import FakeClock

HOUR = 3_600_000
T0 = parse_time("2024-05-01T00:30", field="t")

NIGHTLY = '''
import capstan.pipelines as cp


@cp.step(isolation="thread")
def stamp(scheduled_at: str, label: str) -> str:
    return f"{label}@{scheduled_at}"


@cp.pipeline
def nightly(scheduled_at: str = "", label: str = "x"):
    return stamp(scheduled_at, label)
'''


def test_cron_validation_is_one_line() -> None:
    assert check_cron(" 0 3 * * * ") == "0 3 * * *"
    for bad in ("61 * * * *", "every day", "* * *", "0 3 * * * * *"):
        with pytest.raises(InvalidParameterValue, match=r"^--cron: .* is not a valid cron expression"):
            check_cron(bad)


def test_due_slots_follow_the_catchup_setting() -> None:
    hourly = "0 * * * *"
    assert slots_between(hourly, T0, T0 + 3 * HOUR) == [T0 + 30 * 60_000 + i * HOUR for i in range(3)]
    assert due_slots(hourly, last_slot=None, created_at=T0, now=T0 + 10 * 60_000, catchup=True) == []
    missed = due_slots(hourly, last_slot=None, created_at=T0, now=T0 + 3 * HOUR, catchup=True)
    assert [iso(s) for s in missed] == ["2024-05-01T01:00:00+00:00", "2024-05-01T02:00:00+00:00",
                                        "2024-05-01T03:00:00+00:00"]
    assert due_slots(hourly, last_slot=None, created_at=T0, now=T0 + 3 * HOUR, catchup=False) == missed[-1:]
    assert due_slots(hourly, last_slot=missed[-1], created_at=T0, now=T0 + 3 * HOUR, catchup=True) == []
    assert parse_time("2024-05-01", field="f") == int(dt.datetime(2024, 5, 1, tzinfo=dt.UTC).timestamp() * 1000)
    with pytest.raises(InvalidParameterValue, match="--from: 'yesterday' is not an ISO date"):
        parse_time("yesterday", field="--from")


def scheduler(runner: PipelineRunner, clock: FakeClock, started: list[str]) -> Scheduler:
    return Scheduler(runner, started.append, clock=clock)


def test_catchup_no_catchup_and_no_double_slot(runner: PipelineRunner, tmp_path: Path) -> None:
    file = write_pipeline(tmp_path / "code", "nightly", NIGHTLY)
    clock = FakeClock(T0)
    runner.clock = runner.store.clock = clock
    create_schedule(runner, "hourly", f"{file}:nightly", "0 * * * *", {"label": "a"}, catchup=True)
    create_schedule(runner, "latest", f"{file}:nightly", "0 * * * *", {"label": "b"}, catchup=False)
    started: list[str] = []
    sched = scheduler(runner, clock, started)
    assert sched.tick() == []
    clock.now = T0 + 3 * HOUR + 5_000  # the server was down for three slots
    first = sched.tick()
    assert len(first) == 4 and started == first
    assert len(runner.store.slots("hourly")) == 3 and len(runner.store.slots("latest")) == 1
    assert sched.tick() == []  # same time again: nothing is started twice
    skipped = SqlEventLog(runner.engine).list("schedule", "latest", reason="SlotsSkipped")
    assert skipped and "2 missed slot(s) skipped" in skipped[0].message

    run = runner.store.get_run(runner.store.slots("hourly")[0][1])
    assert (run.source, run.schedule, run.status) == ("schedule", "hourly", "pending")
    assert run.params == {"scheduled_at": "2024-05-01T01:00:00+00:00", "label": "a"}
    result = runner.execute(run.id)
    assert result.ok and result.value() == "a@2024-05-01T01:00:00+00:00"

    # Two schedulers (two servers) racing over the same slots still start each slot once.
    clock.now += 2 * HOUR
    racers = [scheduler(runner, clock, started) for _ in range(2)]
    threads = [threading.Thread(target=s.tick) for s in racers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    slots = [s for s, _run in runner.store.slots("hourly")]
    assert len(slots) == len(set(slots)) == 5
    assert len(runner.store.slots("latest")) == 2
    assert len(runner.store.list_runs(limit=100)) == 7


def test_backfill_starts_only_missing_slots(runner: PipelineRunner, tmp_path: Path) -> None:
    file = write_pipeline(tmp_path / "code", "nightly", NIGHTLY)
    clock = FakeClock(T0)
    runner.clock = runner.store.clock = clock
    create_schedule(runner, "daily", f"{file}:nightly", "0 3 * * *", {}, catchup=False)
    started: list[str] = []
    sched = scheduler(runner, clock, started)
    start, end = parse_time("2024-04-01", field="f"), parse_time("2024-04-05T03:00", field="t")
    out = sched.backfill("daily", start, end)
    assert [iso(s)[:10] for s, _r in out] == ["2024-04-01", "2024-04-02", "2024-04-03", "2024-04-04", "2024-04-05"]
    assert all(r is not None for _s, r in out) and len(started) == 5
    again = sched.backfill("daily", start, end + 24 * HOUR)
    assert [r is None for _s, r in again] == [True] * 5 + [False]
    assert runner.store.get_run(again[-1][1] or "").source == "backfill"
    with pytest.raises(InvalidParameterValue, match="--to: must not be before --from"):
        sched.backfill("daily", end, start)


def test_a_schedule_of_a_broken_pipeline_records_the_failure(runner: PipelineRunner, tmp_path: Path) -> None:
    file = write_pipeline(tmp_path / "code", "nightly", NIGHTLY)
    clock = FakeClock(T0)
    runner.clock = runner.store.clock = clock
    create_schedule(runner, "fragile", f"{file}:nightly", "0 * * * *", {}, catchup=True)
    file.write_text("import nowhere_to_be_found\n")
    clock.now = T0 + HOUR
    assert scheduler(runner, clock, []).tick() == []
    (event,) = SqlEventLog(runner.engine).list("schedule", "fragile", reason="ScheduleFailed")
    assert "cannot import pipeline file" in event.message and "nightly.py:1" in event.message
    assert runner.store.list_runs() == []
    assert runner.store.get_schedule("fragile").last_slot == T0 + 30 * 60_000


def test_schedule_creation_is_validated_before_anything_is_stored(runner: PipelineRunner, tmp_path: Path) -> None:
    file = write_pipeline(tmp_path / "code", "nightly", NIGHTLY)
    with pytest.raises(InvalidParameterValue, match="--cron"):
        create_schedule(runner, "x", f"{file}:nightly", "bad", {}, catchup=True)
    with pytest.raises(InvalidParameterValue, match="has no parameter 'nope'"):
        create_schedule(runner, "x", f"{file}:nightly", "0 3 * * *", {"nope": 1}, catchup=True)
    with pytest.raises(InvalidParameterValue, match="schedule name"):
        create_schedule(runner, "bad name", f"{file}:nightly", "0 3 * * *", {}, catchup=True)
    assert runner.store.schedules() == []
