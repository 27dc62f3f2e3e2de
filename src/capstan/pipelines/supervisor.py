"""The attempts of one run: `AttemptSupervisor` owns the executors and everything about attempts that are running.

The orchestrator (`capstan.pipelines.orchestrator.Orchestrator`) keeps the round loop, the step records' states
and the round's `Batch`; it asks the supervisor to launch an attempt under a lease the admission granted, to stop
attempts (timeouts, a cancelled run, preemption through the admission's revoked leases), to recover the attempts a
previous orchestrator left running, and to shut the executors down. The supervisor holds the executors by
isolation, the running attempts (attempt key ``run/step#n`` -> step id), the leases to give back in the round's
``settle``, the files left by an earlier orchestrator's workers, and the upstream values kept in memory for
in-process attempts.

Everything it needs comes through its constructor: the step records (the orchestrator's dict, shared), the
executors, the admission, the clock, and two callbacks into the round: ``transition`` (apply a state machine
trigger to a step, putting it in the batch) and ``event`` (append an event to the batch). Every method is called
with the orchestrator's round lock held; effects that act on the world (starting, stopping) are appended to the
round's ``effects`` and run only after its commit (decision 0200 §3).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from capstan.clock import Clock, monotonic_of
from capstan.pipelines import planner
from capstan.pipelines import state as sm
from capstan.pipelines.execution import CANCELLED, TIMEOUT, Outcome
from capstan.pipelines.executor_port import NOWHERE, Executor, interrupted
from capstan.pipelines.state import StepState
from capstan.pipelines.steprec import StepRec, make_task
from capstan.pipelines.storage import STEP_KIND, Batch, FinishedAttempt, StartedAttempt
from capstan.resources.admission import PREEMPTED, Admission, Lease, ResourceRequest, Verdict

if TYPE_CHECKING:
    from capstan.pipelines.dsl import Step
    from capstan.pipelines.storage import AttemptRecord

S = StepState
Effect = Callable[[], None]
"""Something to do after the round's commit (start or stop an attempt)."""


class Transition(Protocol):
    """Applies ``trigger`` to the step of ``rec`` and puts the step in ``batch`` (the orchestrator's ``_set``)."""

    def __call__(self, rec: StepRec, trigger: sm.Trigger, batch: Batch) -> None:
        """Apply the transition."""
        ...


class EventSink(Protocol):
    """Appends an event about a step (or the run) to ``batch`` (the orchestrator's ``_event``)."""

    def __call__(self, batch: Batch, kind: str, sid: str, reason: str, message: str = "", *,
                 warning: bool = False, data: dict[str, Any] | None = None) -> None:
        """Record the event."""
        ...


def resource_request(run_id: str, project: str, rec: StepRec, key: str) -> ResourceRequest:
    """What the attempt ``key`` of ``rec`` asks the admission for (its resources, labelled with run, step, queue
    and priority class)."""
    opts = rec.node.step.options
    res = opts.resources
    labels = [("run", run_id), ("step", rec.node.id)]
    if opts.queue:
        labels.append(("queue", opts.queue))
    if opts.priority_class:
        labels.append(("priority_class", opts.priority_class))
    return ResourceRequest(key, res.cpu_for(opts.isolation), res.memory, res.gpu, res.gpu_flavor, project,
                           tuple(labels))


