"""The round's pure decisions (`capstan.pipelines.planner`), called directly with plain step records: no
database, no executor, no clock."""

from __future__ import annotations

from dataclasses import dataclass, field

from capstan.pipelines import planner
from capstan.pipelines.execution import INTERRUPTED
from capstan.pipelines.state import Backoff, Readiness, StepState
from capstan.resources.admission import PREEMPTED

S = StepState
NO_JITTER = Backoff(base_s=1, factor=2, max_s=60, jitter=0)


@dataclass
class Map:
    max_parallel: int | None


@dataclass
class Node:
    id: str
    seq: int = 0
    parent: str | None = None
    map: Map | None = None
    deps: list[str] = field(default_factory=list)


@dataclass
class Step:
    node: Node
    state: StepState = S.PENDING
    next_attempt_at: int | None = None
    deadline: float | None = None
    running_children: int = 0


def steps(*items: Step) -> dict[str, Step]:
    return {s.node.id: s for s in items}


# -- outcomes ----------------------------------------------------------------------------------------------------

def test_a_successful_attempt_is_a_success() -> None:
    verdict = planner.judge_outcome(ok=True, reason="", message="", retryable=False, attempt=1, preempted=None)
    assert verdict == planner.Judgement(True, "", "", False, False)


def test_a_failed_attempt_keeps_its_reason() -> None:
    verdict = planner.judge_outcome(ok=False, reason="Exception", message="ValueError: x", retryable=True,
                                    attempt=2, preempted=None)
    assert verdict == planner.Judgement(False, "Exception", "ValueError: x", True, False)


def test_a_preempted_attempt_that_failed_is_requeued_as_preempted() -> None:
    verdict = planner.judge_outcome(ok=False, reason="NonZeroExit", message="killed by SIGTERM", retryable=False,
                                    attempt=3, preempted="a higher priority workload")
    assert verdict == planner.Judgement(False, PREEMPTED, "attempt 3 was preempted: a higher priority workload",
                                        True, True)


def test_a_preempted_attempt_that_finished_within_its_grace_counts() -> None:
    verdict = planner.judge_outcome(ok=True, reason="", message="", retryable=False, attempt=1, preempted="quota")
    assert verdict.ok and not verdict.requeue


# -- retry or fail -----------------------------------------------------------------------------------------------

def test_a_retryable_failure_within_the_budget_is_retried_after_its_backoff() -> None:
    decision = planner.after_failure(reason="Exception", retryable=True, retries=2, retries_used=1,
                                     backoff=NO_JITTER, now_ms=10_000, rand=lambda: 0.5)
    assert (decision.state, decision.retries_used, decision.next_attempt_at) == (S.RETRYING, 2, 12_000)


def test_a_failure_past_the_budget_fails_the_step() -> None:
    decision = planner.after_failure(reason="Exception", retryable=True, retries=1, retries_used=1,
                                     backoff=NO_JITTER, now_ms=0, rand=lambda: 0.5)
    assert (decision.state, decision.next_attempt_at) == (S.FAILED, None)


def test_a_failure_that_is_not_retryable_fails_at_once() -> None:
    decision = planner.after_failure(reason="TypeMismatch", retryable=False, retries=5, retries_used=0,
                                     backoff=NO_JITTER, now_ms=0, rand=lambda: 0.5)
    assert decision.state is S.FAILED


def test_interrupted_and_preempted_attempts_run_again_without_using_retries() -> None:
    assert planner.INTERRUPTED == INTERRUPTED
    for reason in (INTERRUPTED, PREEMPTED):
        decision = planner.after_failure(reason=reason, retryable=False, retries=0, retries_used=0,
                                         backoff=NO_JITTER, now_ms=5_000, rand=lambda: 0.5)
        assert (decision.state, decision.retries_used, decision.next_attempt_at) == (S.RETRYING, 0, 5_000)


def test_the_jitter_is_drawn_once_per_failure() -> None:
    draws: list[float] = []

    def rand() -> float:
        draws.append(0.5)
        return 0.5

    planner.after_failure(reason="Exception", retryable=True, retries=1, retries_used=0, backoff=NO_JITTER,
                          now_ms=0, rand=rand)
    assert draws == [0.5]


# -- due retries, timeouts ---------------------------------------------------------------------------------------

