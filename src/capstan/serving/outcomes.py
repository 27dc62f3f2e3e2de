"""What happened to each request a deployment's router answered: the `Outcome` record and the `OutcomeStore` port.

The router (`capstan.serving.router`) buffers one `Outcome` per answered request (and one more, with role
``shadow``, per mirrored copy) and writes them in batches; clients later attach the ground truth to a request id
(``POST /deployments/NAME/feedback``); `capstan.serving.abtest` turns a deployment's outcomes into per-version
quality. The SQL adapter is `capstan.store.deployment_outcomes_sql`; `MemoryOutcomeStore` serves tests and
embedded use.

Predictions and truths are stored as JSON text: one value per row of the request (a list), exactly as the
protocol answered them, so a string class label, a number and a probability vector are all kept as they were.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

__all__ = ["MemoryOutcomeStore", "Outcome", "OutcomeStore", "Truth"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """One answered request (or one shadow copy of it).

    Attributes:
        request_id: the request's id (the client's ``X-Request-Id`` or one the router generated).
        project, deployment: whose request it was.
        version: the version number that answered (``3`` of ``models:/NAME/3``); ``""`` when none did.
        role: the role of that version when it answered (``primary``, ``canary`` or ``shadow``).
        status: the HTTP status the client (or, for a shadow, the router) got; 0 when no replica answered at all.
        latency_ms: time from the router receiving the request to the replica's full answer.
        time_ms: when the request arrived (epoch milliseconds).
        predictions: the answer's predictions as JSON text (a list, one entry per row), None when unknown.
        disagrees: for a shadow copy, whether its predictions differ from the live answer's; None otherwise.
        truth: the ground truth a client sent as feedback, JSON text; None until then.
        truth_ms: when that feedback arrived.
        cold_start_ms: how long the request waited for a replica to become ready (scale from zero); None when
            one was ready.
        id: the store's row id (0 before it is stored); grows with insertion order.
    """

    request_id: str
    project: str
    deployment: str
    version: str
    role: str
    status: int
    latency_ms: float
    time_ms: int
    predictions: str | None = None
    disagrees: bool | None = None
    truth: str | None = None
    truth_ms: int | None = None
    cold_start_ms: float | None = None
    id: int = 0


@dataclass(frozen=True, slots=True)
class Truth:
    """Ground truth for one request: ``value`` is its JSON text (a scalar for one row, a list for several)."""

    request_id: str
    value: str


class OutcomeStore(Protocol):
    """Where request outcomes are kept, shared by every server worker."""

    def add(self, outcomes: Sequence[Outcome]) -> None:
        """Store ``outcomes`` (their ``id`` is ignored and assigned by the store, in order)."""
        ...

    def record_truth(self, project: str, deployment: str, truths: Sequence[Truth], *, time_ms: int) -> list[str]:
        """Attach each truth to every outcome of its request id in the deployment (the live answer and any shadow
        copy). Returns the request ids that matched no outcome (nothing is written for those)."""
        ...

    def outcomes(self, project: str, deployment: str, *, limit: int = 100_000) -> tuple[Outcome, ...]:
        """The deployment's newest ``limit`` outcomes, oldest first."""
        ...

    def trim(self, project: str, deployment: str, *, keep: int) -> int:
        """Delete all but the newest ``keep`` outcomes of the deployment; returns how many were deleted."""
        ...

    def delete_deployment(self, project: str, deployment: str) -> int:
        """Forget every outcome of a deployment (when it is deleted); returns how many were deleted."""
        ...


class MemoryOutcomeStore:
    """`OutcomeStore` in memory (one process), for tests and embedded use."""

    def __init__(self) -> None:
        self._rows: list[Outcome] = []
        self._next_id = 1
        self._lock = threading.Lock()

    def add(self, outcomes: Sequence[Outcome]) -> None:
        """See `OutcomeStore.add`."""
        with self._lock:
            for outcome in outcomes:
                self._rows.append(replace(outcome, id=self._next_id))
                self._next_id += 1

    def record_truth(self, project: str, deployment: str, truths: Sequence[Truth], *, time_ms: int) -> list[str]:
        """See `OutcomeStore.record_truth`."""
        with self._lock:
            unknown: list[str] = []
            for truth in truths:
                found = False
                for index, row in enumerate(self._rows):
                    if (row.project, row.deployment, row.request_id) == (project, deployment, truth.request_id):
                        self._rows[index] = replace(row, truth=truth.value, truth_ms=time_ms)
                        found = True
                if not found:
                    unknown.append(truth.request_id)
            return unknown

    def outcomes(self, project: str, deployment: str, *, limit: int = 100_000) -> tuple[Outcome, ...]:
        """See `OutcomeStore.outcomes`."""
        with self._lock:
            mine = [r for r in self._rows if (r.project, r.deployment) == (project, deployment)]
        return tuple(mine[-limit:]) if limit > 0 else ()

    def trim(self, project: str, deployment: str, *, keep: int) -> int:
        """See `OutcomeStore.trim`."""
        with self._lock:
            mine = [r.id for r in self._rows if (r.project, r.deployment) == (project, deployment)]
            doomed = set(mine[:max(0, len(mine) - keep)])
            self._rows = [r for r in self._rows if r.id not in doomed]
            return len(doomed)

    def delete_deployment(self, project: str, deployment: str) -> int:
        """See `OutcomeStore.delete_deployment`."""
        with self._lock:
            before = len(self._rows)
            self._rows = [r for r in self._rows if (r.project, r.deployment) != (project, deployment)]
            return before - len(self._rows)
