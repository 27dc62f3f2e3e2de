"""The joints of training jobs: the records the runner writes and the CLI, API and UI read, and the store port.

A job (`JobRecord`) goes ``Pending`` (waiting for the queue to admit its whole gang) → ``Running`` → ``Succeeded``,
``Failed`` or ``Cancelled``; between attempts it is ``Restarting`` (a worker failed and restarts are left, or the
queue preempted it). Each start of the gang is a `JobAttempt`: its number, the port rank 0 listened on, when it
ran, and how it ended (``reason``: ``Succeeded``, ``WorkerFailed``, ``OOMKilled``, ``Preempted``, ``NodeLost``,
``Cancelled``), with the first failing rank and its exit code.

The SQL adapter is `capstan.training.jobs_sql.SqlJobStore`; its contract test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from capstan.training.spec import TrainingJobSpec

__all__ = ["ACTIVE_STATES", "TERMINAL_STATES", "AttemptReason", "JobAttempt", "JobRecord", "JobState", "JobStore"]

JobState = Literal["Pending", "Running", "Restarting", "Succeeded", "Failed", "Cancelled"]
TERMINAL_STATES: frozenset[str] = frozenset({"Succeeded", "Failed", "Cancelled"})
ACTIVE_STATES: frozenset[str] = frozenset({"Pending", "Running", "Restarting"})

AttemptReason = Literal["Succeeded", "WorkerFailed", "OOMKilled", "Preempted", "NodeLost", "Cancelled"]


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One training job as stored.

    ``id`` is ``<name>-<6 hex>``; ``run_id`` the tracking run rank 0 logs to; ``workload`` the queue workload that
    holds its quota while admitted; ``restarts`` counts failure restarts (against ``spec.max_restarts``),
    ``preemptions`` restarts after preemption; ``reason``/``message`` explain the state (a `Waiting` reason while
    pending, the failing rank and exit code when failed); ``cancel_requested`` is set by ``capstan jobs cancel`` and
    read by the runner; ``owner`` is the runner holding the job (``host:pid``), so a second runner never starts it.
    Times are epoch milliseconds.
    """

    id: str
    project: str
    spec: TrainingJobSpec
    state: JobState
    created_ms: int
    user: str = ""
    run_id: str | None = None
    workload: str | None = None
    attempt: int = 0
    restarts: int = 0
    preemptions: int = 0
    reason: str = ""
    message: str = ""
    started_ms: int | None = None
    ended_ms: int | None = None
    cancel_requested: bool = False
    owner: str | None = None

    @property
    def done(self) -> bool:
        """True once the job has ended."""
        return self.state in TERMINAL_STATES


@dataclass(frozen=True, slots=True)
class JobAttempt:
    """One start of the whole gang. ``rank``/``exit_code``: the first worker process that failed (None when none
    did); ``master_port``: the rendezvous port of this attempt; ``log_dir``: where its workers' logs are;
    ``rank_peak_memory``: each rank's peak resident memory in bytes once the attempt has ended (index = rank; None
    for a process whose usage could not be read; empty while it runs and for attempts recorded before peaks were)."""

    job_id: str
    number: int
    started_ms: int
    master_port: int
    log_dir: str
    ended_ms: int | None = None
    reason: AttemptReason | None = None
    rank: int | None = None
    exit_code: int | None = None
    message: str = ""
    rank_peak_memory: tuple[int | None, ...] = ()

    @property
    def peak_memory(self) -> int | None:
        """The largest rank's peak resident memory (bytes), or None when none was recorded."""
        known = [p for p in self.rank_peak_memory if p is not None]
        return max(known) if known else None

    @property
    def peak_rank(self) -> int | None:
        """The rank whose peak is `peak_memory` (the lowest such rank)."""
        peak = self.peak_memory
        return None if peak is None else self.rank_peak_memory.index(peak)


class JobStore(Protocol):
    """Where jobs and their attempts are kept."""

    def create(self, record: JobRecord) -> JobRecord:
        """Store a new job; `ResourceAlreadyExists` when its id is taken."""
        ...

    def get(self, job_id: str) -> JobRecord | None:
        """The job, or None."""
        ...

    def list(self, *, project: str | None = None, states: Sequence[str] = (), limit: int = 100,
             offset: int = 0) -> list[JobRecord]:
        """Jobs, newest first, optionally of one project and in some states; ``offset`` skips that many first."""
        ...

    def update(self, record: JobRecord, *, expected_state: str | None = None, holder: str | None = None) -> bool:
        """Replace the stored job with ``record`` (same id). With ``expected_state`` only when the stored state is
        still that one (compare-and-set), with ``holder`` only while that runner holds the job; returns whether it
        was written."""
        ...

    def request_cancel(self, job_id: str) -> JobRecord | None:
        """Set ``cancel_requested`` (a pending job that no runner holds is cancelled at once); the job or None."""
        ...

    def claim(self, job_id: str, owner: str) -> bool:
        """Make ``owner`` the job's runner when no live runner holds it; whether this owner now holds it."""
        ...

    def heartbeat(self, job_id: str, owner: str) -> bool:
        """Renew ``owner``'s hold on the job; False when ``owner`` no longer holds it."""
        ...

    def add_attempt(self, attempt: JobAttempt) -> None:
        """Record the start of an attempt."""
        ...

    def end_attempt(self, attempt: JobAttempt) -> None:
        """Record how an attempt ended (same job id and number)."""
        ...

    def attempts(self, job_id: str) -> builtins.list[JobAttempt]:
        """The job's attempts, first first."""
        ...
