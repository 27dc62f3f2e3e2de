"""Pure decisions of the orchestrator's round: what a finished attempt means, whether a failed step is retried or
fails, whether a pending step is ready, skipped or cancelled by its upstream steps, which retrying steps are due,
which running attempts are past their deadline, which queued map items may ask for resources under their map's
``max_parallel``, and the round's cascade: which dependents a step that ended releases or re-evaluates, what a
ready step needs (map expansion, a cache look-up with its key, or the queue) and what the look-up found, when a map
is complete, which kept upstream values may be dropped, and when (and how) the run ends.

No I/O, no clock reads and no randomness of its own: the time (``now_ms``, a monotonic ``now``) and the jitter
draw are passed in, so tests call these functions directly. The step transitions themselves and the retry
backoff are `capstan.pipelines.state`'s; `capstan.pipelines.orchestrator` applies the decisions (rows, events,
effects). The functions read steps through small protocols that the orchestrator's `StepRec` satisfies, so a
round builds no views.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

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

    @property
    def children(self) -> Sequence[str]:
        """The item step ids of an expanded map node."""
        ...

    @property
    def step(self) -> StepSpecView:
        """The step it calls."""
        ...


class OptionsView(Protocol):
    """What the planner reads of a step's options."""

    @property
    def cache(self) -> bool:
        """Whether its output may be reused (and is recorded for reuse)."""
        ...


class StepSpecView(Protocol):
    """What the planner reads of a step definition."""

    @property
    def options(self) -> OptionsView:
        """Its options."""
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

    @property
    def waiting(self) -> int:
        """For a pending step: how many upstream steps it still waits for."""
        ...

    @property
    def reason(self) -> str:
        """Why it is in its state (a failure's reason)."""
        ...

    @property
    def message(self) -> str:
        """The failure's message."""
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


# -- the cascade of a round ----------------------------------------------------------------------------------------

def released(dependents: Iterable[str], steps: Mapping[str, StepView]) -> list[tuple[str, int]]:
    """A step succeeded (or was a cache hit, or a map completed): its pending ``dependents`` wait for one step less.
    ``(step id, steps it still waits for)`` for each; those at 0 are ready."""
    out: list[tuple[str, int]] = []
    for sid in dependents:
        step = steps[sid]
        if step.state is sm.StepState.PENDING:
            out.append((sid, step.waiting - 1))
    return out


_ENDS_DEPENDENTS: Final = frozenset({sm.StepState.FAILED, sm.StepState.SKIPPED, sm.StepState.CANCELLED})


def to_reevaluate(step: StepView, dependents: Iterable[str],
                  steps: Mapping[str, StepView]) -> Iterable[tuple[str, tuple[sm.Readiness, int]]]:
    """A step ended: when it did not succeed, its pending ``dependents`` with their `pending_verdict` (skip or
    cancel); nothing when it succeeded. Lazy: each dependent is judged when the caller asks for it, after it
    applied the previous verdict (whose cascade may already have ended a later dependent, which is then passed
    over)."""
    if step.state not in _ENDS_DEPENDENTS:
        return ()
    return _reevaluate(dependents, steps)


def _reevaluate(dependents: Iterable[str],
                steps: Mapping[str, StepView]) -> Iterator[tuple[str, tuple[sm.Readiness, int]]]:
    for sid in dependents:
        dependent = steps[sid]
        if dependent.state is sm.StepState.PENDING:
            decided = pending_verdict(dependent, steps)
            if decided is not None:
                yield sid, decided


def upstream_failure(step: StepView, steps: Mapping[str, StepView]) -> str:
    """The message of a step skipped because an upstream step did not succeed."""
    failed_up = next((d for d in step.node.deps if steps[d].state in (sm.StepState.FAILED, sm.StepState.SKIPPED)),
                     "")
    return f"upstream step {failed_up!r} did not succeed"


def droppable_values(step: StepView, kept: Collection[str], dependents: Mapping[str, Sequence[str]],
                     steps: Mapping[str, StepView]) -> list[str]:
    """A step ended: the upstream values kept in memory (``kept``) that no open step reads any more."""
    return [dep for dep in step.node.deps
            if dep in kept and all(steps[c].state in sm.TERMINAL for c in dependents[dep])]


