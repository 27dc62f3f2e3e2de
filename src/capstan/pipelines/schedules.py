"""Cron schedules: which slots are due (pure, given the time), and the loop ``capstan server`` runs.

A slot is the time a cron expression fires (UTC). Starting a slot inserts its ``(schedule, slot)`` row and the run
in one transaction: the primary key makes a second start of the same slot impossible, even with two servers.
After downtime, a schedule with ``catchup`` starts every missed slot; without, only the latest one.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from capstan.clock import Clock, system_clock
from capstan.errors import CapstanError, InvalidParameterValue

if TYPE_CHECKING:
    from capstan.pipelines.runner import PipelineRunner
    from capstan.pipelines.storage import ScheduleRecord

SCHEDULE_KIND = "schedule"
MAX_SLOTS = 1000
"""Most slots one tick or one backfill starts (a guard against a years-long catch-up of a per-minute cron)."""


def check_cron(expr: str, *, field: str = "--cron") -> str:
    """``expr`` when it is a valid 5-field cron expression; else a one-line `InvalidParameterValue`."""
    from croniter import croniter

    text = expr.strip()
    if len(text.split()) not in (5, 6):
        raise InvalidParameterValue(f"{field}: {expr!r} is not a valid cron expression (expected 5 fields such "
                                    "as '0 3 * * *')")
    try:
        croniter(text, dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
    except Exception as exc:  # noqa: BLE001  # croniter raises several error types for malformed expressions
        raise InvalidParameterValue(f"{field}: {expr!r} is not a valid cron expression ({exc})") from None
    return text


def slots_between(cron: str, after_ms: int, until_ms: int, *, limit: int = MAX_SLOTS) -> list[int]:
    """Fire times of ``cron`` strictly after ``after_ms`` and at or before ``until_ms`` (ms, UTC)."""
    from croniter import croniter

    it = croniter(cron, dt.datetime.fromtimestamp(after_ms / 1000, dt.UTC))
    out: list[int] = []
    while len(out) < limit:
        nxt: dt.datetime = it.get_next(dt.datetime)
        ms = int(nxt.timestamp() * 1000)
        if ms > until_ms:
            break
        out.append(ms)
    return out


def due_slots(cron: str, *, last_slot: int | None, created_at: int, now: int, catchup: bool) -> list[int]:
    """Slots to start now: after the last one started (or the schedule's creation) up to ``now``; only the
    newest when ``catchup`` is off."""
    start = last_slot if last_slot is not None else created_at
    slots = slots_between(cron, start, now)
    return slots if catchup else slots[-1:]


def iso(ms: int) -> str:
    """``2024-05-01T03:00:00+00:00`` for a slot."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat()


def parse_time(text: str, *, field: str) -> int:
    """Milliseconds (UTC) from an ISO date or date-time; naive times are UTC."""
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidParameterValue(f"{field}: {text!r} is not an ISO date or date-time (e.g. 2024-05-01 or "
                                    "2024-05-01T03:00)") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return int(value.timestamp() * 1000)


class _SlotTaken(Exception):  # control flow: roll back the transaction that lost the slot race
    pass


class Scheduler:
    """Starts due slots of every schedule; `start`/`stop` run `tick` on a background thread."""

    def __init__(self, runner: PipelineRunner, submit: Callable[[str], None], *, clock: Clock = system_clock,
                 interval_s: float = 1.0, on_tick: Callable[[], object] | None = None) -> None:
        self._runner = runner
        self._submit = submit
        self._on_tick = on_tick
        self._clock = clock
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the loop -------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Tick every ``interval_s`` on a daemon thread until `stop`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="capstan-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop ticking (waits for the current tick)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
                if self._on_tick is not None:
                    self._on_tick()
            except Exception as exc:  # noqa: BLE001  # a broken schedule or store hiccup must not end the loop
                self._event("scheduler", "SchedulerError", f"{type(exc).__name__}: {exc}", warning=True)
            self._stop.wait(self._interval)

    def tick(self) -> list[str]:
        """Start every due slot of every schedule; returns the run ids started."""
        started: list[str] = []
        now = self._clock()
        for schedule in self._runner.store.schedules():
            slots = due_slots(schedule.cron, last_slot=schedule.last_slot, created_at=schedule.created_at, now=now,
                              catchup=schedule.catchup)
            if not slots:
                continue
            if not schedule.catchup:
                missed = slots_between(schedule.cron, schedule.last_slot or schedule.created_at, slots[-1])
                if len(missed) > 1:
                    self._event(schedule.name, "SlotsSkipped", f"{len(missed) - 1} missed slot(s) skipped "
                                f"(catchup is off); starting {iso(slots[-1])}")
            for slot in slots:
                run_id = self.start_slot(schedule, slot, source="schedule", move_watermark=True)
                if run_id is not None:
                    started.append(run_id)
        return started

    # -- starting slots -------------------------------------------------------------------------------------
    def start_slot(self, schedule: ScheduleRecord, slot: int, *, source: str, move_watermark: bool) -> str | None:
        """Create the run of one slot (and hand it to ``submit``); None when the slot was already started or the
        pipeline cannot be loaded (recorded as an event)."""
        from sqlalchemy.exc import IntegrityError

        from capstan.pipelines.loader import load_pipeline

        store = self._runner.store
        try:
            pipe, ref = load_pipeline(schedule.pipeline_ref)
            params = dict(schedule.params)
            if any(p.name == "scheduled_at" for p in pipe.params):
                params["scheduled_at"] = iso(slot)
            pipe.build(params)  # validate before anything is written
        except CapstanError as exc:
            self._event(schedule.name, "ScheduleFailed", f"slot {iso(slot)}: {exc.message}", warning=True)
            if move_watermark:
                with self._runner.engine.begin() as conn:
                    store.set_last_slot(conn, schedule.name, slot)
            return None
        try:
            with self._runner.engine.begin() as conn:
                record, _graph = self._runner.create_run(pipe, params, ref=ref, source=source,
                                                         project=schedule.project, schedule=schedule.name,
                                                         slot=slot, conn=conn)
                if not store.claim_slot(conn, schedule.name, slot, record.id):
                    raise _SlotTaken
                if move_watermark:
                    store.set_last_slot(conn, schedule.name, slot)
        except (_SlotTaken, IntegrityError):
            if move_watermark:
                with self._runner.engine.begin() as conn:
                    store.set_last_slot(conn, schedule.name, slot)
            return None
        self._event(schedule.name, "SlotStarted", f"slot {iso(slot)} started run {record.id}",
                    data={"slot": slot, "run_id": record.id, "source": source})
        self._submit(record.id)
        return record.id

    def backfill(self, name: str, start_ms: int, end_ms: int) -> list[tuple[int, str | None]]:
        """Start every slot of schedule ``name`` in ``[start_ms, end_ms]`` that was not started yet; returns
        (slot, new run id or None when it already ran) pairs."""
        schedule = self._runner.store.get_schedule(name)
        if end_ms < start_ms:
            raise InvalidParameterValue("--to: must not be before --from")
        slots = slots_between(schedule.cron, start_ms - 1, end_ms)
        if len(slots) >= MAX_SLOTS:
            raise InvalidParameterValue(f"backfill: more than {MAX_SLOTS} slots between the two times; narrow it")
        taken = dict(self._runner.store.slots(name))
        out: list[tuple[int, str | None]] = []
        for slot in slots:
            if slot in taken:
                out.append((slot, None))
                continue
            out.append((slot, self.start_slot(schedule, slot, source="backfill", move_watermark=False)))
        return out

    def _event(self, name: str, reason: str, message: str, *, warning: bool = False,
               data: dict[str, Any] | None = None) -> None:
        from capstan.store.events_sql import SqlEventLog

        SqlEventLog(self._runner.engine, clock=self._clock).append(
            SCHEDULE_KIND, name, reason, message, type="Warning" if warning else "Normal", data=data)


def create_schedule(runner: PipelineRunner, name: str, pipeline_ref: str, cron: str, params: dict[str, Any], *,
                    catchup: bool, project: str | None = None) -> ScheduleRecord:
    """Validate (cron, pipeline import, parameters) and store a schedule."""
    from capstan.pipelines.loader import load_pipeline
    from capstan.pipelines.params import resolve_params, to_jsonable
    from capstan.pipelines.storage import ScheduleRecord
    from capstan.store.events_sql import SqlEventLog

    if not name or len(name) > 256 or not all(ch.isalnum() or ch in "_-." for ch in name):
        raise InvalidParameterValue(f"schedule name: {name!r} may use letters, digits, '_', '-' and '.'")
    expr = check_cron(cron)
    pipe, ref = load_pipeline(pipeline_ref)
    given = dict(params)
    if any(p.name == "scheduled_at" for p in pipe.params) and "scheduled_at" not in given:
        given["scheduled_at"] = iso(runner.clock())
    resolved = resolve_params(pipe, given)
    stored = {k: to_jsonable(resolved[k]) for k in params}
    record = ScheduleRecord(name, project or runner.settings.project, ref, expr, stored, catchup, runner.clock(),
                            None)
    runner.store.create_schedule(record)
    SqlEventLog(runner.engine, clock=runner.clock).append(
        SCHEDULE_KIND, name, "ScheduleCreated", f"{ref} on {expr!r} (catchup {'on' if catchup else 'off'})",
        project=record.project)
    return record
