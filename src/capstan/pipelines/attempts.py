"""The orchestrator's attempts: launching one on the executor of its step's isolation (through the
`capstan.pipelines.executor_port.Executor` port) and recording how one ended, as typed rows of the round's `Batch`.
Helpers of `capstan.pipelines.orchestrator.Orchestrator`, called with the round's lock held.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from capstan.pipelines import state as sm
from capstan.pipelines.state import StepState
from capstan.pipelines.steprec import StepRec
from capstan.pipelines.storage import STEP_KIND, Batch, FinishedAttempt, StartedAttempt
from capstan.resources.admission import Lease

if TYPE_CHECKING:
    from capstan.pipelines.orchestrator import Orchestrator

S = StepState


def launch(orch: Orchestrator, rec: StepRec, lease: Lease, batch: Batch, now: int,
           effects: list[Callable[[], None]]) -> None:
    """Start the next attempt of ``rec`` under ``lease``: its row and event now, the dispatch after the commit."""
    step = rec.node.step
    rec.attempt += 1
    orch._set(rec, sm.Trigger.START, batch)
    rec.started_at = rec.started_at or now
    rec.reason, rec.message = "", ""
    rec.lease = lease
    rec.attempt_started = now
    orch._touch(rec, batch)
    isolation = step.options.isolation
    executor = orch._executors[isolation]
    placement = executor.place(lease)  # a warm worker set aside: its pid goes into the attempt's row
    task = orch._task(rec, lease, attempt=rec.attempt, log=placement.log_path, results=placement.results_path)
    if executor.in_process:
        values = {d: orch._values[d] for d in rec.node.deps if d in orch._values}
        effects.append(lambda: executor.start(task, placement, lease=lease, step=step, values=values))
    else:
        effects.append(lambda: executor.start(task, placement, lease=lease))
    rec.executor = isolation
    pid, started_ms = placement.worker_pid, placement.worker_started
    batch.attempts_new.append(StartedAttempt(orch.run_id, rec.node.id, rec.attempt, isolation, pid, started_ms, now))
    orch._event(batch, STEP_KIND, rec.node.id, "StepStarted", f"attempt {rec.attempt} ({isolation})",
                data={"attempt": rec.attempt, "worker_pid": pid})
    timeout = step.options.timeout
    # A worker process reports when it really begins (it may still be importing); threads begin at once.
    rec.deadline = orch._mono() + timeout if timeout is not None and not executor.reports_start else None
    orch._running[task.key] = rec.node.id
    if rec.node.parent:
        orch.recs[rec.node.parent].running_children += 1


def finish(orch: Orchestrator, rec: StepRec, batch: Batch, *, state: str, reason: str, message: str,
           finished_at: int, started_at: int | None = None, exit_code: int | None = None,
           peak_memory: int | None = None, log_path: str | None = None, requeue: bool = False) -> None:
    """Record how the running attempt of ``rec`` ended and give back its lease (in this round's settle)."""
    if rec.lease is not None:
        orch._releases.append((rec.lease, requeue))  # returned in this round's `settle`
        rec.lease = None
    rec.deadline = None
    if rec.node.parent:
        parent = orch.recs[rec.node.parent]
        parent.running_children = max(0, parent.running_children - 1)
    begun = started_at if started_at is not None else rec.attempt_started
    duration = finished_at - begun if begun is not None else None
    rec.duration_ms = duration
    batch.attempts_done.append(FinishedAttempt(orch.run_id, rec.node.id, rec.attempt, state, reason, message[:4000],
                                               finished_at, duration, exit_code, peak_memory, log_path))
