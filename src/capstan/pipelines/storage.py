"""SQL adapter of the pipelines subsystem: runs, steps, attempts, lineage, cache and schedules.

The orchestrator's writes go through `RoundWriter`: every change decided in one scheduling round (step states,
attempt rows, lineage, cache entries, events) is written with pre-compiled statements in *one* transaction, which
commits before any of those changes takes effect. That keeps "persisted before it takes effect" while costing one
commit per round instead of several per step. Rounds that only start thread steps share one transaction with the
rounds after them (group commit: `capstan.pipelines.orchestrator`, decision 0753).
"""

from __future__ import annotations

import enum
import operator
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

import orjson
from sqlalchemy import Connection, Engine, and_, bindparam, delete, insert, select, update

from capstan.clock import Clock, system_clock
from capstan.errors import InvalidParameterValue, ResourceAlreadyExists, ResourceDoesNotExist
from capstan.events.records import NORMAL, Event
from capstan.pipelines.serialize import OutputRef
from capstan.pipelines.tables import (
    pipeline_attempts,
    pipeline_cache,
    pipeline_inputs,
    pipeline_runs,
    pipeline_schedule_slots,
    pipeline_schedules,
    pipeline_steps,
)
from capstan.store.artifact_index_sql import SqlArtifactIndex
from capstan.store.events_sql import SqlEventLog

RUN_KIND = "pipeline-run"
STEP_KIND = "step"

# The SQL columns (or bind names) the round writer's typed rows fill.
STEP_MUTABLE = ("state", "attempt", "retries_used", "reason", "message", "next_attempt_at", "cache_key",
                "cached_from", "output_format", "output_inline", "output_path", "output_digest", "output_size",
                "started_at", "finished_at")
ATTEMPT_DONE = ("state", "reason", "message", "finished_at", "duration_ms", "exit_code", "peak_memory", "log_path")
RUN_UPDATABLE = ("status", "heartbeat_at", "started_at", "finished_at", "message")
_KEYS: Final = {"k_run": "run_id", "k_step": "step_id", "k_attempt": "attempt"}  # WHERE binds -> row fields


_ORCHESTRATOR_ID: dict[int, str] = {}


def orchestrator_id() -> str:
    """``host:pid:start-ms`` naming this process as a run's orchestrator."""
    import os

    pid = os.getpid()
    if pid not in _ORCHESTRATOR_ID:
        from capstan.pipelines.executors import process_started_ms

        _ORCHESTRATOR_ID[pid] = f"{socket.gethostname()}:{pid}:{process_started_ms(pid) or 0}"
    return _ORCHESTRATOR_ID[pid]


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A pipeline run as stored."""

    id: str
    project: str
    name: str
    pipeline_ref: str
    params: dict[str, Any]
    graph: dict[str, Any]
    status: str
    no_cache: bool
    cancel_requested: bool
    source: str
    schedule: str | None
    slot: int | None
    orchestrator: str | None
    heartbeat_at: int | None
    created_at: int
    started_at: int | None
    finished_at: int | None
    message: str

    def to_json(self) -> dict[str, Any]:
        """JSON form for ``--json`` and the API."""
        return {"id": self.id, "project": self.project, "pipeline": self.name, "pipeline_ref": self.pipeline_ref,
                "params": self.params, "status": self.status, "no_cache": self.no_cache,
                "cancel_requested": self.cancel_requested, "source": self.source, "schedule": self.schedule,
                "slot": self.slot, "orchestrator": self.orchestrator, "created_at": self.created_at,
                "started_at": self.started_at, "finished_at": self.finished_at, "message": self.message}


@dataclass(frozen=True, slots=True)
class StepRecord:
    """A step of a run as stored."""

    run_id: str
    step_id: str
    step_name: str
    seq: int
    parent: str | None
    map_index: int | None
    state: str
    attempt: int
    retries_used: int
    reason: str
    message: str
    next_attempt_at: int | None
    cache_key: str | None
    cached_from: str | None
    output: OutputRef | None
    started_at: int | None
    finished_at: int | None

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {"step": self.step_id, "name": self.step_name, "parent": self.parent, "map_index": self.map_index,
                "state": self.state, "attempt": self.attempt, "retries_used": self.retries_used,
                "reason": self.reason, "message": self.message, "cache_key": self.cache_key,
                "cached_from": self.cached_from, "output": self.output.to_json() if self.output else None,
                "started_at": self.started_at, "finished_at": self.finished_at}


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One attempt of a step."""

    run_id: str
    step_id: str
    attempt: int
    state: str
    reason: str
    message: str
    isolation: str
    worker_pid: int | None
    worker_started: int | None
    started_at: int
    finished_at: int | None
    duration_ms: int | None
    exit_code: int | None
    peak_memory: int | None
    log_path: str | None

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {"attempt": self.attempt, "state": self.state, "reason": self.reason, "message": self.message,
                "isolation": self.isolation, "worker_pid": self.worker_pid, "started_at": self.started_at,
                "finished_at": self.finished_at, "duration_ms": self.duration_ms, "exit_code": self.exit_code,
                "peak_memory": self.peak_memory, "log_path": self.log_path}


