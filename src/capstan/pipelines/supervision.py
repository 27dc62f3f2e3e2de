"""The orchestrator's supervision of attempts: recovering those a previous orchestrator left running, timeouts,
and cancelling a run. Helpers of `capstan.pipelines.orchestrator.Orchestrator`, called with the round's lock held.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from capstan.pipelines import attempts, planner
from capstan.pipelines import state as sm
from capstan.pipelines.execution import CANCELLED, TIMEOUT
from capstan.pipelines.executor_port import NOWHERE, interrupted
from capstan.pipelines.state import StepState
from capstan.pipelines.steprec import StepRec
from capstan.pipelines.storage import STEP_KIND, Batch

if TYPE_CHECKING:
    from capstan.pipelines.orchestrator import Orchestrator

S = StepState


def recover_running(orch: Orchestrator, rec: StepRec) -> None:
    """A step the previous orchestrator left running: adopt its result, re-attach to its worker, or retry it (the
    executor of the attempt's isolation decides, `capstan.pipelines.executor_port.Executor.recover`)."""
    from capstan.pipelines.storage import PipelineStore

    attempts = PipelineStore(orch._engine).attempts(orch.run_id, rec.node.id)
    last = attempts[-1] if attempts else None
    executor = orch._executors.get(last.isolation) if last is not None else None
    placement = executor.placement_of(last.worker_pid, last.worker_started) \
        if executor is not None and last is not None else NOWHERE
    orch._stale_files.update(p for p in (placement.log_path, placement.results_path) if p)
    task = orch._task(rec, None, attempt=rec.attempt, log=placement.log_path, results=placement.results_path)
    orch._running[task.key] = rec.node.id
    started = last.started_at if last is not None else orch._clock()
    rec.attempt_started = started
    outcome = executor.recover(task, placement, started) if executor is not None else \
        interrupted(task, started, orch._clock())
    if outcome is not None:
        # An adopted result or an interruption: the step's workload may still be admitted in the queue; holding
        # its lease makes the outcome's handling give the quota back, as for an attempt that finished here.
        rec.lease = orch._admission.reclaim(orch._request(rec, task.key), held_only=True)
        orch._out.put(outcome)
        return
    assert last is not None
    rec.executor = last.isolation  # the executor follows the attempt now: it stops it and reports its outcome
    timeout = rec.node.step.options.timeout
    if timeout is not None:
        elapsed = max(0.0, (orch._clock() - last.started_at) / 1000)
        rec.deadline = orch._mono() + max(0.0, timeout - elapsed)
    rec.lease = orch._admission.reclaim(orch._request(rec, task.key))
    if rec.node.parent:
        orch.recs[rec.node.parent].running_children += 1


def killer(orch: Orchestrator, executor: str, key: str, reason: str) -> Callable[[], None]:
    """An effect that stops attempt ``key`` on the executor that runs it (SIGTERM, then SIGKILL after the grace)."""
    def kill() -> None:
        target = orch._executors.get(executor)
        if target is not None:
            target.stop(key, reason)
    return kill


def check_timeouts(orch: Orchestrator, batch: Batch, now: int, effects: list[Callable[[], None]]) -> None:
    """Fail (or retry) attempts past their deadline; killing them is an effect of the round."""
    for key, sid in planner.expired(orch._running, orch.recs, orch._mono()):
        rec = orch.recs[sid]
        del orch._running[key]
        timeout = rec.node.step.options.timeout
        message = f"attempt {rec.attempt} exceeded its timeout of {timeout:g}s"
        attempts.finish(orch, rec, batch, state=S.FAILED.value, reason=TIMEOUT, message=message, finished_at=now,
                             started_at=None)
        orch._event(batch, STEP_KIND, sid, TIMEOUT, message, warning=True, data={"attempt": rec.attempt})
        effects.append(killer(orch, rec.executor, key, TIMEOUT))
        orch._attempt_failed(rec, TIMEOUT, message, True, batch, now)


def cancel_all(orch: Orchestrator, batch: Batch, now: int, effects: list[Callable[[], None]]) -> None:
    """Cancel every step that is not finished; running attempts are killed after the commit."""
    running_by_step = {sid: key for key, sid in orch._running.items()}
    message = orch._cancel_message
    for rec in orch.recs.values():
        if rec.state in sm.TERMINAL:
            continue
        sid = rec.node.id
        key = running_by_step.get(sid)
        if key is not None:
            del orch._running[key]
            attempts.finish(orch, rec, batch, state=S.CANCELLED.value, reason=CANCELLED, message=message,
                                 finished_at=now)
            effects.append(killer(orch, rec.executor, key, CANCELLED))
        elif rec.lease is not None:
            orch._admission.release(rec.lease)
            rec.lease = None
        elif rec.state in (S.QUEUED, S.RETRYING):
            orch._admission.withdraw(f"{orch.run_id}/{sid}#{rec.attempt + 1}")  # its request may wait in a queue
        orch._set(rec, sm.Trigger.CANCEL, batch)
        rec.reason, rec.message, rec.finished_at = CANCELLED, message, now
        orch._touch(rec, batch)
        orch._event(batch, STEP_KIND, sid, "StepCancelled", message, warning=True)
    orch._queued.clear()
    orch._retrying.clear()
    orch._ready.clear()
