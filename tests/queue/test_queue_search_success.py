"""Whether a victim search succeeds depends on time only through minimum run times (decision 0790), so the
simulator runs cycles only at instants where something can change."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from queue_helpers import config, gpu_queues, wl
from test_queue_victim_search_speed import busy_trace

from capstan.queue import simulate
from capstan.queue.engine import schedule
from capstan.queue.model import Admission, CycleResult
from capstan.queue.pending import PendingQueues
from capstan.queue.simulate import POLICIES, SimSettings, replay
from capstan.queue.state import ClusterState, Topology
from capstan.queue.trace import TraceJob

RECLAIM = "{reclaimWithinCohort: Any}"


def lenders(small_first: bool, saved: str) -> ClusterState:
    """``a`` (10 GPUs) lends to ``b`` (6, running 8 + 2 GPUs: borrows 4) and ``c`` (2, running 8: borrows 6, but
    its job is within its minimum run time until t=1095). ``small_first``: the 2-GPU job of ``b`` was admitted
    first. ``saved`` names the job of ``b`` that saved a checkpoint at t=99.9 (it then loses least at t=100)."""
    state = ClusterState(Topology(gpu_queues(("a", 10), ("b", 6), ("c", 2), preemption=RECLAIM)))
    order = [("b-small", 2), ("b-big", 8)] if small_first else [("b-big", 8), ("b-small", 2)]
    for at, (name, gpus) in enumerate(order):
        state.admit(Admission(wl(name, "b", gpu=gpus), "b", (), {("a100", "gpu"): gpus * 1000}, float(at)))
    young = replace(wl("c-young", "c", gpu=8), min_run_seconds=1000.0)
    state.admit(Admission(young, "c", (), {("a100", "gpu"): 8000}, 95.0))
    state.record_checkpoint(saved, 99.9)
    return state


def cycle(state: ClusterState) -> CycleResult:
    pending = PendingQueues()
    pending.push(wl("owner", "a", gpu=9, created=100.0))  # within a's nominal quota; 9 GPUs are missing
    return schedule(state, pending, 100.0, explain=False)


@pytest.mark.parametrize("saved", ["b-small", "b-big"])
def test_a_search_that_can_succeed_does_whichever_victim_saved_last(saved: str) -> None:
    # Taking b's jobs newest first (2 GPUs, then 8 while b still borrows) frees 10 GPUs. When b-big loses least,
    # the least-lost-work order takes it first and b stops borrowing at 8 GPUs freed: both must go all the same.
    state = lenders(small_first=False, saved=saved)
    result = cycle(state)
    assert sorted(p.victim for p in result.preempted) == ["b-big", "b-small"]
    assert result.wake_at == 1095.0  # c-young was passed over


@pytest.mark.parametrize("saved", ["b-small", "b-big"])
def test_a_search_that_cannot_succeed_is_refused_whichever_victim_saved_last(saved: str) -> None:
    # Newest first, b-big goes first and b stops borrowing at 8 GPUs freed: 9 are missing. Taking b-small first
    # (when it loses least) would free 10, but success must not depend on which job checkpointed last.
    state = lenders(small_first=True, saved=saved)
    result = cycle(state)
    assert not result.preempted
    assert result.wake_at == 1095.0  # once c-young may go, the search may succeed


def test_victims_are_still_those_that_lose_least() -> None:
    state = ClusterState(Topology(gpu_queues(("a", 10), ("b", 2), preemption=RECLAIM)))
    for at, name in enumerate(("b-1", "b-2", "b-3")):
        state.admit(Admission(wl(name, "b", gpu=2), "b", (), {("a100", "gpu"): 2000}, float(at)))
    for name, saved in (("b-1", 99.0), ("b-2", 50.0), ("b-3", 90.0)):
        state.record_checkpoint(name, saved)
    pending = PendingQueues()
    pending.push(wl("owner", "a", gpu=8, created=100.0))  # 4 GPUs free, 2 missing: one victim
    result = schedule(state, pending, 100.0, explain=False)
    assert [p.victim for p in result.preempted] == ["b-1"]
    assert result.wake_at is None


def with_idle_instants(jobs: list[TraceJob], every: float) -> list[TraceJob]:
    """The jobs plus GPU-less ones every ``every`` seconds: instants at which nothing changes for the queue."""
    end = max(j.submit for j in jobs) + 4000.0
    idle = [TraceJob(f"idle{i}", i * every, 1.0, 0, "a") for i in range(int(end // every))]
    return sorted(jobs + idle, key=lambda j: j.submit)


@pytest.mark.parametrize("name", ["capstan-las", "capstan-small-first-reclaim"])
def test_skipping_instants_where_nothing_changes_changes_nothing(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    base = replace(gpu_queues(("a", 8), ("b", 6), ("c", 4)), aging_seconds=1500.0, hold_seconds=4000.0)
    settings = SimSettings(checkpoint_interval_s=120.0, restart_overhead_s=10.0, requeue_backoff_s=5.0,
                           min_run_s=300.0, las_thresholds_gpu_hours=(0.2, 1.0))
    jobs = with_idle_instants(busy_trace(), 7.0)
    cycles = [0]

    def counted(state: ClusterState, pending: PendingQueues, now: float, **options: Any) -> CycleResult:
        cycles[0] += 1
        return schedule(state, pending, now, **options)

    monkeypatch.setattr(simulate, "schedule", counted)
    sparse = replay(base, jobs, POLICIES[name], settings)
    sparse_cycles = cycles[0]
    cycles[0] = 0
    monkeypatch.setattr(simulate, "_SKIP_UNCHANGED", False)
    dense = replay(base, jobs, POLICIES[name], settings)
    assert sparse.preemptions > 0
    assert cycles[0] > 2 * sparse_cycles  # a cycle every 7 s and at every event, against only where needed
    assert sparse.admission_order == dense.admission_order
    assert sparse.jct_by_job == dense.jct_by_job
    assert sparse.wasted_gpu_hours == dense.wasted_gpu_hours


def test_a_refusal_is_remembered_until_a_protection_it_met_ends() -> None:
    state = ClusterState(Topology(gpu_queues(("a", 4), cohort=None, preemption="{withinClusterQueue: LowerPriority}")))
    young = replace(wl("young", "a", gpu=4), min_run_seconds=3.0)
    state.admit(Admission(young, "a", (), {("a100", "gpu"): 4000}, 0.0))
    pending = PendingQueues()
    pending.push(wl("urgent", "a", gpu=4, priority=100, created=1.0))
    for now in (1.0, 2.0, 2.5):  # nothing changes but the time: the refusal stands, and is remembered
        result = schedule(state, pending, now, explain=False)
        assert not result.decisions and result.wake_at == 3.0
        assert "a" not in result.blocked
        pending.mark_futile(result.futile)
        assert pending.futile_at("a") is not None
    result = schedule(state, pending, 3.0, explain=False)
    assert [p.victim for p in result.preempted] == ["young"]


def test_a_lender_borrowing_one_resource_may_free_more_of_another_than_its_largest_workload() -> None:
    # b borrows GPUs only (4 over a nominal 0) and uses its whole CPU quota; c borrows the 4 CPUs a lacks, at a
    # priority a may not preempt. a's job fits its nominal quota and lacks 4 CPUs. b loses workloads while it
    # still borrows a resource both need (GPUs), and each frees 2 CPUs: two of them must go. A bound capping
    # b's CPUs at its CPU excess (none) plus its largest workload's (2) refused this search.
    def cq(name: str, extra: str, cpu: int, gpu: int) -> str:
        return (f"  - {{name: {name}, cohort: research, {extra}resourceGroups: [{{coveredResources: [cpu, gpu], "
                f"flavors: [{{name: f, resources: [{{name: cpu, nominalQuota: {cpu}}}, "
                f"{{name: gpu, nominalQuota: {gpu}}}]}}]}}]}}")

    cfg = config("\n".join([
        "flavors: [{name: f}]", "cohorts: [{name: research}]", "clusterQueues:",
        cq("a", "preemption: {reclaimWithinCohort: LowerPriority}, ", 8, 6), cq("b", "", 8, 0), cq("c", "", 0, 0),
        "localQueues: [{name: a, clusterQueue: a}, {name: b, clusterQueue: b}, {name: c, clusterQueue: c}]", ""]))
    state = ClusterState(Topology(cfg))
    for at, name in enumerate(("b-1", "b-2", "b-3", "b-4")):
        state.admit(Admission(wl(name, "b", gpu=1, cpu="2", priority=-1), "b", (),
                              {("f", "gpu"): 1000, ("f", "cpu"): 2000}, float(at)))
    state.admit(Admission(wl("c-1", "c", gpu=0, cpu="4", priority=10), "c", (), {("f", "cpu"): 4000}, 5.0))
    pending = PendingQueues()
    pending.push(wl("owner", "a", gpu=2, cpu="8", created=100.0))
    result = schedule(state, pending, 100.0, explain=False)
    victims = sorted(p.victim for p in result.preempted)
    assert len(victims) == 2 and all(v.startswith("b-") for v in victims)