@dataclass(frozen=True, slots=True)
class ScheduleRecord:
    """A cron schedule of a pipeline."""

    name: str
    project: str
    pipeline_ref: str
    cron: str
    params: dict[str, Any]
    catchup: bool
    created_at: int
    last_slot: int | None

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {"name": self.name, "project": self.project, "pipeline": self.pipeline_ref, "cron": self.cron,
                "params": self.params, "catchup": self.catchup, "created_at": self.created_at,
                "last_slot": self.last_slot}


def _run(row: Any) -> RunRecord:
    return RunRecord(row.id, row.project, row.name, row.pipeline_ref, orjson.loads(row.params),
                     orjson.loads(row.graph), row.status, bool(row.no_cache), bool(row.cancel_requested),
                     row.source, row.schedule, row.slot, row.orchestrator, row.heartbeat_at, row.created_at,
                     row.started_at, row.finished_at, row.message)


def step_record(row: Any, project: str) -> StepRecord:
    """A `StepRecord` from a ``pipeline_steps`` row."""
    output = None
    if row.output_format is not None:
        output = OutputRef.from_columns(row.output_format, row.output_inline, row.output_path, row.output_digest,
                                        row.output_size or 0, project)
    return StepRecord(row.run_id, row.step_id, row.step_name, row.seq, row.parent, row.map_index, row.state,
                      row.attempt, row.retries_used, row.reason, row.message, row.next_attempt_at, row.cache_key,
                      row.cached_from, output, row.started_at, row.finished_at)


def _attempt(row: Any) -> AttemptRecord:
    return AttemptRecord(row.run_id, row.step_id, row.attempt, row.state, row.reason, row.message, row.isolation,
                         row.worker_pid, row.worker_started, row.started_at, row.finished_at, row.duration_ms,
                         row.exit_code, row.peak_memory, row.log_path)


def pipeline_event(time: int, project: str, kind: str, object_id: str, reason: str, message: str = "", *,
                   type: str = NORMAL, data: dict[str, Any] | None = None) -> Event:
    """An event of a pipeline run or step, for the shared event log (which owns the ``events`` row format)."""
    return Event(0, time, kind, object_id, type, reason, message, project, dict(data or {}))


class _Unset(enum.Enum):
    UNSET = "unset"

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset.UNSET
"""A `RunUpdate` field that is not written."""
Unset = Literal[_Unset.UNSET]


