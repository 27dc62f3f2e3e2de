"""The round's pure decisions (`capstan.pipelines.planner`), called directly with plain step records: no
database, no executor, no clock."""

from __future__ import annotations

from dataclasses import dataclass, field

from capstan.pipelines import planner
from capstan.pipelines import state as sm
from capstan.pipelines.execution import INTERRUPTED
from capstan.pipelines.state import Backoff, Readiness, StepState
from capstan.resources.admission import PREEMPTED

S = StepState
NO_JITTER = Backoff(base_s=1, factor=2, max_s=60, jitter=0)


@dataclass
class Map:
    max_parallel: int | None


@dataclass
class Options:
    cache: bool = False


@dataclass
class Spec:
    options: Options = field(default_factory=Options)


CACHED_SPEC = Spec(Options(cache=True))


@dataclass
class Node:
    id: str
    seq: int = 0
    parent: str | None = None
    map: Map | None = None
    deps: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    step: Spec = field(default_factory=Spec)


@dataclass
class Step:
    node: Node
    state: StepState = S.PENDING
    next_attempt_at: int | None = None
    deadline: float | None = None
    running_children: int = 0
    waiting: int = 0
    reason: str = ""
    message: str = ""


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


# -- the cascade: released and re-evaluated dependents -------------------------------------------------------------

def test_a_success_releases_its_pending_dependents_by_one_step() -> None:
    recs = steps(Step(Node("a"), S.SUCCEEDED), Step(Node("last", deps=["a"]), waiting=1),
                 Step(Node("more", deps=["a", "x"]), waiting=2), Step(Node("gone", deps=["a"]), S.SKIPPED))
    assert planner.released(["last", "more", "gone"], recs) == [("last", 0), ("more", 1)]
    assert planner.released([], recs) == []


def test_a_step_that_did_not_succeed_has_its_pending_dependents_judged_lazily() -> None:
    recs = steps(Step(Node("f"), S.FAILED), Step(Node("a", deps=["f"])), Step(Node("b", deps=["f", "a"])),
                 Step(Node("done", deps=["f"]), S.SKIPPED))
    walk = iter(planner.to_reevaluate(recs["f"], ["a", "b", "done"], recs))
    assert next(walk) == ("a", (Readiness.SKIP, 0))
    recs["b"].state = S.SKIPPED  # what skipping "a" cascaded to: "b" is passed over
    assert list(walk) == []
    recs["c"] = Step(Node("c", deps=["x"]))
    recs["x"] = Step(Node("x"), S.CANCELLED)
    assert list(planner.to_reevaluate(recs["x"], ["c"], recs)) == [("c", (Readiness.CANCEL, 0))]


def test_a_success_has_nothing_to_reevaluate() -> None:
    recs = steps(Step(Node("a"), S.SUCCEEDED), Step(Node("b", deps=["a"])))
    assert list(planner.to_reevaluate(recs["a"], ["b"], recs)) == []


def test_items_of_a_map_that_is_not_running_are_not_reevaluated() -> None:
    recs = steps(Step(Node("f"), S.FAILED), Step(Node("m", map=Map(None)), S.FAILED),
                 Step(Node("m[0]", parent="m", deps=["f"])))
    assert list(planner.to_reevaluate(recs["f"], ["m[0]"], recs)) == []


def test_a_skip_names_the_first_upstream_step_that_did_not_succeed() -> None:
    recs = steps(Step(Node("ok"), S.SUCCEEDED), Step(Node("bad"), S.SKIPPED), Step(Node("worse"), S.FAILED),
                 Step(Node("p", deps=["ok", "bad", "worse"])))
    assert planner.upstream_failure(recs["p"], recs) == "upstream step 'bad' did not succeed"


def test_kept_values_are_dropped_once_every_reader_is_terminal() -> None:
    recs = steps(Step(Node("u"), S.SUCCEEDED), Step(Node("v"), S.SUCCEEDED), Step(Node("w"), S.SUCCEEDED),
                 Step(Node("a", deps=["u", "v", "w"]), S.SUCCEEDED), Step(Node("b", deps=["v"]), S.RUNNING))
    dependents = {"u": ["a"], "v": ["a", "b"], "w": ["a"]}
    assert planner.droppable_values(recs["a"], {"u", "v"}, dependents, recs) == ["u"]


# -- ready steps and the cache -------------------------------------------------------------------------------------

def test_ready_steps_are_expanded_looked_up_or_queued_in_order() -> None:
    recs = steps(Step(Node("m", map=Map(None))), Step(Node("plain")), Step(Node("keyed", step=CACHED_SPEC)),
                 Step(Node("nokey", step=CACHED_SPEC)), Step(Node("gone"), S.QUEUED))
    keys = {"keyed": "k1", "nokey": None}
    asked: list[str] = []

    def key_of(sid: str) -> str | None:
        asked.append(sid)
        return keys[sid]

    plan = planner.plan_ready(["m", "plain", "gone", "keyed", "nokey", "keyed"], recs, no_cache=False,
                              key_of=key_of)
    assert plan == [("m", planner.EXPAND, None), ("plain", planner.QUEUE, None), ("keyed", planner.LOOKUP, "k1"),
                    ("nokey", planner.QUEUE_KEYED, None)]
    assert asked == ["keyed", "nokey"]  # keys only for cacheable steps, each once