def test_due_retries_come_in_graph_order_and_only_when_due() -> None:
    recs = steps(Step(Node("late", seq=1), S.RETRYING, next_attempt_at=2_000),
                 Step(Node("b", seq=3), S.RETRYING, next_attempt_at=1_000),
                 Step(Node("a", seq=2), S.RETRYING, next_attempt_at=500),
                 Step(Node("now", seq=0), S.RETRYING, next_attempt_at=None))
    assert planner.due_retries({"late", "b", "a", "now"}, recs, 1_000) == ["now", "a", "b"]
    assert planner.due_retries(set(), recs, 1_000) == []


def test_only_running_attempts_past_their_deadline_expire() -> None:
    recs = steps(Step(Node("over"), S.RUNNING, deadline=9.0), Step(Node("edge"), S.RUNNING, deadline=10.0),
                 Step(Node("fine"), S.RUNNING, deadline=11.0), Step(Node("none"), S.RUNNING),
                 Step(Node("done"), S.SUCCEEDED, deadline=1.0))
    running = {f"r/{sid}#1": sid for sid in recs}
    assert planner.expired(running, recs, 10.0) == [("r/over#1", "over"), ("r/edge#1", "edge")]


# -- admission under max_parallel --------------------------------------------------------------------------------

def test_queued_steps_ask_unless_their_map_runs_max_parallel_items() -> None:
    recs = steps(Step(Node("m", map=Map(max_parallel=3)), S.RUNNING, running_children=1),
                 Step(Node("free", map=Map(max_parallel=None)), S.RUNNING, running_children=9),
                 *(Step(Node(f"m[{i}]", parent="m"), S.QUEUED) for i in range(4)),
                 Step(Node("free[0]", parent="free"), S.QUEUED),
                 Step(Node("plain"), S.QUEUED), Step(Node("gone"), S.CANCELLED))
    asking, waiting = planner.admissible(["m[0]", "gone", "m[1]", "m[2]", "free[0]", "m[3]", "plain"], recs)
    assert asking == ["m[0]", "m[1]", "free[0]", "plain"]  # 1 running + 2 asking = the limit of 3
    assert waiting == ["m[2]", "m[3]"]


def test_nothing_queued_asks_for_nothing() -> None:
    assert planner.admissible([], {}) == ([], [])


# -- pending steps -----------------------------------------------------------------------------------------------

def upstream(*states: StepState) -> dict[str, Step]:
    return steps(*(Step(Node(f"u{i}"), state) for i, state in enumerate(states)))


def pending(recs: dict[str, Step], parent: str | None = None) -> Step:
    return Step(Node("p", parent=parent, deps=[sid for sid in recs if sid.startswith("u")]))


def test_a_step_whose_upstream_all_have_outputs_is_ready() -> None:
    recs = upstream(S.SUCCEEDED, S.CACHED)
    assert planner.pending_verdict(pending(recs), recs) == (Readiness.READY, 0)
    assert planner.pending_verdict(pending({}), {}) == (Readiness.READY, 0)  # no upstream at all


def test_a_step_waits_for_the_upstream_steps_without_output() -> None:
    recs = upstream(S.SUCCEEDED, S.RUNNING, S.RETRYING)
    assert planner.pending_verdict(pending(recs), recs) == (Readiness.WAIT, 2)


def test_a_failed_or_skipped_upstream_skips_the_step_before_a_cancelled_one_cancels_it() -> None:
    for bad in (S.FAILED, S.SKIPPED):
        recs = upstream(S.CANCELLED, bad, S.RUNNING)
        assert planner.pending_verdict(pending(recs), recs) == (Readiness.SKIP, 0)
    recs = upstream(S.CANCELLED, S.SUCCEEDED)
    assert planner.pending_verdict(pending(recs), recs) == (Readiness.CANCEL, 0)


def test_an_item_of_a_map_that_is_not_running_is_left_to_its_map() -> None:
    recs = upstream(S.SUCCEEDED)
    recs["m"] = Step(Node("m", map=Map(None)), S.FAILED)
    assert planner.pending_verdict(pending(recs, parent="m"), recs) is None
    recs["m"].state = S.RUNNING
    assert planner.pending_verdict(pending(recs, parent="m"), recs) == (Readiness.READY, 0)