@dataclass(frozen=True, slots=True)
class RunUpdate:
    """Changes to one ``pipeline_runs`` row; a field left `UNSET` is not written (its column keeps its value)."""

    run_id: str
    status: str | Unset = UNSET
    heartbeat_at: int | Unset = UNSET
    started_at: int | Unset | None = UNSET
    finished_at: int | Unset | None = UNSET
    message: str | Unset = UNSET

    def values(self) -> dict[str, Any]:
        """The columns this update writes, by name."""
        return {name: value for name in RUN_UPDATABLE if (value := getattr(self, name)) is not UNSET}

    def then(self, later: RunUpdate) -> RunUpdate:
        """This update followed by ``later`` of the same run: every field ``later`` sets wins, the rest stay."""
        if later.run_id != self.run_id:
            raise ValueError(f"updates of two runs: {self.run_id!r} and {later.run_id!r}")
        return RunUpdate(self.run_id, **(self.values() | later.values()))


@dataclass(frozen=True, slots=True)
class StepRow:
    """The mutable columns of one ``pipeline_steps`` row (and its key), as a round writes them."""

    run_id: str
    step_id: str
    state: str
    attempt: int
    retries_used: int
    reason: str
    message: str
    next_attempt_at: int | None
    cache_key: str | None
    cached_from: str | None
    output_format: str | None
    output_inline: str | None
    output_path: str | None
    output_digest: str | None
    output_size: int | None
    started_at: int | None
    finished_at: int | None


class StepSource(Protocol):
    """Something a step's row is rendered from at commit (the orchestrator's in-memory step record)."""

    def row(self, run_id: str) -> StepRow:
        """The row as it now stands."""
        ...


@dataclass(frozen=True, slots=True)
class StartedAttempt:
    """A new ``pipeline_attempts`` row: an attempt that was just sent to its executor."""

    run_id: str
    step_id: str
    attempt: int
    isolation: str
    worker_pid: int | None
    worker_started: int | None
    started_at: int
    state: str = "running"
    reason: str = ""
    message: str = ""
    finished_at: int | None = None
    duration_ms: int | None = None
    exit_code: int | None = None
    peak_memory: int | None = None
    log_path: str | None = None


@dataclass(frozen=True, slots=True)
class FinishedAttempt:
    """How an attempt ended: the columns written to its ``pipeline_attempts`` row."""

    run_id: str
    step_id: str
    attempt: int
    state: str
    reason: str
    message: str
    finished_at: int
    duration_ms: int | None
    exit_code: int | None
    peak_memory: int | None
    log_path: str | None


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """A ``pipeline_cache`` row: where the output of a cacheable step is."""

    key: str
    run_id: str
    step_id: str
    output_format: str
    output_inline: str | None
    output_path: str | None
    output_digest: str
    output_size: int
    created_at: int


@dataclass(frozen=True, slots=True)
class StepInput:
    """A ``pipeline_inputs`` row: a lineage edge from the output a step consumed."""

    run_id: str
    step_id: str
    source_step: str
    source_run: str
    digest: str
    path: str | None


class _Compiled:
    """A statement compiled once for the engine's dialect and run with the DB-API ``executemany``.

    Rows are typed records whose fields are named after the statement's binds (``k_run``, ``k_step`` and
    ``k_attempt`` of a WHERE clause read ``run_id``, ``step_id`` and ``attempt``); plain dicts keyed by bind name
    (new step rows, batches built by hand) are passed as they are.
    """

    def __init__(self, stmt: Any, engine: Engine) -> None:
        compiled = stmt.compile(dialect=engine.dialect)
        self.sql = compiled.string
        self.positional = bool(compiled.positional)
        self.names: tuple[str, ...] = tuple(compiled.positiontup or ()) if self.positional else ()
        binds = self.names if self.positional else tuple(compiled.binds)
        fields = tuple(_KEYS.get(name, name) for name in binds)
        self._pairs = tuple(zip(binds, fields, strict=True))
        self._getter: Callable[[dict[str, Any]], tuple[Any, ...]]
        self._fields: Callable[[Any], tuple[Any, ...]]
        if len(self.names) > 1:
            self._getter = operator.itemgetter(*self.names)
            self._fields = operator.attrgetter(*fields)
        else:
            name = self.names[0] if self.names else ""
            attr = fields[0] if fields else ""
            self._getter = lambda row: (row[name],)
            self._fields = lambda row: (getattr(row, attr),)

    def run(self, cursor: Any, rows: Sequence[Any]) -> None:
        if not rows:
            return
        if isinstance(rows[0], dict):
            if self.positional:
                cursor.executemany(self.sql, list(map(self._getter, rows)))
            else:
                cursor.executemany(self.sql, rows)
        elif self.positional:
            cursor.executemany(self.sql, list(map(self._fields, rows)))
        else:
            pairs = self._pairs
            cursor.executemany(self.sql, [{bind: getattr(row, attr) for bind, attr in pairs} for row in rows])


