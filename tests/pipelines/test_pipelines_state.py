"""The pure state machine: every (state, trigger) pair, retry decisions, readiness, map and run outcomes."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from capstan.pipelines.state import (
    ACTIVE,
    DONE_OK,
    TERMINAL,
    TRANSITIONS,
    Backoff,
    InvalidTransition,
    Readiness,
    RunStatus,
    StepState,
    Trigger,
    after_failure,
    map_outcome,
    readiness,
    run_status,
    to_cancel,
    to_reset,
    transition,
)

S, T = StepState, Trigger

EXPECTED = {
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


@pytest.mark.parametrize(("state", "trigger"), list(itertools.product(StepState, Trigger)))
def test_every_state_and_trigger(state: StepState, trigger: Trigger) -> None:
    if (state, trigger) in EXPECTED:
        assert transition(state, trigger) is EXPECTED[(state, trigger)]
    else:
        with pytest.raises(InvalidTransition, match=f"{state.value}.*{trigger.value}"):
            transition(state, trigger)


def test_table_is_exactly_the_expected_one() -> None:
    assert TRANSITIONS == EXPECTED


def test_terminal_states_only_leave_by_reset() -> None:
    for (state, trigger), _target in TRANSITIONS.items():
        if state in TERMINAL:
            assert trigger is T.RESET
    assert S.SUCCEEDED in TERMINAL and S.CACHED in TERMINAL
    assert (S.SUCCEEDED, T.RESET) not in TRANSITIONS and (S.CACHED, T.RESET) not in TRANSITIONS
    assert {S.SUCCEEDED, S.CACHED} == DONE_OK
    assert {S.QUEUED, S.RUNNING, S.RETRYING} == ACTIVE


def test_every_state_is_reachable_from_pending() -> None:
    seen, frontier = {S.PENDING}, [S.PENDING]
    while frontier:
        current = frontier.pop()
        for (state, _trigger), target in TRANSITIONS.items():
            if state is current and target not in seen:
                seen.add(target)
                frontier.append(target)
    assert seen == set(StepState)


def test_backoff_is_exponential_and_capped() -> None:
    backoff = Backoff(base_s=1, factor=2, max_s=10, jitter=0)
    assert [backoff.delay_ms(n, 0.5) for n in range(1, 7)] == [1000, 2000, 4000, 8000, 10000, 10000]
    assert Backoff(base_s=0, jitter=0.5).delay_ms(3, 0.99) == 0
    with pytest.raises(Exception, match="at least 1"):
        backoff.delay_ms(0, 0.5)


@given(st.integers(min_value=1, max_value=200), st.floats(min_value=0, max_value=0.999999),
       st.floats(min_value=0, max_value=1))
def test_jitter_stays_within_its_band(n: int, rand: float, jitter: float) -> None:
    backoff = Backoff(base_s=0.5, factor=3, max_s=30, jitter=jitter)
    raw = min(30.0, 0.5 * 3 ** min(n - 1, 64))
    delay = backoff.delay_ms(n, rand) / 1000
    assert raw * (1 - jitter) - 0.001 <= delay <= raw * (1 + jitter) + 0.001


def test_after_failure_retries_until_the_budget_is_spent() -> None:
    backoff = Backoff(base_s=1, factor=2, max_s=60, jitter=0)
    first = after_failure(retries=2, retries_used=0, retryable=True, interrupted=False, backoff=backoff,
                          now_ms=10_000, rand=0.5)
    assert (first.state, first.retries_used, first.next_attempt_at, first.reason) == (
        S.RETRYING, 1, 11_000, "RetryScheduled")
    second = after_failure(retries=2, retries_used=1, retryable=True, interrupted=False, backoff=backoff,
                           now_ms=10_000, rand=0.5)
    assert (second.state, second.retries_used, second.next_attempt_at) == (S.RETRYING, 2, 12_000)
    spent = after_failure(retries=2, retries_used=2, retryable=True, interrupted=False, backoff=backoff,
                          now_ms=10_000, rand=0.5)
    assert (spent.state, spent.next_attempt_at, spent.reason) == (S.FAILED, None, "StepFailed")


def test_non_retryable_failures_fail_at_once_and_interruptions_do_not_use_the_budget() -> None:
    backoff = Backoff()
    fatal = after_failure(retries=5, retries_used=0, retryable=False, interrupted=False, backoff=backoff,
                          now_ms=0, rand=0.1)
    assert fatal.state is S.FAILED
    lost = after_failure(retries=0, retries_used=0, retryable=True, interrupted=True, backoff=backoff,
                         now_ms=500, rand=0.1)
    assert (lost.state, lost.retries_used, lost.next_attempt_at, lost.reason) == (S.RETRYING, 0, 500,
                                                                                  "Interrupted")


def test_readiness() -> None:
    assert readiness([]) is Readiness.READY
    assert readiness([S.SUCCEEDED, S.CACHED]) is Readiness.READY
    assert readiness([S.SUCCEEDED, S.RUNNING]) is Readiness.WAIT
    assert readiness([S.RETRYING, S.FAILED]) is Readiness.SKIP
    assert readiness([S.SKIPPED, S.CANCELLED]) is Readiness.SKIP
    assert readiness([S.CANCELLED, S.SUCCEEDED]) is Readiness.CANCEL
    assert readiness([S.CANCELLED, S.PENDING]) is Readiness.CANCEL


def test_map_outcome() -> None:
    assert map_outcome([]) is S.SUCCEEDED
    assert map_outcome([S.SUCCEEDED, S.CACHED]) is S.SUCCEEDED
    assert map_outcome([S.SUCCEEDED, S.RUNNING]) is None
    assert map_outcome([S.FAILED, S.SUCCEEDED]) is S.FAILED
    assert map_outcome([S.CANCELLED, S.SUCCEEDED]) is S.CANCELLED
    assert map_outcome([S.CANCELLED, S.SKIPPED]) is S.FAILED


def test_run_status() -> None:
    assert run_status([S.SUCCEEDED, S.CACHED]) is RunStatus.SUCCEEDED
    assert run_status([S.SUCCEEDED, S.QUEUED]) is RunStatus.RUNNING
    assert run_status([S.FAILED, S.SKIPPED, S.SUCCEEDED]) is RunStatus.FAILED
    assert run_status([S.CANCELLED, S.FAILED]) is RunStatus.CANCELLED
    assert run_status([S.SUCCEEDED], cancel_requested=True) is RunStatus.CANCELLED
    assert run_status([]) is RunStatus.SUCCEEDED


def test_reset_and_cancel_sets() -> None:
    states = {"a": S.SUCCEEDED, "b": S.FAILED, "c": S.SKIPPED, "d": S.CANCELLED, "e": S.CACHED, "f": S.RUNNING,
              "g": S.PENDING, "h": S.RETRYING, "i": S.QUEUED}
    assert to_reset(states) == ["b", "c", "d"]
    assert to_cancel(states) == ["f", "g", "h", "i"]
