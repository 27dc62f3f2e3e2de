"""SQL adapter of `capstan.training.ports.JobStore` (SQLite and PostgreSQL), over the tables ``jobs`` and
``job_attempts`` of `capstan.store.schema` (migrations 0700, 0970 for each attempt's per-rank peak memory as a
JSON list, and 0990 for the owner's heartbeat).

It lives beside the port rather than in `capstan.store` (as `capstan.serving.deployments_sql` does) because the store
package may not import `capstan.resources`, which the spec's quantities come from.

The spec is stored as its ``to_dict()`` JSON and read back with `parse_job_spec`, so a stored job always holds a
valid spec. Every check-then-write (the compare-and-set of `update`, the cancel of an unheld pending job, `claim`)
is one ``UPDATE ... WHERE`` on the values read, so two writers never both win.

A job's ``owner`` is ``host:pid`` (`owner_id`), and ``heartbeat_ms`` (migration 0990) is when that runner last
renewed its hold (`SqlJobStore.heartbeat`, every `HEARTBEAT_INTERVAL_MS` while it runs the job). Whether the owner
is alive is decided by `owner_alive`: on this host, whether its process exists (exact, and at once after a crash);
on another host, whose processes cannot be probed from here, whether its heartbeat is younger than
`OWNER_LEASE_MS`. A job whose owner is dead may be claimed by another runner: `claim` is one conditional ``UPDATE``
on the owner and heartbeat it read, so of two runners that both find the same owner dead only one takes the job,
and an owner that renewed meanwhile keeps it.
"""

from __future__ import annotations

import builtins
import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Engine, and_, insert, literal, or_, select, update
from sqlalchemy.exc import IntegrityError

from capstan.clock import Clock, system_clock
from capstan.errors import ResourceAlreadyExists, ResourceDoesNotExist
from capstan.store.schema import job_attempts, jobs
from capstan.training.ports import TERMINAL_STATES, JobAttempt, JobRecord
from capstan.training.spec import parse_job_spec

__all__ = ["HEARTBEAT_INTERVAL_MS", "OWNER_LEASE_MS", "SqlJobStore", "owner_alive", "owner_id", "pid_exists"]


HEARTBEAT_INTERVAL_MS = 1_000
"""How often a runner renews its hold on each job it runs (`SqlJobStore.heartbeat`)."""
OWNER_LEASE_MS = 5_000
"""How old the heartbeat of a runner on another host may get before that runner counts as dead and its job may be
claimed: five renewals, so a runner that misses a few (a slow database, a long pause) keeps its job."""