@dataclass(slots=True)
class Batch:
    """Changes decided in one scheduling round, written together."""

    steps: dict[str, StepRow]  # step id -> its row
    new_steps: list[dict[str, Any]]
    attempts_new: list[StartedAttempt]
    attempts_done: list[FinishedAttempt]
    inputs: list[StepInput]
    cache: list[CacheEntry]
    events: list[Event]
    run: RunUpdate | None = None
    touched: dict[str, StepSource] = field(default_factory=dict)  # rendered to `steps` once, by `render`

    @classmethod
    def new(cls) -> Batch:
        """An empty batch."""
        return cls({}, [], [], [], [], [], [], None)

    def update_run(self, update: RunUpdate) -> None:
        """Add ``update`` to the run's changes (a later update's fields win; the others stay)."""
        self.run = update if self.run is None else self.run.then(update)

    def absorb(self, later: Batch) -> None:
        """Append the changes of ``later``, a later round's batch, to this one (group commit: both are written in
        one transaction; a step's row is rendered from its latest state, the run's later fields win)."""
        self.steps.update(later.steps)
        self.touched.update(later.touched)
        self.new_steps += later.new_steps
        self.attempts_new += later.attempts_new
        self.attempts_done += later.attempts_done
        self.inputs += later.inputs
        self.cache += later.cache
        self.events += later.events
        if later.run is not None:
            self.update_run(later.run)

    def render(self, run_id: str) -> None:
        """Render the rows of the touched steps (once per round, however often a step changed in it)."""
        for step_id, source in self.touched.items():
            self.steps[step_id] = source.row(run_id)
        self.touched.clear()

    def __bool__(self) -> bool:
        return bool(self.steps or self.touched or self.new_steps or self.attempts_new or self.attempts_done
                    or self.inputs or self.cache or self.events or self.run)


class _Statements:
    """The round writer's statements, compiled once per dialect."""

    def __init__(self, engine: Engine) -> None:
        steps = pipeline_steps.c
        self.update_step = _Compiled(
            update(pipeline_steps).where(and_(steps.run_id == bindparam("k_run"), steps.step_id == bindparam("k_step")))
            .values({c: bindparam(c) for c in STEP_MUTABLE}), engine)
        self.insert_step = _Compiled(insert(pipeline_steps).values(
            {c.name: bindparam(c.name) for c in pipeline_steps.columns}), engine)
        self.insert_attempt = _Compiled(insert(pipeline_attempts).values(
            {c.name: bindparam(c.name) for c in pipeline_attempts.columns}), engine)
        att = pipeline_attempts.c
        self.finish_attempt = _Compiled(
            update(pipeline_attempts).where(and_(att.run_id == bindparam("k_run"), att.step_id == bindparam("k_step"),
                                                 att.attempt == bindparam("k_attempt")))
            .values({c: bindparam(c) for c in ATTEMPT_DONE}), engine)
        self.insert_input = _Compiled(insert(pipeline_inputs).values(
            {c.name: bindparam(c.name) for c in pipeline_inputs.columns}), engine)
        from sqlalchemy.dialects import postgresql, sqlite

        dialect_insert: Any = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        upsert_cache = dialect_insert(pipeline_cache).values(
            {c.name: bindparam(c.name) for c in pipeline_cache.columns})
        upsert_cache = upsert_cache.on_conflict_do_update(
            index_elements=["key"],
            set_={c.name: getattr(upsert_cache.excluded, c.name) for c in pipeline_cache.columns if c.name != "key"})
        self.upsert_cache = _Compiled(upsert_cache, engine)
        self.update_run = {}  # type: dict[tuple[str, ...], _Compiled]
        self.placeholder = "?" if engine.dialect.paramstyle == "qmark" else "%s"
        self.insert_event = SqlEventLog.INSERT_SQL.replace("?", self.placeholder)