def test_a_run_that_ignores_the_cache_records_keys_without_looking_them_up() -> None:
    recs = steps(Step(Node("keyed", step=CACHED_SPEC)))
    assert planner.plan_ready(["keyed"], recs, no_cache=True, key_of=lambda sid: "k1") == [
        ("keyed", planner.QUEUE_KEYED, "k1")]


def test_only_hits_whose_output_still_exists_are_reused() -> None:
    hit = {"exists": True, "run_id": "r0", "step_id": "s"}
    hits = {"k1": hit, "k2": {**hit, "exists": False}}
    assert planner.after_lookup([("a", "k1"), ("b", "k2"), ("c", "k3")], hits) == [("a", hit), ("b", None),
                                                                                    ("c", None)]


# -- maps and the run's end ----------------------------------------------------------------------------------------

def a_map(*states: StepState, reasons: tuple[str, ...] = ()) -> dict[str, Step]:
    children = [f"m[{i}]" for i in range(len(states))]
    return steps(Step(Node("m", map=Map(None), children=children), S.RUNNING),
                 *(Step(Node(c, parent="m"), state, reason=reasons[i] if i < len(reasons) else "")
                   for i, (c, state) in enumerate(zip(children, states, strict=True))))


def test_a_map_completes_only_when_every_item_is_terminal() -> None:
    recs = a_map(S.SUCCEEDED, S.RUNNING)
    assert planner.map_completion(recs["m"], recs) is None
    recs = a_map(S.SUCCEEDED, S.CACHED)
    assert planner.map_completion(recs["m"], recs) == planner.MapCompletion(S.SUCCEEDED, 2)
    recs = a_map()
    assert planner.map_completion(recs["m"], recs) == planner.MapCompletion(S.SUCCEEDED, 0)


def test_a_map_fails_with_its_first_failed_or_skipped_item_else_is_cancelled() -> None:
    recs = a_map(S.CANCELLED, S.SKIPPED, S.FAILED, reasons=("", "UpstreamFailed", "Exception"))
    assert planner.map_completion(recs["m"], recs) == planner.MapCompletion(
        S.FAILED, 3, "ChildFailed", "item 'm[1]' failed: UpstreamFailed")
    recs = a_map(S.SUCCEEDED, S.CANCELLED)
    assert planner.map_completion(recs["m"], recs) == planner.MapCompletion(S.CANCELLED, 2)


def test_a_map_that_does_not_run_is_not_completed() -> None:
    recs = a_map(S.SUCCEEDED)
    recs["m"].state = S.CANCELLED
    assert planner.map_completion(recs["m"], recs) is None


def test_a_run_ends_only_when_no_step_is_open() -> None:
    recs = steps(Step(Node("a"), S.SUCCEEDED), Step(Node("b"), S.CACHED))
    assert planner.run_completion(1, recs.values(), cancel_requested=False, cancel_message="") is None
    end = planner.run_completion(0, recs.values(), cancel_requested=False, cancel_message="x")
    assert end == planner.RunCompletion(sm.RunStatus.SUCCEEDED, "", "PipelineRunSucceeded")
    assert end is not None and not end.warning


def test_a_failed_run_names_its_first_failed_ordinary_step() -> None:
    recs = steps(Step(Node("m", map=Map(None)), S.FAILED, reason="ChildFailed", message="item"),
                 Step(Node("a"), S.SKIPPED), Step(Node("b"), S.FAILED, reason="Exception", message="boom"))
    end = planner.run_completion(0, recs.values(), cancel_requested=False, cancel_message="")
    assert end == planner.RunCompletion(sm.RunStatus.FAILED, "step 'b' failed: Exception: boom", "PipelineRunFailed")
    assert end.warning
    recs.pop("b")
    end = planner.run_completion(0, recs.values(), cancel_requested=False, cancel_message="")
    assert end is not None and end.message == "step 'm' failed: ChildFailed: item"


def test_a_cancelled_run_carries_the_cancel_message() -> None:
    recs = steps(Step(Node("a"), S.FAILED, reason="Exception", message="boom"), Step(Node("b"), S.CANCELLED))
    end = planner.run_completion(0, recs.values(), cancel_requested=False, cancel_message="interrupted")
    assert end == planner.RunCompletion(sm.RunStatus.CANCELLED, "interrupted", "PipelineRunCancelled")
    recs = steps(Step(Node("a"), S.SUCCEEDED))
    end = planner.run_completion(0, recs.values(), cancel_requested=True, cancel_message="cancelled by request")
    assert end is not None and end.status is sm.RunStatus.CANCELLED