def owner_id(pid: int | None = None) -> str:
    """The owner string of a runner in this process (or of ``pid`` on this host): ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"


def pid_exists(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (under any user)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def owner_alive(owner: str, heartbeat_ms: int | None, *, now_ms: int, this_host: str,
                process_exists: Callable[[int], bool], lease_ms: int = OWNER_LEASE_MS) -> bool:
    """Whether the runner ``owner`` (``host:pid``) holds its job still, seen from a process on ``this_host`` at
    ``now_ms``: on this host, whether ``process_exists(pid)``; on another host, whether its last heartbeat
    (``heartbeat_ms``) is younger than ``lease_ms``. No heartbeat at all is no proof of life. Decides from its
    arguments only (the caller reads the clock and probes processes)."""
    host, _, pid_text = owner.rpartition(":")
    if host == this_host:
        try:
            pid = int(pid_text)
        except ValueError:
            return False
        return pid > 0 and process_exists(pid)
    return heartbeat_ms is not None and now_ms - heartbeat_ms < lease_ms


def _beat_is(beat: int | None) -> ColumnElement[bool]:
    return jobs.c.heartbeat_ms.is_(None) if beat is None else jobs.c.heartbeat_ms == beat


def _owner_is(owner: str | None) -> ColumnElement[bool]:
    return jobs.c.owner.is_(None) if owner is None else jobs.c.owner == owner


def _job_row(record: JobRecord) -> dict[str, Any]:
    return {"id": record.id, "project": record.project, "name": record.spec.name, "user": record.user,
            "spec": orjson.dumps(record.spec.to_dict()).decode(), "state": record.state, "run_id": record.run_id,
            "workload": record.workload, "attempt": record.attempt, "restarts": record.restarts,
            "preemptions": record.preemptions, "reason": record.reason, "message": record.message,
            "created_ms": record.created_ms, "started_ms": record.started_ms, "ended_ms": record.ended_ms,
            "cancel_requested": record.cancel_requested, "owner": record.owner}


def _job(row: Any) -> JobRecord:  # row: a RowMapping
    return JobRecord(
        id=row["id"], project=row["project"], spec=parse_job_spec(orjson.loads(row["spec"])), state=row["state"],
        created_ms=row["created_ms"], user=row["user"], run_id=row["run_id"], workload=row["workload"],
        attempt=row["attempt"], restarts=row["restarts"], preemptions=row["preemptions"], reason=row["reason"],
        message=row["message"], started_ms=row["started_ms"], ended_ms=row["ended_ms"],
        cancel_requested=bool(row["cancel_requested"]), owner=row["owner"])


def _peaks_text(peaks: tuple[int | None, ...]) -> str | None:
    return orjson.dumps(list(peaks)).decode() if peaks else None


def _peaks(text: str | None) -> tuple[int | None, ...]:
    if not text:
        return ()
    values = orjson.loads(text)
    return tuple(int(v) if isinstance(v, int) else None for v in values) if isinstance(values, list) else ()


def _attempt(row: Any) -> JobAttempt:
    return JobAttempt(job_id=row["job_id"], number=row["number"], started_ms=row["started_ms"],
                      master_port=row["master_port"], log_dir=row["log_dir"], ended_ms=row["ended_ms"],
                      reason=row["reason"], rank=row["rank"], exit_code=row["exit_code"], message=row["message"],
                      rank_peak_memory=_peaks(row["rank_peak_memory"]))


class SqlJobStore:
    """`JobStore` over the metadata store's ``jobs`` and ``job_attempts`` tables. ``lease_ms``: see
    `OWNER_LEASE_MS`."""

    def __init__(self, engine: Engine, *, clock: Clock = system_clock, lease_ms: int = OWNER_LEASE_MS) -> None:
        self._engine = engine
        self._clock = clock
        self._lease_ms = lease_ms

    def _alive(self, owner: str, heartbeat_ms: int | None, now_ms: int) -> bool:
        return owner_alive(owner, heartbeat_ms, now_ms=now_ms, this_host=socket.gethostname(),
                           process_exists=pid_exists, lease_ms=self._lease_ms)

    def create(self, record: JobRecord) -> JobRecord:
        """Store a new job (held by ``record.owner`` from now when it names one); `ResourceAlreadyExists` when its
        id is taken."""
        beat = None if record.owner is None else self._clock()
        try:
            with self._engine.begin() as conn:
                conn.execute(insert(jobs).values(**_job_row(record), heartbeat_ms=beat))
        except IntegrityError:
            raise ResourceAlreadyExists(f"job {record.id!r} already exists") from None
        return record

    def get(self, job_id: str) -> JobRecord | None:
        """The job, or None."""
        with self._engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().first()
        return None if row is None else _job(row)

    def list(self, *, project: str | None = None, states: Sequence[str] = (), limit: int = 100,
             offset: int = 0) -> list[JobRecord]:
        """Jobs, newest first (by creation time, then id), optionally of one project and in some states, from the
        ``offset``-th on."""
        query = (select(jobs).order_by(jobs.c.created_ms.desc(), jobs.c.id.desc()).limit(max(limit, 0))
                 .offset(max(offset, 0)))
        if project is not None:
            query = query.where(jobs.c.project == project)
        if states:
            query = query.where(jobs.c.state.in_(list(states)))
        with self._engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [_job(r) for r in rows]

    def update(self, record: JobRecord, *, expected_state: str | None = None, holder: str | None = None) -> bool:
        """Replace the stored job with ``record``; with ``expected_state`` only while the stored state is that one,
        with ``holder`` only while that runner holds the job (a runner that was taken over writes nothing). A
        write that keeps an owner renews its heartbeat. The id and project never change; returns whether the row
        was written."""
        row = _job_row(record)
        del row["id"], row["project"], row["created_ms"]
        # A cancel is never undone by a writer that read the job before the cancel landed: the flag only goes up.
        row["cancel_requested"] = or_(jobs.c.cancel_requested, literal(bool(record.cancel_requested)))
        row["heartbeat_ms"] = None if record.owner is None else self._clock()
        guard = jobs.c.id == record.id
        if expected_state is not None:
            guard = and_(guard, jobs.c.state == expected_state)
        if holder is not None:
            guard = and_(guard, jobs.c.owner == holder)
        with self._engine.begin() as conn:
            return bool(conn.execute(update(jobs).where(guard).values(**row)).rowcount == 1)

    def request_cancel(self, job_id: str) -> JobRecord | None:
        """Set ``cancel_requested``. A pending job that no live runner holds is cancelled at once (its runner would
        never read the flag); a job that has ended is returned unchanged."""
        now = self._clock()
        with self._engine.begin() as conn:
            row = conn.execute(select(jobs.c.state, jobs.c.owner, jobs.c.heartbeat_ms)
                               .where(jobs.c.id == job_id)).first()
            if row is None:
                return None
            state, owner, beat = row
            if state not in TERMINAL_STATES:
                values: dict[str, Any] = {"cancel_requested": True}
                unheld = owner is None or not self._alive(owner, beat, now)
                if state == "Pending" and unheld:
                    values.update(state="Cancelled", reason="Cancelled", ended_ms=now, owner=None,
                                  heartbeat_ms=None, message="cancelled before it started")
                guard = [jobs.c.id == job_id, jobs.c.state == state, _owner_is(owner), _beat_is(beat)]
                if conn.execute(update(jobs).where(*guard).values(**values)).rowcount != 1:
                    # The job moved on between the read and the write (a runner claimed or started it): only flag it.
                    conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.state.not_in(list(TERMINAL_STATES)))
                                 .values(cancel_requested=True))
        return self.get(job_id)

    def claim(self, job_id: str, owner: str) -> bool:
        """Make ``owner`` the job's runner when no live runner holds it (none, ``owner`` itself, a dead process on
        this host, or a runner on another host whose heartbeat is older than the lease); whether ``owner`` now
        holds it. A job that has ended is never claimed.

        The owner and heartbeat are read first, without a lock; the claim is then one ``UPDATE`` conditional on
        both being unchanged, so of several claimers that found the same dead owner exactly one wins, and an owner
        that renewed its heartbeat in between keeps the job."""
        with self._engine.connect() as conn:
            row = conn.execute(select(jobs.c.state, jobs.c.owner, jobs.c.heartbeat_ms)
                               .where(jobs.c.id == job_id)).first()
        if row is None or row[0] in TERMINAL_STATES:
            return False
        current, beat = row[1], row[2]
        if current == owner:
            return True
        now = self._clock()
        if current is not None and self._alive(current, beat, now):
            return False
        with self._engine.begin() as conn:
            changed = conn.execute(update(jobs).where(jobs.c.id == job_id, _owner_is(current), _beat_is(beat),
                                                      jobs.c.state.not_in(list(TERMINAL_STATES)))
                                   .values(owner=owner, heartbeat_ms=now)).rowcount
        return bool(changed == 1)

    def heartbeat(self, job_id: str, owner: str) -> bool:
        """Renew ``owner``'s hold on the job (its heartbeat is now); False when ``owner`` no longer holds it
        (another runner took it over, or it was handed back or deleted)."""
        now = self._clock()
        with self._engine.begin() as conn:
            changed = conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.owner == owner)
                                   .values(heartbeat_ms=now)).rowcount
        return bool(changed == 1)

    def add_attempt(self, attempt: JobAttempt) -> None:
        """Record the start of an attempt; `ResourceAlreadyExists` when that number is already recorded."""
        try:
            with self._engine.begin() as conn:
                conn.execute(insert(job_attempts).values(
                    job_id=attempt.job_id, number=attempt.number, started_ms=attempt.started_ms,
                    ended_ms=attempt.ended_ms, master_port=attempt.master_port, log_dir=attempt.log_dir,
                    reason=attempt.reason, rank=attempt.rank, exit_code=attempt.exit_code, message=attempt.message,
                    rank_peak_memory=_peaks_text(attempt.rank_peak_memory)))
        except IntegrityError:
            raise ResourceAlreadyExists(f"attempt {attempt.number} of job {attempt.job_id!r} already exists") from None

    def end_attempt(self, attempt: JobAttempt) -> None:
        """Record how an attempt ended (same job id and number); `ResourceDoesNotExist` when it was never added."""
        with self._engine.begin() as conn:
            changed = conn.execute(update(job_attempts).where(
                job_attempts.c.job_id == attempt.job_id, job_attempts.c.number == attempt.number).values(
                ended_ms=attempt.ended_ms, reason=attempt.reason, rank=attempt.rank, exit_code=attempt.exit_code,
                message=attempt.message, rank_peak_memory=_peaks_text(attempt.rank_peak_memory))).rowcount
        if changed != 1:
            raise ResourceDoesNotExist(f"attempt {attempt.number} of job {attempt.job_id!r} does not exist")

    def attempts(self, job_id: str) -> builtins.list[JobAttempt]:
        """The job's attempts, first first."""
        with self._engine.connect() as conn:
            rows = conn.execute(select(job_attempts).where(job_attempts.c.job_id == job_id)
                                .order_by(job_attempts.c.number)).mappings().all()
        return [_attempt(r) for r in rows]
