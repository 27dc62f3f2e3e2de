"""Pure decisions of the orchestrator's round: what a finished attempt means, whether a failed step is retried or
fails, whether a pending step is ready, skipped or cancelled by its upstream steps, which retrying steps are due,
which running attempts are past their deadline, and which queued map items may ask for resources under their map's
``max_parallel``.

No I/O, no clock reads and no randomness of its own: the time (``now_ms``, a monotonic ``now``) and the jitter
draw are passed in, so tests call these functions directly. The step transitions themselves and the retry
backoff are `capstan.pipelines.state`'s; `capstan.pipelines.orchestrator` applies the decisions (rows, events,
effects). The functions read steps through small protocols that the orchestrator's `StepRec` satisfies, so a
round builds no views.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from capstan.pipelines import state as sm
from capstan.resources.admission import PREEMPTED

INTERRUPTED = "Interrupted"
"""= `capstan.pipelines.execution.INTERRUPTED` (not imported: that module runs processes)."""


class MapView(Protocol):
    """What the planner reads of a map."""

    @property
    def max_parallel(self) -> int | None:
        """How many items may run at once (None: no limit)."""
        ...


class NodeView(Protocol):
    """What the planner reads of a graph node."""

    @property
    def id(self) -> str:
        """The step id."""
        ...

    @property
    def seq(self) -> int:
        """Position in the graph (retries are queued in this order)."""
        ...

    @property
    def parent(self) -> str | None:
        """The map node of an item, else None."""
        ...

    @property
    def map(self) -> MapView | None:
        """The map spec of a map node, else None."""
        ...

    @property
    def deps(self) -> Sequence[str]:
        """Upstream step ids."""
        ...


class StepView(Protocol):
    """What the planner reads of a step's in-memory state."""

    @property
    def node(self) -> NodeView:
        """Its graph node."""
        ...

    @property
    def state(self) -> sm.StepState:
        """Its state."""
        ...

    @property
    def next_attempt_at(self) -> int | None:
        """When a retrying step may run again (ms)."""
        ...

    @property
    def deadline(self) -> float | None:
        """Monotonic deadline of its running attempt."""
        ...

    @property
    def running_children(self) -> int:
        """Items of a map node that run now."""
        ...


@dataclass(frozen=True, slots=True)
class Judgement:
    """What a finished attempt means for its step: ``ok``, or failed with ``reason``/``message``; ``retryable``
    failures may be retried; ``requeue`` when the attempt was preempted (its workload goes back to the queue)."""

    ok: bool
    reason: str
    message: str
    retryable: bool
    requeue: bool


def judge_outcome(*, ok: bool, reason: str, message: str, retryable: bool, attempt: int,
                  preempted: str | None) -> Judgement:
    """Judge a finished attempt. ``preempted`` is why its resources were taken back, if they were: a preempted
    attempt that did not succeed fails as ``Preempted`` (retryable, requeued); one that succeeded within its grace
    period counts as a success."""
    if preempted is not None and not ok:
        return Judgement(False, PREEMPTED, f"attempt {attempt} was preempted: {preempted}", True, True)
    return Judgement(ok, reason, message, retryable, False)


def after_failure(*, reason: str, retryable: bool, retries: int, retries_used: int, backoff: sm.Backoff,
                  now_ms: int, rand: Callable[[], float]) -> sm.FailureDecision:
    """Retry or fail a step whose attempt failed with ``reason``. Interrupted and preempted attempts did not fail
    (their supervisor did, or the queue took their resources): they run again without using up the step's retries.
    ``rand`` draws the backoff's jitter (once)."""
    return sm.after_failure(retries=retries, retries_used=retries_used, retryable=retryable,
                            interrupted=reason in (INTERRUPTED, PREEMPTED), backoff=backoff, now_ms=now_ms,
                            rand=rand())


def due_retries(retrying: Iterable[str], steps: Mapping[str, StepView], now_ms: int) -> list[str]:
    """The retrying steps whose next attempt is due at ``now_ms``, in graph order."""
    return [sid for sid in sorted(retrying, key=lambda s: steps[s].node.seq)
            if (steps[sid].next_attempt_at or 0) <= now_ms]


def expired(running: Mapping[str, str], steps: Mapping[str, StepView], now: float) -> list[tuple[str, str]]:
    """``(attempt key, step id)`` of running attempts past their deadline at the monotonic reading ``now``."""
    out: list[tuple[str, str]] = []
    for key, sid in running.items():
        rec = steps[sid]
        if rec.deadline is not None and rec.deadline <= now and rec.state is sm.StepState.RUNNING:
            out.append((key, sid))
    return out


def admissible(queued: Sequence[str], steps: Mapping[str, StepView]) -> tuple[list[str], list[str]]:
    """Split the queued steps into those that may ask for resources now and those that keep waiting because
    their map already runs ``max_parallel`` items (counting the ones asking in this round). Steps no longer
    queued are dropped."""
    asking: list[str] = []
    waiting: list[str] = []
    planned: dict[str, int] = {}
    for sid in queued:
        rec = steps[sid]
        if rec.state is not sm.StepState.QUEUED:
            continue
        parent_id = rec.node.parent
        if parent_id:
            parent = steps[parent_id]
            spec = parent.node.map
            limit = spec.max_parallel if spec is not None else None
            if limit is not None:
                if parent.running_children + planned.get(parent_id, 0) >= limit:
                    waiting.append(sid)
                    continue
                planned[parent_id] = planned.get(parent_id, 0) + 1
        asking.append(sid)
    return asking, waiting


def pending_verdict(step: StepView, steps: Mapping[str, StepView]) -> tuple[sm.Readiness, int] | None:
    """What its upstream steps mean for a pending step: None while it is an item of a map that is not running
    (the map decides for its items), else its `capstan.pipelines.state.readiness` and, when it waits, for how
    many upstream steps."""
    parent_id = step.node.parent
    if parent_id:
        parent = steps.get(parent_id)
        if parent is not None and parent.state is not sm.StepState.RUNNING:
            return None
    upstream = [steps[d].state for d in step.node.deps]
    verdict = sm.readiness(upstream)
    if verdict is sm.Readiness.WAIT:
        return verdict, sum(1 for s in upstream if s not in sm.DONE_OK)
    return verdict, 0
