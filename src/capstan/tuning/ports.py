"""The joints of hyperparameter studies: the records the controller writes and the CLI and API read, and the store.

A study (`StudyRecord`) is ``Running`` while a controller works on it, then ``Succeeded`` (its trials ran: the
trial limit was reached or the grid was done), ``Failed`` (too many trials failed, or the queue can never admit its
trials) or ``Stopped`` (interrupted: Ctrl-C). A study whose controller was killed stays ``Running`` with the dead
controller as ``owner``; running it again resumes it.

A trial (`TrialRecord`) is ``WAITING`` while the queue has not admitted it (it has no parameters yet: the sampler
picks them when it starts, with what the trials before it taught), then ``RUNNING`` and ``COMPLETE``, ``PRUNED``
(stopped early by the pruner: a normal outcome, not a failure) or ``FAILED``. ``attempts`` counts starts: a trial
that was running when its controller died is re-run once with the same parameters.

The SQL adapter is `capstan.store.studies_sql.SqlStudyStore`; its contract test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from capstan.tuning.spec import StudySpec

__all__ = ["FINISHED_TRIAL_STATES", "StudyRecord", "StudyResult", "StudyState", "StudyStore", "TrialRecord",
           "TrialState"]

StudyState = Literal["Running", "Succeeded", "Failed", "Stopped"]
TrialState = Literal["WAITING", "RUNNING", "COMPLETE", "PRUNED", "FAILED"]
FINISHED_TRIAL_STATES: frozenset[str] = frozenset({"COMPLETE", "PRUNED", "FAILED"})


@dataclass(frozen=True, slots=True)
class StudyRecord:
    """One study as stored. ``parent_run_id`` is the tracking run whose children are the trials' runs; ``owner``
    is the controller working on it (``host:pid``); ``reason``/``message`` say why it ended. Times are epoch ms."""

    project: str
    name: str
    spec: StudySpec
    state: StudyState
    created_ms: int
    updated_ms: int
    reason: str = ""
    message: str = ""
    parent_run_id: str | None = None
    owner: str | None = None
    user: str = ""
    ended_ms: int | None = None

    @property
    def done(self) -> bool:
        """True once the study has ended."""
        return self.state != "Running"


@dataclass(frozen=True, slots=True)
class TrialRecord:
    """One trial as stored. ``value`` is the objective's final value (COMPLETE; a PRUNED trial's last reported
    one); ``metrics`` the final values of the study's metrics; ``intermediate`` the ``(step, value)`` pairs it
    reported; ``system_attrs`` the sampler's and pruner's notes about it (Optuna's, kept so a resumed study goes on
    where it was); ``workload`` the queue workload that held its quota; ``message`` why it failed or was re-run."""

    project: str
    study: str
    number: int
    state: TrialState
    started_ms: int
    params: Mapping[str, Any] = field(default_factory=dict)
    value: float | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    intermediate: tuple[tuple[int, float], ...] = ()
    system_attrs: Mapping[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    workload: str | None = None
    attempts: int = 1
    pid: int | None = None
    ended_ms: int | None = None
    message: str = ""

    @property
    def finished(self) -> bool:
        """True once the trial has ended (COMPLETE, PRUNED or FAILED)."""
        return self.state in FINISHED_TRIAL_STATES

    @property
    def duration_ms(self) -> int | None:
        """How long the trial ran, once it has ended."""
        return None if self.ended_ms is None else self.ended_ms - self.started_ms

    def to_dict(self) -> dict[str, Any]:
        """The trial as plain JSON-able data (the API's and ``--json``'s shape)."""
        return {"number": self.number, "state": self.state, "params": dict(self.params), "value": self.value,
                "metrics": dict(self.metrics), "intermediate": [list(p) for p in self.intermediate],
                "run_id": self.run_id, "workload": self.workload, "attempts": self.attempts,
                "started_ms": self.started_ms, "ended_ms": self.ended_ms, "message": self.message}


class StudyStore(Protocol):
    """Where studies and their trials are kept."""

    def create(self, record: StudyRecord) -> StudyRecord:
        """Store a new study; `ResourceAlreadyExists` when the project already has one of that name."""
        ...

    def get(self, project: str, name: str) -> StudyRecord | None:
        """The study, or None."""
        ...

    def list(self, *, project: str | None = None, limit: int = 100) -> builtins.list[StudyRecord]:
        """Studies, newest first, optionally of one project."""
        ...

    def update(self, record: StudyRecord) -> None:
        """Replace the stored study with ``record`` (same project and name); `ResourceDoesNotExist` if missing."""
        ...

    def claim(self, project: str, name: str, owner: str) -> bool:
        """Make ``owner`` (``host:pid``) the study's controller unless a live one holds it (none, ``owner`` itself
        or a dead process: it is taken over). Returns whether ``owner`` now holds it."""
        ...

    def put_trial(self, trial: TrialRecord) -> None:
        """Insert or replace the trial (same project, study and number)."""
        ...

    def delete_trial(self, project: str, study: str, number: int) -> None:
        """Forget a trial that never started (a WAITING one when its study ends)."""
        ...

    def trials(self, project: str, study: str) -> builtins.list[TrialRecord]:
        """The study's trials, by number."""
        ...


@dataclass(frozen=True, slots=True)
class StudyResult:
    """A study and its trials, as `capstan.Study.run` and ``capstan tune`` return them."""

    study: StudyRecord
    trials: tuple[TrialRecord, ...]

    @property
    def best_trial(self) -> TrialRecord | None:
        """The COMPLETE trial with the best objective value (the lowest number among equals), or None."""
        from capstan.tuning.outcomes import best_trial

        return best_trial(self.trials, self.study.spec.objective.goal)

    @property
    def state(self) -> StudyState:
        """The study's state."""
        return self.study.state

    def count(self, state: str) -> int:
        """How many trials are in ``state``."""
        return sum(1 for t in self.trials if t.state == state)

    def to_dict(self, *, trials: bool = True) -> dict[str, Any]:
        """The study as plain JSON-able data (``capstan studies show --json`` and ``/api/v1/studies``): its state,
        spec, counts of trials by state, best trial and (with ``trials``) every trial."""
        study, best = self.study, self.best_trial
        out: dict[str, Any] = {
            "name": study.name, "project": study.project, "state": study.state, "reason": study.reason,
            "message": study.message, "parent_run_id": study.parent_run_id, "user": study.user,
            "created_ms": study.created_ms, "updated_ms": study.updated_ms, "ended_ms": study.ended_ms,
            "spec": study.spec.to_dict(),
            "counts": {s: self.count(s) for s in ("WAITING", "RUNNING", "COMPLETE", "PRUNED", "FAILED")},
            "best_trial": best.to_dict() if best is not None else None,
        }
        if trials:
            out["trials"] = [t.to_dict() for t in self.trials]
        return out
