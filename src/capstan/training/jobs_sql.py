"""SQL adapter of `capstan.training.ports.JobStore` (SQLite and PostgreSQL), over the tables ``jobs`` and
``job_attempts`` of `capstan.store.schema` (migrations 0700 and 0970, each attempt's per-rank peak memory as a
JSON list).

It lives beside the port rather than in `capstan.store` (as `capstan.serving.deployments_sql` does) because the store
package may not import `capstan.resources`, which the spec's quantities come from.

The spec is stored as its ``to_dict()`` JSON and read back with `parse_job_spec`, so a stored job always holds a
valid spec. Every check-then-write (the compare-and-set of `update`, the cancel of an unheld pending job, `claim`)
is one ``UPDATE ... WHERE`` on the values read, so two writers never both win.

A job's ``owner`` is ``host:pid`` (`owner_id`). An owner on this host whose process has gone is dead and its job may
be claimed by another runner; an owner on another host is taken to be alive (its process cannot be probed from
here).
"""

from __future__ import annotations

import builtins
import os
import socket
from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import Engine, and_, insert, literal, or_, select, update
from sqlalchemy.exc import IntegrityError

from capstan.clock import Clock, system_clock
from capstan.errors import ResourceAlreadyExists, ResourceDoesNotExist
from capstan.store.schema import job_attempts, jobs
from capstan.training.ports import TERMINAL_STATES, JobAttempt, JobRecord
from capstan.training.spec import parse_job_spec

__all__ = ["SqlJobStore", "owner_alive", "owner_id"]


def owner_id(pid: int | None = None) -> str:
    """The owner string of a runner in this process (or of ``pid`` on this host): ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"


def owner_alive(owner: str) -> bool:
    """Whether the runner ``owner`` (``host:pid``) may still be running: its process exists on this host, or it is
    on another host (which cannot be probed from here)."""
    host, _, pid_text = owner.rpartition(":")
    if host != socket.gethostname():
        return True
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


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
    """`JobStore` over the metadata store's ``jobs`` and ``job_attempts`` tables."""

    def __init__(self, engine: Engine, *, clock: Clock = system_clock) -> None:
        self._engine = engine
        self._clock = clock

    def create(self, record: JobRecord) -> JobRecord:
        """Store a new job; `ResourceAlreadyExists` when its id is taken."""
        try:
            with self._engine.begin() as conn:
                conn.execute(insert(jobs).values(**_job_row(record)))
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

    def update(self, record: JobRecord, *, expected_state: str | None = None) -> bool:
        """Replace the stored job with ``record``; with ``expected_state`` only while the stored state is that one.
        The id and project never change; returns whether the row was written."""
        row = _job_row(record)
        del row["id"], row["project"], row["created_ms"]
        # A cancel is never undone by a writer that read the job before the cancel landed: the flag only goes up.
        row["cancel_requested"] = or_(jobs.c.cancel_requested, literal(bool(record.cancel_requested)))
        guard = jobs.c.id == record.id
        if expected_state is not None:
            guard = and_(guard, jobs.c.state == expected_state)
        with self._engine.begin() as conn:
            return bool(conn.execute(update(jobs).where(guard).values(**row)).rowcount == 1)

    def request_cancel(self, job_id: str) -> JobRecord | None:
        """Set ``cancel_requested``. A pending job that no live runner holds is cancelled at once (its runner would
        never read the flag); a job that has ended is returned unchanged."""
        with self._engine.begin() as conn:
            row = conn.execute(select(jobs.c.state, jobs.c.owner).where(jobs.c.id == job_id)).first()
            if row is None:
                return None
            state, owner = row
            if state not in TERMINAL_STATES:
                values: dict[str, Any] = {"cancel_requested": True}
                unheld = owner is None or not owner_alive(owner)
                if state == "Pending" and unheld:
                    values.update(state="Cancelled", reason="Cancelled", ended_ms=self._clock(), owner=None,
                                  message="cancelled before it started")
                guard = [jobs.c.id == job_id, jobs.c.state == state]
                guard.append(jobs.c.owner.is_(None) if owner is None else jobs.c.owner == owner)
                if conn.execute(update(jobs).where(*guard).values(**values)).rowcount != 1:
                    # The job moved on between the read and the write (a runner claimed or started it): only flag it.
                    conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.state.not_in(list(TERMINAL_STATES)))
                                 .values(cancel_requested=True))
        return self.get(job_id)

    def claim(self, job_id: str, owner: str) -> bool:
        """Make ``owner`` the job's runner when no live runner holds it (none, ``owner`` itself, or a dead process on
        this host); whether ``owner`` now holds it. A job that has ended is never claimed."""
        with self._engine.begin() as conn:
            row = conn.execute(select(jobs.c.state, jobs.c.owner).where(jobs.c.id == job_id)).first()
            if row is None or row[0] in TERMINAL_STATES:
                return False
            current = row[1]
            if current == owner:
                return True
            if current is not None and owner_alive(current):
                return False
            held = jobs.c.owner.is_(None) if current is None else jobs.c.owner == current
            changed = conn.execute(update(jobs).where(jobs.c.id == job_id, held,
                                                      jobs.c.state.not_in(list(TERMINAL_STATES)))
                                   .values(owner=owner)).rowcount
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