EXPAND: Final = "expand"
"""A ready map node: read its items and add them."""
QUEUE: Final = "queue"
"""A ready step without a cache key: queue it."""
QUEUE_KEYED: Final = "queue-keyed"
"""A ready cacheable step that is not looked up (no key, or the run ignores the cache): record its key (or None)
and queue it."""
LOOKUP: Final = "lookup"
"""A ready cacheable step with a key: look the key up in the cache first."""


def plan_ready(ready: Iterable[str], steps: Mapping[str, StepView], *, no_cache: bool,
               key_of: Callable[[str], str | None]) -> list[tuple[str, str, str | None]]:
    """What each ready step needs, in order: ``(step id, EXPAND | QUEUE | QUEUE_KEYED | LOOKUP, cache key)``.
    Steps no longer pending, and repeats, are dropped. ``key_of`` computes a cacheable step's key from its
    upstream outputs (None when one cannot be made)."""
    out: list[tuple[str, str, str | None]] = []
    seen: set[str] = set()
    pending = sm.StepState.PENDING
    for sid in ready:
        step = steps[sid]
        if step.state is not pending or sid in seen:
            continue
        seen.add(sid)
        node = step.node
        if node.map is not None:
            out.append((sid, EXPAND, None))
        elif node.step.options.cache:
            key = key_of(sid)
            out.append((sid, LOOKUP if key and not no_cache else QUEUE_KEYED, key))
        else:
            out.append((sid, QUEUE, None))
    return out


def after_lookup(lookups: Iterable[tuple[str, str]],
                 hits: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, Mapping[str, Any] | None]]:
    """The cache look-up's result for each looked-up ``(step id, key)``, in order: the cache entry to reuse (a
    hit whose stored output still ``exists``), or None: the step is queued."""
    out: list[tuple[str, Mapping[str, Any] | None]] = []
    for sid, key in lookups:
        hit = hits.get(key)
        out.append((sid, hit if hit is not None and hit["exists"] else None))
    return out


@dataclass(frozen=True, slots=True)
class MapCompletion:
    """A map node whose items are all terminal reaches ``state``: succeeded (``count`` items), failed (``reason``,
    ``message``: the first failed or skipped item) or cancelled."""

    state: sm.StepState
    count: int
    reason: str = ""
    message: str = ""


def map_completion(step: StepView, steps: Mapping[str, StepView]) -> MapCompletion | None:
    """A running map node's outcome once all its items are terminal; None while some are not (or it does not
    run)."""
    if step.state is not sm.StepState.RUNNING:
        return None
    children = step.node.children
    verdict = sm.map_outcome(steps[c].state for c in children)
    if verdict is None:
        return None
    if verdict is sm.StepState.FAILED:
        bad = next(c for c in children if steps[c].state in (sm.StepState.FAILED, sm.StepState.SKIPPED))
        return MapCompletion(verdict, len(children), "ChildFailed", f"item {bad!r} failed: {steps[bad].reason}")
    return MapCompletion(verdict, len(children))


_RUN_END_REASONS: Final = {sm.RunStatus.SUCCEEDED: "PipelineRunSucceeded", sm.RunStatus.FAILED: "PipelineRunFailed",
                           sm.RunStatus.CANCELLED: "PipelineRunCancelled"}


@dataclass(frozen=True, slots=True)
class RunCompletion:
    """How a run ends: its terminal ``status``, the message stored with it, and the event's ``reason`` (a warning
    unless it succeeded)."""

    status: sm.RunStatus
    message: str
    reason: str

    @property
    def warning(self) -> bool:
        """Whether the run's end is reported as a warning."""
        return self.status is not sm.RunStatus.SUCCEEDED


def run_completion(open_steps: int, steps: Iterable[StepView], *, cancel_requested: bool,
                   cancel_message: str) -> RunCompletion | None:
    """The run's end once none of its steps is open (``open_steps``, a count the caller keeps); None before. A
    failed run names its first failed step (an ordinary step before a map node)."""
    if open_steps > 0:
        return None
    recs = list(steps)
    status = sm.run_status((r.state for r in recs), cancel_requested=cancel_requested)
    failed = next((r for r in recs if r.state is sm.StepState.FAILED and r.node.map is None), None) \
        or next((r for r in recs if r.state is sm.StepState.FAILED), None)
    if status is sm.RunStatus.FAILED and failed is not None:
        message = f"step {failed.node.id!r} failed: {failed.reason}: {failed.message}"
    elif status is sm.RunStatus.CANCELLED:
        message = cancel_message
    else:
        message = ""
    return RunCompletion(status, message, _RUN_END_REASONS[status])
