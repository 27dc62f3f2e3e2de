"""The engine's shortcuts decide nothing differently: bucket heads kept sorted, the marks a simulator may apply
(`CycleResult.settled`, `CycleResult.futile`), cached headroom, and victim searches that leave other cohort trees
alone."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from queue_helpers import Cluster, config, gpu_queues, wl

from capstan.queue.engine import never_fits, schedule
from capstan.queue.model import Admission, Admit, Decision, Preempt, Reason
from capstan.queue.pending import PendingQueues
from capstan.queue.state import ClusterState, Topology, max_available, nominal_room

# (queue, GPUs, pods, priority, created)
ops = st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(1, 4), st.integers(1, 2),
                         st.sampled_from([0, 10, 100]), st.integers(0, 5)), min_size=1, max_size=30)


@settings(max_examples=60, deadline=None)
@given(ops=ops, removals=st.lists(st.integers(0, 29), max_size=15))
def test_bucket_heads_and_cursors_follow_admission_order(ops: list[tuple[str, int, int, int, int]],
                                                         removals: list[int]) -> None:
    pending = PendingQueues()
    for i, (cq, gpus, count, prio, created) in enumerate(ops):
        pending.push(wl(f"w{i}", cq, gpu=gpus, count=count, priority=prio, created=created))
    for i in removals:
        pending.remove(f"w{i}")
    for name in pending.cluster_queues():
        queue = pending.queue(name)
        assert queue is not None
        ordered = queue.ordered()
        assert queue.head() == ordered[0]
        # The kept list of heads is exactly the sorted heads of the buckets.
        assert [(e[0], e[1], e[2]) for e in queue.heads] == sorted(b[0][0] for b in queue.buckets.values())
        cursor = queue.cursor()
        walked = []
        while not cursor.exhausted():
            walked.append(cursor.peek())
            cursor.advance()
        assert walked == ordered


POLICY = "{withinClusterQueue: LowerPriority, reclaimWithinCohort: Any, borrowWithinCohort: {policy: LowerPriority}}"

# (queue, GPUs, priority); then per step: release the oldest admission?, demote the newest admission?
arrivals = st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(1, 4), st.sampled_from([0, 100, 200])),
                    min_size=1, max_size=25)


def _replay(preempt: bool, jobs: list[tuple[str, int, int]], churn: list[tuple[bool, bool]],
            use_marks: bool, min_run: float = 0.0) -> list[list[tuple[str, str]]]:
    """Drive cycles like the simulator (every decision applied) and record the decisions of each cycle; one
    arrival per second, each workload protected from preemption for ``min_run`` seconds of running."""
    cfg = gpu_queues(("a", 4), ("b", 2), ("c", 3), preemption=POLICY if preempt else "")
    state = ClusterState(Topology(cfg))
    pending = PendingQueues()
    log: list[list[tuple[str, str]]] = []
    for step, (cq, gpus, prio) in enumerate(jobs):
        w = replace(wl(f"w{step}", cq, gpu=gpus, priority=prio, created=step), min_run_seconds=min_run)
        if never_fits(state, w) is None:
            pending.push(w)
        release, demote = churn[step % len(churn)] if churn else (False, False)
        if release and state.admissions:
            state.release(sorted(state.admissions)[0])
        if demote and state.admissions:
            state.set_priority(sorted(state.admissions)[-1], 0)
        for _round in range(50):
            result = schedule(state, pending, float(step), explain=False)
            pending.mark_blocked(result.blocked)
            if use_marks:
                pending.mark_blocked(result.settled)
                pending.mark_futile(result.futile)
            decisions: list[Decision] = list(result.decisions)
            if decisions:
                log.append([(type(d).__name__, d.victim if isinstance(d, Preempt) else
                             d.workload.id if isinstance(d, Admit) else d.workload) for d in decisions])
            for d in decisions:
                if isinstance(d, Preempt):
                    state.release(d.victim)
            for d in decisions:
                if isinstance(d, Admit):
                    pending.remove(d.workload.id)
                    state.admit(Admission(d.workload, d.cluster_queue, d.pod_sets, d.usage, float(step)))
            if not decisions:
                break
    return log


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(preempt=st.booleans(), jobs=arrivals, churn=st.lists(st.tuples(st.booleans(), st.booleans()), max_size=6))
def test_settled_and_futile_marks_change_no_decision(preempt: bool, jobs: list[tuple[str, int, int]],
                                                     churn: list[tuple[bool, bool]]) -> None:
    assert _replay(preempt, jobs, churn, use_marks=True) == _replay(preempt, jobs, churn, use_marks=False)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(jobs=arrivals, churn=st.lists(st.tuples(st.booleans(), st.booleans()), max_size=6),
       min_run=st.sampled_from([1.5, 3.0]))
def test_futile_marks_change_no_decision_with_minimum_run_times(jobs: list[tuple[str, int, int]],
                                                                churn: list[tuple[bool, bool]],
                                                                min_run: float) -> None:
    # A search refused on its whole candidate set is remembered only until a protection it met ends (0790).
    assert _replay(True, jobs, churn, True, min_run) == _replay(True, jobs, churn, False, min_run)


def test_a_queue_that_cannot_preempt_is_settled_after_admitting() -> None:
    cluster = Cluster(gpu_queues(("a", 2), cohort=None))
    cluster.submit(wl("w1", "a", gpu=2, created=0), wl("w2", "a", gpu=2, created=1))
    result = cluster.cycle()
    assert [a.workload.id for a in result.admitted] == ["w1"]
    assert result.settled == {"a": cluster.state.version("a")}


def test_a_refused_search_is_remembered_for_the_next_version() -> None:
    cluster = Cluster(gpu_queues(("a", 4), cohort=None, preemption="{withinClusterQueue: LowerPriority}"))
    cluster.admit_now(wl("big", "a", gpu=4, priority=100))
    cluster.submit(wl("needy", "a", gpu=2, priority=50))  # nothing of lower priority to take
    result = schedule(cluster.state, cluster.pending, 0.0, explain=False)
    version, workload, _report = result.futile["a"]
    assert workload.id == "needy" and version == cluster.state.version("a")
    # An explained cycle reports the search with its numbers, as ever, and remembers nothing.
    explained = schedule(cluster.state, cluster.pending, 0.0)
    assert not explained.futile and explained.pending[0].reason is Reason.WAITING_FOR_QUOTA


def test_headroom_follows_admissions_and_releases() -> None:
    cluster = Cluster(gpu_queues(("a", 4), ("b", 2)))
    state = cluster.state
    usage_before = state.headroom("a")
    cluster.admit_now(wl("x", "b", gpu=3))
    for name in ("a", "b"):
        node = state.topology.cq_nodes[name]
        assert state.headroom(name) == (nominal_room(state.topology, name, state.usage[node.idx]),
                                        max_available(state.topology, name, state.usage))
    assert state.headroom("a") != usage_before
    state.release("x")
    assert state.headroom("a") == usage_before


TWO_TREES = """
flavors: [{name: a100}]
cohorts: [{name: left}, {name: right}]
clusterQueues:
  - name: l
    cohort: left
    preemption: {withinClusterQueue: LowerPriority}
    resourceGroups: [{coveredResources: [gpu], flavors: [{name: a100, resources: [{name: gpu, nominalQuota: 2}]}]}]
  - name: r
    cohort: right
    resourceGroups: [{coveredResources: [gpu], flavors: [{name: a100, resources: [{name: gpu, nominalQuota: 4}]}]}]
localQueues: [{name: l, clusterQueue: l}, {name: r, clusterQueue: r}]
"""


def test_a_victim_search_leaves_workloads_evicted_in_another_tree_charged() -> None:
    cluster = Cluster(config(TWO_TREES))
    cluster.admit_now(wl("low", "l", gpu=2, priority=0), wl("old", "r", gpu=4))
    cluster.state.mark_evicting("old")  # still holds its 4 GPUs until it is gone
    cluster.submit(wl("urgent", "l", gpu=2, priority=100, created=1), wl("next", "r", gpu=4, created=2))
    result = cluster.cycle(apply=False)
    # The search in tree "left" preempts as before...
    assert [p.victim for p in result.preempted] == ["low"]
    # ...and does not hand tree "right" the quota of the workload being evicted there.
    assert not result.admitted
    assert {v.workload: v.reason for v in result.pending}["next"] is Reason.WAITING_FOR_QUOTA