_STATEMENTS: dict[tuple[str, str, str], _Statements] = {}


class RoundWriter:
    """Writes `Batch` es over one held connection, one transaction per batch (a round, or a group of rounds whose
    effects need not wait for the commit: see `capstan.pipelines.orchestrator`).

    The transaction is driven at the DB-API level (SQLite: ``BEGIN IMMEDIATE`` ... ``COMMIT`` on a connection in
    autocommit mode; PostgreSQL: the driver's implicit transaction and ``commit``): a round is a handful of
    ``executemany`` calls on pre-compiled statements and one commit.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._conn: Connection | None = None
        self._dbapi: Any = None
        key = (engine.dialect.name, str(engine.dialect.paramstyle), str(engine.dialect.server_version_info))
        if key not in _STATEMENTS:
            _STATEMENTS[key] = _Statements(engine)
        self._st = _STATEMENTS[key]
        self._sqlite = engine.dialect.name == "sqlite"
        self._in_tx = False
        self._events = SqlEventLog(engine)
        self._artifacts = SqlArtifactIndex(engine)  # the artifact index owns artifact_entries (cache hits check it)

    @property
    def conn(self) -> Connection:
        """The held connection."""
        if self._conn is None:
            self._conn = self._engine.connect()
            self._dbapi = self._conn.connection.dbapi_connection
            if self._sqlite:
                # Checkpointing copies the WAL into the database file and syncs it; done on every ~1000 pages it
                # would land inside some round. This connection checkpoints from `checkpoint` instead, off the
                # rounds' path (other connections keep the default).
                self._dbapi.execute("PRAGMA wal_autocheckpoint=0")
        return self._conn

    def close(self) -> None:
        """Return the connection to the pool."""
        if self._conn is not None:
            self.rollback()
            self._conn.close()
            self._conn = None
            self._dbapi = None

    def _cursor(self) -> Any:
        if self._dbapi is None:
            _ = self.conn
        return self._dbapi.cursor()

    def _read(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        """A read outside the round's transaction (SQLite autocommit: it takes no write lock)."""
        cursor = self._cursor()
        cursor.execute(sql, params)
        rows = cursor.fetchall()
        if not self._in_tx and not self._sqlite:
            self._dbapi.rollback()  # end PostgreSQL's implicit read transaction
        return list(rows)

    def cache_lookup(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Cache entries for ``keys``, and whether each entry's stored file still exists (``exists``)."""
        if not keys:
            return {}
        cols = ("key", "run_id", "step_id", "output_format", "output_inline", "output_path", "output_digest",
                "output_size")
        marks = ", ".join([self._st.placeholder] * len(keys))
        rows = self._read(
            "SELECT key, run_id, step_id, output_format, output_inline, output_path, output_digest, output_size "
            f"FROM pipeline_cache WHERE key IN ({marks})", tuple(keys))
        entries = [dict(zip(cols, row, strict=True)) for row in rows]
        stored = self._artifacts.existing([e["output_path"] for e in entries if e["output_path"] is not None])
        return {e["key"]: {**e, "exists": e["output_path"] is None or e["output_path"] in stored} for e in entries}

    def cancel_requested(self, run_id: str) -> bool:
        """Whether someone asked to cancel the run."""
        rows = self._read(f"SELECT cancel_requested FROM pipeline_runs WHERE id = {self._st.placeholder}",
                          (run_id,))
        return bool(rows and rows[0][0])

    def _update_run(self, cursor: Any, change: RunUpdate | Mapping[str, Any]) -> None:
        if isinstance(change, RunUpdate):
            run_id, values = change.run_id, change.values()
        else:  # a plain mapping of columns with the run's ``id``
            values = dict(change)
            run_id = values.pop("id")
        if not values:
            return
        columns = tuple(sorted(values))
        stmt = self._st.update_run.get(columns)
        if stmt is None:
            stmt = _Compiled(update(pipeline_runs).where(pipeline_runs.c.id == bindparam("k_id"))
                             .values({c: bindparam(c) for c in columns}), self._engine)
            self._st.update_run[columns] = stmt
        stmt.run(cursor, [{**values, "k_id": run_id}])

    def commit(self, batch: Batch) -> None:
        """Write ``batch`` in one transaction and commit it (its touched steps must have been rendered)."""
        if batch.touched:
            raise ValueError("Batch.render(run_id) renders the touched steps before the commit")
        st = self._st
        cursor = self._cursor()
        try:
            if self._sqlite:
                cursor.execute("BEGIN IMMEDIATE")
            self._in_tx = True
            st.insert_step.run(cursor, batch.new_steps)
            if batch.steps:
                st.update_step.run(cursor, list(batch.steps.values()))
            st.insert_attempt.run(cursor, batch.attempts_new)
            st.finish_attempt.run(cursor, batch.attempts_done)
            st.insert_input.run(cursor, batch.inputs)
            st.upsert_cache.run(cursor, batch.cache)
            if batch.events:
                cursor.executemany(st.insert_event, self._events.raw_rows(batch.events))
            if batch.run:
                self._update_run(cursor, batch.run)
            self._dbapi.commit()
        except BaseException:
            self.rollback()
            raise
        finally:
            self._in_tx = False

    def checkpoint(self) -> None:
        """Have committed WAL pages moved into the SQLite database file (PASSIVE: without waiting for readers), on
        the checkpoint thread of `capstan.pipelines.wal`, off the rounds' path."""
        path = self._engine.url.database if self._sqlite else None
        if path and path != ":memory:" and not path.startswith("file:"):
            from capstan.pipelines.wal import request_checkpoint

            request_checkpoint(path)

    def rollback(self) -> None:
        """Abandon an open transaction."""
        if self._dbapi is not None:
            import contextlib

            with contextlib.suppress(Exception):
                self._dbapi.rollback()
        self._in_tx = False


class PipelineStore:
    """Reads and the non-hot writes of the pipelines tables."""

    def __init__(self, engine: Engine, *, clock: Clock = system_clock) -> None:
        self.engine = engine
        self.clock = clock
        self._events = SqlEventLog(engine, clock=clock)

    # -- runs -------------------------------------------------------------------------------------------------
    def insert_run(self, conn: Connection, run: dict[str, Any], steps: Sequence[dict[str, Any]],
                   event: Event) -> None:
        """Insert a run with its steps and creation event inside ``conn``'s transaction."""
        conn.execute(insert(pipeline_runs), [run])
        if steps:
            conn.execute(insert(pipeline_steps), list(steps))
        self._events.append_within(conn, [event])

    def resolve_run_id(self, text: str) -> str:
        """A full run id from an id or a unique prefix of one."""
        text = text.strip()
        if not text or not all(ch in "0123456789abcdef" for ch in text.lower()):
            raise InvalidParameterValue(f"run id: {text!r} is not a run id")
        with self.engine.connect() as conn:
            if conn.execute(select(pipeline_runs.c.id).where(pipeline_runs.c.id == text)).first():
                return text
            rows = conn.execute(select(pipeline_runs.c.id).where(pipeline_runs.c.id.like(f"{text.lower()}%"))
                                .limit(2)).all()
        if not rows:
            raise ResourceDoesNotExist(f"pipeline run {text!r} does not exist")
        if len(rows) > 1:
            raise InvalidParameterValue(f"run id: {text!r} matches several runs; give more characters")
        return str(rows[0][0])

    def get_run(self, run_id: str) -> RunRecord:
        """One run; `ResourceDoesNotExist` when unknown."""
        with self.engine.connect() as conn:
            row = conn.execute(select(pipeline_runs).where(pipeline_runs.c.id == run_id)).first()
        if row is None:
            raise ResourceDoesNotExist(f"pipeline run {run_id!r} does not exist")
        return _run(row)

    def list_runs(self, *, status: str | None = None, project: str | None = None, limit: int = 50,
                  sources: Iterable[str] | None = None, name: str | None = None,
                  after: tuple[int, str] | None = None) -> list[RunRecord]:
        """Newest runs first (ties by id); ``name`` keeps one pipeline's runs, ``after`` (the ``(created_at, id)``
        of the last run of the previous page) starts the next page."""
        c = pipeline_runs.c
        query = select(pipeline_runs).order_by(c.created_at.desc(), c.id).limit(limit)
        if status is not None:
            query = query.where(c.status == status)
        if name is not None:
            query = query.where(c.name == name)
        if after is not None:
            query = query.where((c.created_at < after[0]) | ((c.created_at == after[0]) & (c.id > after[1])))
        if project is not None:
            query = query.where(pipeline_runs.c.project == project)
        if sources is not None:
            query = query.where(pipeline_runs.c.source.in_(list(sources)))
        with self.engine.connect() as conn:
            return [_run(r) for r in conn.execute(query)]

    def unfinished_runs(self, sources: Iterable[str] | None = None) -> list[RunRecord]:
        """Runs that are pending or running, oldest first."""
        query = select(pipeline_runs).where(pipeline_runs.c.status.in_(["pending", "running"])) \
            .order_by(pipeline_runs.c.created_at)
        if sources is not None:
            query = query.where(pipeline_runs.c.source.in_(list(sources)))
        with self.engine.connect() as conn:
            return [_run(r) for r in conn.execute(query)]

    def claim(self, run_id: str, expected: str | None, me: str) -> bool:
        """Become the run's orchestrator if it is still ``expected`` (compare-and-set)."""
        col = pipeline_runs.c.orchestrator
        cond = col.is_(None) if expected is None else col == expected
        with self.engine.begin() as conn:
            result = conn.execute(update(pipeline_runs).where(pipeline_runs.c.id == run_id, cond)
                                  .values(orchestrator=me, heartbeat_at=self.clock()))
        return bool(result.rowcount)

    def request_cancel(self, run_id: str) -> None:
        """Ask the run's orchestrator to cancel it."""
        with self.engine.begin() as conn:
            conn.execute(update(pipeline_runs).where(pipeline_runs.c.id == run_id).values(cancel_requested=True))

    # -- steps and attempts -----------------------------------------------------------------------------------
    def steps(self, run_id: str, project: str) -> list[StepRecord]:
        """Every step of a run in DAG order (map children after their map node)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(pipeline_steps).where(pipeline_steps.c.run_id == run_id)
                                .order_by(pipeline_steps.c.seq, pipeline_steps.c.map_index)).all()
        return [step_record(r, project) for r in rows]

    def attempts(self, run_id: str, step_id: str | None = None) -> list[AttemptRecord]:
        """Attempts of a run (or of one step), in order."""
        query = select(pipeline_attempts).where(pipeline_attempts.c.run_id == run_id) \
            .order_by(pipeline_attempts.c.step_id, pipeline_attempts.c.attempt)
        if step_id is not None:
            query = query.where(pipeline_attempts.c.step_id == step_id)
        with self.engine.connect() as conn:
            return [_attempt(r) for r in conn.execute(query)]

    def inputs(self, run_id: str) -> list[dict[str, Any]]:
        """Lineage edges consumed by a run's steps."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(pipeline_inputs).where(pipeline_inputs.c.run_id == run_id)).all()
        names = [str(c.name) for c in pipeline_inputs.columns]
        return [dict(zip(names, r, strict=True)) for r in rows]

    def artifact_lineage(self, key: str) -> dict[str, Any]:
        """Who produced the output with digest (or artifact path) ``key``, and which runs consumed it."""
        s, i = pipeline_steps.c, pipeline_inputs.c
        with self.engine.connect() as conn:
            produced = conn.execute(select(s.run_id, s.step_id, s.output_format, s.output_path, s.output_digest,
                                           s.cached_from, s.finished_at)
                                    .where((s.output_digest == key) | (s.output_path == key))).all()
            digests = {r.output_digest for r in produced} or {key}
            consumed = conn.execute(select(i.run_id, i.step_id, i.source_run, i.source_step, i.digest)
                                    .where(i.digest.in_(list(digests)))).all()
        return {"key": key,
                "produced_by": [{"run_id": r.run_id, "step": r.step_id, "format": r.output_format,
                                 "path": r.output_path, "digest": r.output_digest, "cached_from": r.cached_from,
                                 "finished_at": r.finished_at} for r in produced],
                "consumed_by": [{"run_id": r.run_id, "step": r.step_id, "source_run": r.source_run,
                                 "source_step": r.source_step, "digest": r.digest} for r in consumed]}

    # -- schedules --------------------------------------------------------------------------------------------
    def create_schedule(self, record: ScheduleRecord) -> None:
        """Store a new schedule; `ResourceAlreadyExists` when the name is taken."""
        with self.engine.begin() as conn:
            if conn.execute(select(pipeline_schedules.c.name).where(pipeline_schedules.c.name == record.name)).first():
                raise ResourceAlreadyExists(f"schedule {record.name!r} already exists")
            conn.execute(insert(pipeline_schedules).values(
                name=record.name, project=record.project, pipeline_ref=record.pipeline_ref, cron=record.cron,
                params=orjson.dumps(record.params).decode(), catchup=record.catchup, created_at=record.created_at,
                last_slot=record.last_slot))

    def schedules(self) -> list[ScheduleRecord]:
        """Every schedule by name."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(pipeline_schedules).order_by(pipeline_schedules.c.name)).all()
        return [ScheduleRecord(r.name, r.project, r.pipeline_ref, r.cron, orjson.loads(r.params), bool(r.catchup),
                               r.created_at, r.last_slot) for r in rows]

    def get_schedule(self, name: str) -> ScheduleRecord:
        """One schedule; `ResourceDoesNotExist` when unknown."""
        for record in self.schedules():
            if record.name == name:
                return record
        raise ResourceDoesNotExist(f"schedule {name!r} does not exist")

    def delete_schedule(self, name: str) -> None:
        """Remove a schedule (runs it started stay)."""
        with self.engine.begin() as conn:
            result = conn.execute(delete(pipeline_schedules).where(pipeline_schedules.c.name == name))
            if not result.rowcount:
                raise ResourceDoesNotExist(f"schedule {name!r} does not exist")
            conn.execute(delete(pipeline_schedule_slots).where(pipeline_schedule_slots.c.schedule == name))

    def slots(self, name: str) -> list[tuple[int, str]]:
        """(slot, run id) pairs started for a schedule, oldest first."""
        c = pipeline_schedule_slots.c
        with self.engine.connect() as conn:
            rows = conn.execute(select(c.slot, c.run_id).where(c.schedule == name).order_by(c.slot)).all()
        return [(int(r.slot), str(r.run_id)) for r in rows]

    def claim_slot(self, conn: Connection, schedule: str, slot: int, run_id: str) -> bool:
        """Record that ``slot`` of ``schedule`` starts ``run_id``; False when the slot was already started."""
        c = pipeline_schedule_slots.c
        if conn.execute(select(c.run_id).where(c.schedule == schedule, c.slot == slot)).first():
            return False
        conn.execute(insert(pipeline_schedule_slots).values(schedule=schedule, slot=slot, run_id=run_id,
                                                            created_at=self.clock()))
        return True

    def set_last_slot(self, conn: Connection, schedule: str, slot: int) -> None:
        """Move a schedule's watermark forward (never back)."""
        c = pipeline_schedules.c
        conn.execute(update(pipeline_schedules)
                     .where(c.name == schedule, (c.last_slot.is_(None)) | (c.last_slot < slot))
                     .values(last_slot=slot))