class AttemptSupervisor:
    """Owns one run's executors and its running attempts (see the module docstring).

    ``recs`` is the orchestrator's dict of step records, read and updated in place (an attempt's lease, deadline,
    executor and its map's count of running items); ``run_dir`` is the run's directory for tasks' default files.
    """

    def __init__(self, *, run_id: str, project: str, run_dir: str, recs: dict[str, StepRec],
                 executors: Mapping[str, Executor], admission: Admission, clock: Clock, transition: Transition,
                 event: EventSink) -> None:
        self._run_id = run_id
        self._project = project
        self._run_dir = run_dir
        self._recs = recs
        self._executors = dict(executors)
        self._admission = admission
        self._clock = clock
        self._mono = monotonic_of(clock)  # deadlines: a fake clock moves them
        self._transition = transition
        self._event = event
        self._running: dict[str, str] = {}  # attempt key -> step id
        self._preempting: dict[str, str] = {}  # attempt key -> why its lease was revoked
        self._releases: list[tuple[Lease, bool]] = []  # given back to the admission once per round
        self._stale_files: set[str] = set()
        self.light_launches = 0
        """Attempts launched in this process (a thread) without a queue workload, so far: a crash ends them with the
        orchestrator and nothing outside the run holds them, so their rows need not be committed before they start."""
        self.values: dict[str, Any] = {}
        """Return values of finished steps kept in memory (step id -> value): produced by in-process attempts and
        handed to in-process successors. The orchestrator reads them for look-ups and map results and drops those
        no dependent needs any more."""

    # -- the run's start and end ------------------------------------------------------------------------------
    def prepare(self, steps: Iterable[Step]) -> None:
        """Tell each executor the steps of its isolation that this run will send (once, at the run's start)."""
        by_isolation: dict[str, list[Step]] = {}
        for step in steps:
            by_isolation.setdefault(step.options.isolation, []).append(step)
        for isolation, group in by_isolation.items():
            executor = self._executors.get(isolation)
            if executor is not None:
                executor.prepare(group)  # the process executor starts warm workers importing the steps' modules

    def recover(self, rec: StepRec, last: AttemptRecord | None) -> Outcome | None:
        """A step the previous orchestrator left running, ``last`` its latest attempt row: adopt its result,
        re-attach to its worker, or retry it (the executor of the attempt's isolation decides,
        `capstan.pipelines.executor_port.Executor.recover`). Returns the outcome to handle in a round (an adopted
        result or an interruption), or None when the attempt is now followed and its outcome will be delivered."""
        executor = self._executors.get(last.isolation) if last is not None else None
        placement = executor.placement_of(last.worker_pid, last.worker_started) \
            if executor is not None and last is not None else NOWHERE
        self._stale_files.update(p for p in (placement.log_path, placement.results_path) if p)
        task = make_task(self._run_id, self._project, self._run_dir, rec, self._recs, None, attempt=rec.attempt,
                         log=placement.log_path, results=placement.results_path)
        self._running[task.key] = rec.node.id
        started = last.started_at if last is not None else self._clock()
        rec.attempt_started = started
        outcome = executor.recover(task, placement, started) if executor is not None else \
            interrupted(task, started, self._clock())
        request = resource_request(self._run_id, self._project, rec, task.key)
        if outcome is not None:
            # An adopted result or an interruption: the step's workload may still be admitted in the queue; holding
            # its lease makes the outcome's handling give the quota back, as for an attempt that finished here.
            rec.lease = self._admission.reclaim(request, held_only=True)
            return outcome
        assert last is not None
        rec.executor = last.isolation  # the executor follows the attempt now: it stops it and reports its outcome
        timeout = rec.node.step.options.timeout
        if timeout is not None:
            elapsed = max(0.0, (self._clock() - last.started_at) / 1000)
            rec.deadline = self._mono() + max(0.0, timeout - elapsed)
        rec.lease = self._admission.reclaim(request)
        if rec.node.parent:
            self._recs[rec.node.parent].running_children += 1
        return None

    def shutdown(self, *, kill: bool) -> None:
        """Shut every executor down; with ``kill`` their running attempts are stopped (a cancelled run)."""
        for executor in self._executors.values():
            executor.shutdown(kill=kill)

    def remove_stale_files(self) -> None:
        """Delete the files that workers of an earlier orchestrator of this run left (once the run is done)."""
        for path in self._stale_files:
            with contextlib.suppress(OSError):
                os.unlink(path)

    # -- launching and finishing ------------------------------------------------------------------------------
    def launch(self, rec: StepRec, lease: Lease, batch: Batch, now: int, effects: list[Effect]) -> None:
        """Start the next attempt of ``rec`` under ``lease``: its row and event now, the dispatch after the
        commit."""
        step = rec.node.step
        rec.attempt += 1
        self._transition(rec, sm.Trigger.START, batch)
        rec.started_at = rec.started_at or now
        rec.reason, rec.message = "", ""
        rec.lease = lease
        rec.attempt_started = now
        batch.touched[rec.node.id] = rec
        isolation = step.options.isolation
        executor = self._executors[isolation]
        placement = executor.place(lease)  # a warm worker set aside: its pid goes into the attempt's row
        task = make_task(self._run_id, self._project, self._run_dir, rec, self._recs, lease, attempt=rec.attempt,
                         log=placement.log_path, results=placement.results_path)
        if executor.in_process and lease.workload is None:
            self.light_launches += 1  # dies with this process and holds no quota: its rows may be written later
        if executor.in_process:
            values = {d: self.values[d] for d in rec.node.deps if d in self.values}
            effects.append(lambda: executor.start(task, placement, lease=lease, step=step, values=values))
        else:
            effects.append(lambda: executor.start(task, placement, lease=lease))
        rec.executor = isolation
        pid, started_ms = placement.worker_pid, placement.worker_started
        batch.attempts_new.append(StartedAttempt(self._run_id, rec.node.id, rec.attempt, isolation, pid, started_ms,
                                                 now))
        self._event(batch, STEP_KIND, rec.node.id, "StepStarted", f"attempt {rec.attempt} ({isolation})",
                    data={"attempt": rec.attempt, "worker_pid": pid})
        timeout = step.options.timeout
        # A worker process reports when it really begins (it may still be importing); threads begin at once.
        rec.deadline = self._mono() + timeout if timeout is not None and not executor.reports_start else None
        self._running[task.key] = rec.node.id
        if rec.node.parent:
            self._recs[rec.node.parent].running_children += 1

    def begun(self, key: str) -> bool:
        """An executor reports that attempt ``key`` really began: its timeout starts now. False for an attempt
        not running (any more)."""
        sid = self._running.get(key)
        if sid is None:
            return False
        rec = self._recs[sid]
        timeout = rec.node.step.options.timeout
        if timeout is not None and rec.state is S.RUNNING:
            rec.deadline = self._mono() + timeout
        return True

    def take(self, key: str) -> tuple[str, str | None] | None:
        """The attempt ``key`` delivered its outcome: it no longer runs. Returns its step id and, when its lease
        had been revoked, why (the preemption); None for an attempt already decided (timed out or cancelled),
        whose late outcome is ignored."""
        sid = self._running.pop(key, None)
        if sid is None:
            return None
        return sid, self._preempting.pop(key, None)

    def keep_value(self, rec: StepRec, value: Any) -> None:
        """Keep the return value of the step of ``rec`` in memory when its executor runs in this process."""
        executor = self._executors.get(rec.executor)
        if value is not None and executor is not None and executor.in_process:
            self.values[rec.node.id] = value

    def finish(self, rec: StepRec, batch: Batch, *, state: str, reason: str, message: str, finished_at: int,
               started_at: int | None = None, exit_code: int | None = None, peak_memory: int | None = None,
               log_path: str | None = None, requeue: bool = False) -> None:
        """Record how the running attempt of ``rec`` ended and give back its lease (in this round's settle)."""
        if rec.lease is not None:
            self._releases.append((rec.lease, requeue))  # returned in this round's `settle`
            rec.lease = None
        rec.deadline = None
        if rec.node.parent:
            parent = self._recs[rec.node.parent]
            parent.running_children = max(0, parent.running_children - 1)
        begun = started_at if started_at is not None else rec.attempt_started
        duration = finished_at - begun if begun is not None else None
        rec.duration_ms = duration
        batch.attempts_done.append(FinishedAttempt(self._run_id, rec.node.id, rec.attempt, state, reason,
                                                   message[:4000], finished_at, duration, exit_code, peak_memory,
                                                   log_path))

    # -- the admission ----------------------------------------------------------------------------------------
    def settle(self, requests: Sequence[ResourceRequest]) -> list[Verdict]:
        """One admission round: give back the leases of attempts that ended, then ask for ``requests``."""
        releases, self._releases = self._releases, []
        return self._admission.settle(releases, requests)

    def give_back(self) -> None:
        """Give back the leases of attempts that ended in this round, if any (before the commit: a crash never
        leaves a finished step holding quota)."""
        if self._releases:
            self.settle([])

    # -- stopping ---------------------------------------------------------------------------------------------
    def _stopper(self, executor: str, key: str, reason: str) -> Effect:
        """An effect that stops attempt ``key`` on the executor that runs it (SIGTERM, then SIGKILL after the
        grace)."""
        def stop() -> None:
            target = self._executors.get(executor)
            if target is not None:
                target.stop(key, reason)
        return stop

    def expire(self, batch: Batch, now: int, effects: list[Effect]) -> Iterator[tuple[StepRec, str]]:
        """Finish the attempts past their deadline as timed out (stopping them is an effect of the round), yielding
        each step with the failure's message for the orchestrator to retry or fail it."""
        for key, sid in planner.expired(self._running, self._recs, self._mono()):
            rec = self._recs[sid]
            del self._running[key]
            timeout = rec.node.step.options.timeout
            message = f"attempt {rec.attempt} exceeded its timeout of {timeout:g}s"
            self.finish(rec, batch, state=S.FAILED.value, reason=TIMEOUT, message=message, finished_at=now)
            self._event(batch, STEP_KIND, sid, TIMEOUT, message, warning=True, data={"attempt": rec.attempt})
            effects.append(self._stopper(rec.executor, key, TIMEOUT))
            yield rec, message

    def preempt(self, batch: Batch, effects: list[Effect]) -> None:
        """Stop attempts whose resources the admission took back (preempted): SIGTERM, grace period, SIGKILL.

        The attempt stays running until its executor reports it; then its outcome (see `take`) gives the quota
        back and requeues the step (`capstan.pipelines.planner.judge_outcome`: a preemption does not use up the
        step's retries)."""
        held = {rec.lease.key: (key, rec) for key, sid in self._running.items()
                if (rec := self._recs[sid]).lease is not None and key not in self._preempting}
        if not held:
            return
        for lease, why in self._admission.revoked([rec.lease for _key, rec in held.values() if rec.lease]):
            key, rec = held[lease.key]
            self._preempting[key] = why
            self._event(batch, STEP_KIND, rec.node.id, PREEMPTED, f"attempt {rec.attempt}: {why}", warning=True,
                        data={"attempt": rec.attempt, "workload": lease.workload})
            effects.append(self._stopper(rec.executor, key, PREEMPTED))

    def cancel(self, recs: Iterable[StepRec], batch: Batch, now: int, message: str, effects: list[Effect]) -> None:
        """The run is cancelled: finish the running attempts of ``recs`` as cancelled (stopped after the commit),
        give back the leases of the others and withdraw the requests of queued or retrying ones. The steps' own
        transitions are the orchestrator's."""
        running_by_step = {sid: key for key, sid in self._running.items()}
        for rec in recs:
            sid = rec.node.id
            key = running_by_step.get(sid)
            if key is not None:
                del self._running[key]
                self.finish(rec, batch, state=S.CANCELLED.value, reason=CANCELLED, message=message,
                            finished_at=now)
                effects.append(self._stopper(rec.executor, key, CANCELLED))
            elif rec.lease is not None:
                self._admission.release(rec.lease)
                rec.lease = None
            elif rec.state in (S.QUEUED, S.RETRYING):
                self._admission.withdraw(f"{self._run_id}/{sid}#{rec.attempt + 1}")  # may wait in a queue

    # -- timers -----------------------------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        """The earliest deadline (monotonic reading) of a running attempt, None when none has one."""
        deadlines = [d for sid in self._running.values() if (d := self._recs[sid].deadline) is not None]
        return min(deadlines) if deadlines else None

    def has_deadlines(self) -> bool:
        """Whether a running attempt has a deadline (the orchestrator's thread must watch the time)."""
        return any(self._recs[s].deadline is not None for s in self._running.values())
