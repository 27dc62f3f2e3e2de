"""The pure state machine of pipeline steps and runs: no I/O, no clock reads, no randomness of its own.

Every decision the orchestrator takes about a step goes through here, so the rules are unit-tested in one place:
which transitions are legal, what a failed attempt leads to (retry with capped, jittered exponential backoff, or
failure), whether a waiting step is ready, skipped or cancelled because of its upstream steps, what a map node's
children add up to, which steps a ``retry`` resets, and the status of a whole run.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from capstan.errors import InvalidState


class StepState(StrEnum):
    """Where a step is. Terminal states are final unless a ``retry`` resets the step."""

    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RETRYING = "retrying"
    CACHED = "cached"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


class Trigger(StrEnum):
    """What happened to a step."""

    READY = "ready"                      # every upstream step succeeded: wait for admission
    CACHE_HIT = "cache_hit"              # an earlier successful output has the same cache key
    UPSTREAM_FAILED = "upstream_failed"  # an upstream step failed or was skipped
    EXPAND = "expand"                    # a map node created its children
    START = "start"                      # an attempt was admitted and starts
    SUCCEED = "succeed"
    RETRY = "retry"                      # the attempt failed (or was interrupted) and another one is scheduled
    FAIL = "fail"                        # the attempt failed with no retry left, or the step can never run
    RETRY_DUE = "retry_due"              # the backoff delay is over
    CANCEL = "cancel"
    RESET = "reset"                      # ``capstan pipelines retry``: run a finished-but-unsuccessful step again


class RunStatus(StrEnum):
    """Where a run is."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


S = StepState
T = Trigger

TRANSITIONS: dict[tuple[StepState, Trigger], StepState] = {
    (S.PENDING, T.READY): S.QUEUED,
    (S.PENDING, T.CACHE_HIT): S.CACHED,
    (S.PENDING, T.UPSTREAM_FAILED): S.SKIPPED,
    (S.PENDING, T.EXPAND): S.RUNNING,
    (S.PENDING, T.CANCEL): S.CANCELLED,
    (S.QUEUED, T.START): S.RUNNING,
    (S.QUEUED, T.FAIL): S.FAILED,
    (S.QUEUED, T.CANCEL): S.CANCELLED,
    (S.RUNNING, T.SUCCEED): S.SUCCEEDED,
    (S.RUNNING, T.RETRY): S.RETRYING,
    (S.RUNNING, T.FAIL): S.FAILED,
    (S.RUNNING, T.CANCEL): S.CANCELLED,
    (S.RETRYING, T.RETRY_DUE): S.QUEUED,
    (S.RETRYING, T.CANCEL): S.CANCELLED,
    (S.FAILED, T.RESET): S.PENDING,
    (S.SKIPPED, T.RESET): S.PENDING,
    (S.CANCELLED, T.RESET): S.PENDING,
}
"""Every legal (state, trigger) pair and the state it leads to; anything else is an `InvalidTransition`."""

TERMINAL = frozenset({S.SUCCEEDED, S.FAILED, S.CACHED, S.SKIPPED, S.CANCELLED})
"""States a step stays in for the rest of the run."""

DONE_OK = frozenset({S.SUCCEEDED, S.CACHED})
"""States whose output downstream steps may consume."""

ACTIVE = frozenset({S.QUEUED, S.RUNNING, S.RETRYING})
"""States of steps that hold (or are about to hold) resources or a retry timer."""


class InvalidTransition(InvalidState):
    """A trigger that is not allowed in the step's current state."""


def transition(state: StepState, trigger: Trigger) -> StepState:
    """The state ``trigger`` leads to from ``state``; raises `InvalidTransition` for an illegal pair."""
    try:
        return TRANSITIONS[(state, trigger)]
    except KeyError:
        raise InvalidTransition(f"a step in state {state.value!r} cannot take trigger {trigger.value!r}") from None


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential retry delay: ``min(max_s, base_s * factor ** (n - 1))``, then spread by ``±jitter`` (a fraction).

    ``Backoff(base_s=1, factor=2, max_s=60, jitter=0.2)`` waits about 1 s, 2 s, 4 s ... capped at 60 s, each delay
    moved randomly by up to 20 % so that many failing steps do not retry in lock-step.
    """

    base_s: float = 1.0
    factor: float = 2.0
    max_s: float = 60.0
    jitter: float = 0.2

    def delay_ms(self, retry_number: int, rand: float) -> int:
        """Delay before retry ``retry_number`` (1 = first retry); ``rand`` is a uniform sample in ``[0, 1)``."""
        if retry_number < 1:
            raise InvalidState(f"retry number must be at least 1, got {retry_number}")
        exponent = min(retry_number - 1, 64)
        raw = min(self.max_s, self.base_s * (self.factor ** exponent))
        spread = raw * self.jitter * (2.0 * rand - 1.0)
        return max(0, round((raw + spread) * 1000))


@dataclass(frozen=True, slots=True)
class FailureDecision:
    """What follows a failed attempt: the step's next state, its retry count and when the next attempt may start."""

    state: StepState
    retries_used: int
    next_attempt_at: int | None
    reason: str


def after_failure(*, retries: int, retries_used: int, retryable: bool, interrupted: bool, backoff: Backoff,
                  now_ms: int, rand: float) -> FailureDecision:
    """Decide what a failed attempt leads to.

    ``interrupted`` attempts (the orchestrator died while they ran and they left no result) are run again without
    using up the step's retry budget: the step did not fail, its supervisor did. A non-``retryable`` failure (bad
    return type, unstorable value, a request no machine can satisfy) fails the step at once.
    """
    if interrupted:
        return FailureDecision(S.RETRYING, retries_used, now_ms, "Interrupted")
    if retryable and retries_used < retries:
        used = retries_used + 1
        return FailureDecision(S.RETRYING, used, now_ms + backoff.delay_ms(used, rand), "RetryScheduled")
    return FailureDecision(S.FAILED, retries_used, None, "StepFailed")


class Readiness(StrEnum):
    """What the upstream steps of a waiting step mean for it."""

    WAIT = "wait"
    READY = "ready"
    SKIP = "skip"
    CANCEL = "cancel"


def readiness(upstream: Iterable[StepState]) -> Readiness:
    """``READY`` when every upstream step has an output, ``SKIP`` when one failed or was skipped, ``CANCEL`` when
    one was cancelled (and none failed), else ``WAIT``."""
    waiting = cancelled = False
    for state in upstream:
        if state in (S.FAILED, S.SKIPPED):
            return Readiness.SKIP
        if state is S.CANCELLED:
            cancelled = True
        elif state not in DONE_OK:
            waiting = True
    if cancelled:
        return Readiness.CANCEL
    return Readiness.WAIT if waiting else Readiness.READY


def map_outcome(children: Iterable[StepState]) -> StepState | None:
    """The state a map node reaches once all its children are terminal (``None`` while some are not)."""
    failed = cancelled = False
    for state in children:
        if state not in TERMINAL:
            return None
        if state in (S.FAILED, S.SKIPPED):
            failed = True
        elif state is S.CANCELLED:
            cancelled = True
    if failed:
        return S.FAILED
    return S.CANCELLED if cancelled else S.SUCCEEDED


def run_status(states: Iterable[StepState], *, cancel_requested: bool = False) -> RunStatus:
    """The status of a run from its steps' states."""
    any_failed = any_cancelled = False
    for state in states:
        if state not in TERMINAL:
            return RunStatus.RUNNING
        if state in (S.FAILED, S.SKIPPED):
            any_failed = True
        elif state is S.CANCELLED:
            any_cancelled = True
    if cancel_requested or any_cancelled:
        return RunStatus.CANCELLED
    return RunStatus.FAILED if any_failed else RunStatus.SUCCEEDED


def to_reset(states: dict[str, StepState]) -> list[str]:
    """Steps that ``retry`` puts back to pending: every failed, skipped or cancelled step, in the given order."""
    return [step for step, state in states.items() if (state, T.RESET) in TRANSITIONS]


def to_cancel(states: dict[str, StepState]) -> list[str]:
    """Steps that cancelling a run stops: every step that is not terminal yet."""
    return [step for step, state in states.items() if (state, T.CANCEL) in TRANSITIONS]
