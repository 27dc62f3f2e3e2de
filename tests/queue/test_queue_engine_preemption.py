"""Each preemption policy, with Kueue semantics."""

from __future__ import annotations

import pytest
from queue_helpers import Cluster, gpu_queues, wl

from capstan.queue.model import Reason

WITHIN = "{withinClusterQueue: %s}"

# (case, policy, victim priority, victim created, preemptor priority, preemptor created, preempts?)
WITHIN_CASES = [
    ("Never never preempts", "Never", 0, 0, 100, 1, False),
    ("LowerPriority preempts lower", "LowerPriority", 0, 0, 100, 1, True),
    ("LowerPriority spares equal", "LowerPriority", 100, 1, 100, 0, False),
    ("LowerOrNewerEqualPriority preempts newer equal", "LowerOrNewerEqualPriority", 100, 5, 100, 0, True),
    ("LowerOrNewerEqualPriority spares older equal", "LowerOrNewerEqualPriority", 100, 0, 100, 5, False),
    ("LowerOrNewerEqualPriority spares higher", "LowerOrNewerEqualPriority", 200, 5, 100, 0, False),
]


@pytest.mark.parametrize(("case", "policy", "vp", "vc", "pp", "pc", "preempts"), WITHIN_CASES,
                         ids=[c[0] for c in WITHIN_CASES])
def test_within_cluster_queue(case: str, policy: str, vp: int, vc: float, pp: int, pc: float,
                              preempts: bool) -> None:
    cluster = Cluster(gpu_queues(("a", 4), cohort=None, preemption=WITHIN % policy))
    cluster.admit_now(wl("victim", "a", gpu=4, priority=vp, created=vc))
    cluster.submit(wl("new", "a", gpu=2, priority=pp, created=pc))
    result = cluster.cycle()
    assert [p.victim for p in result.preempted] == (["victim"] if preempts else [])
    verdict = result.pending[0]
    assert verdict.reason is (Reason.WAITING_FOR_PREEMPTION if preempts else Reason.WAITING_FOR_QUOTA)
    if preempts:
        assert result.preempted[0].reason == "InClusterQueue"
        assert [a.workload.id for a in cluster.cycle().admitted] == ["new"]


def test_preempts_the_fewest_lowest_priority_newest_workloads() -> None:
    cluster = Cluster(gpu_queues(("a", 4), cohort=None, preemption=WITHIN % "LowerPriority"))
    cluster.admit_now(wl("old-low", "a", gpu=1, priority=0, created=0))
    cluster.admit_now(wl("new-low", "a", gpu=1, priority=0, created=1))
    cluster.admit_now(wl("mid", "a", gpu=2, priority=50, created=2))
    cluster.submit(wl("high", "a", gpu=1, priority=100, created=3))
    assert [p.victim for p in cluster.cycle().preempted] == ["new-low"]


def test_minimal_set_puts_back_unneeded_victims() -> None:
    cluster = Cluster(gpu_queues(("a", 4), cohort=None, preemption=WITHIN % "LowerPriority"))
    cluster.admit_now(wl("small", "a", gpu=1, priority=0, created=0))
    cluster.admit_now(wl("big", "a", gpu=3, priority=10, created=1))
    cluster.submit(wl("high", "a", gpu=3, priority=100, created=3))
    # small goes first (lowest priority) but only big's eviction is actually needed.
    assert [p.victim for p in cluster.cycle().preempted] == ["big"]


RECLAIM = "{reclaimWithinCohort: %s}"

# (case, reclaim policy, borrower's priority, preemptor priority, preempts?)
RECLAIM_CASES = [
    ("Never keeps borrowed quota", "Never", 0, 100, False),
    ("Any reclaims from any priority", "Any", 1000, 0, True),
    ("LowerPriority reclaims from lower", "LowerPriority", 0, 100, True),
    ("LowerPriority spares higher", "LowerPriority", 1000, 100, False),
]


@pytest.mark.parametrize(("case", "policy", "bp", "pp", "preempts"), RECLAIM_CASES,
                         ids=[c[0] for c in RECLAIM_CASES])
def test_reclaim_within_cohort(case: str, policy: str, bp: int, pp: int, preempts: bool) -> None:
    cluster = Cluster(gpu_queues(("a", 4), ("b", 4), preemption=RECLAIM % policy))
    cluster.admit_now(wl("borrower", "b", gpu=8, priority=bp))
    cluster.submit(wl("owner", "a", gpu=4, priority=pp, created=1))
    result = cluster.cycle()
    assert [p.victim for p in result.preempted] == (["borrower"] if preempts else [])
    if preempts:
        assert result.preempted[0].reason == "InCohortReclamation"


def test_reclaim_only_takes_from_queues_above_nominal() -> None:
    cluster = Cluster(gpu_queues(("a", 4), ("b", 4), ("c", 4), preemption=RECLAIM % "Any"))
    cluster.admit_now(wl("b-own", "b", gpu=4, created=0))
    cluster.admit_now(wl("c-borrow", "c", gpu=8, created=1))
    cluster.submit(wl("owner", "a", gpu=4, priority=0, created=2))
    assert [p.victim for p in cluster.cycle().preempted] == ["c-borrow"]


BORROW_WITHIN = "{reclaimWithinCohort: Any, borrowWithinCohort: {policy: LowerPriority%s}}"

# (case, threshold, victim priority, preempts?)
BORROW_WITHIN_CASES = [
    ("preempts lower priority while borrowing", "", 0, True),
    ("threshold protects higher victims", ", maxPriorityThreshold: 10", 50, False),
    ("threshold allows victims at or below it", ", maxPriorityThreshold: 50", 50, True),
]


@pytest.mark.parametrize(("case", "threshold", "vp", "preempts"), BORROW_WITHIN_CASES,
                         ids=[c[0] for c in BORROW_WITHIN_CASES])
def test_borrow_within_cohort(case: str, threshold: str, vp: int, preempts: bool) -> None:
    cluster = Cluster(gpu_queues(("a", 2), ("b", 2), ("c", 4), preemption=BORROW_WITHIN % threshold))
    cluster.admit_now(wl("c-own", "c", gpu=4, priority=vp, created=0))
    cluster.admit_now(wl("b-borrow", "b", gpu=4, priority=vp, created=1))  # b borrows 2
    cluster.submit(wl("needs-borrow", "a", gpu=4, priority=100, created=2))  # a must borrow 2 as well
    result = cluster.cycle()
    assert [p.victim for p in result.preempted] == (["b-borrow"] if preempts else [])
    if preempts:
        assert result.preempted[0].reason == "InCohortReclaimWhileBorrowing"


def test_without_borrow_within_cohort_a_borrowing_preemptor_cannot_preempt_other_queues() -> None:
    cluster = Cluster(gpu_queues(("a", 2), ("b", 2), ("c", 4), preemption=RECLAIM % "Any"))
    cluster.admit_now(wl("c-own", "c", gpu=4, created=0))
    cluster.admit_now(wl("b-borrow", "b", gpu=4, created=1))
    cluster.submit(wl("needs-borrow", "a", gpu=4, priority=100, created=2))
    result = cluster.cycle()
    assert not result.preempted
    assert result.pending[0].reason is Reason.WAITING_FOR_QUOTA


def test_freed_quota_is_reserved_for_the_preemptor_in_the_same_cycle() -> None:
    cluster = Cluster(gpu_queues(("a", 4), ("b", 4), preemption=RECLAIM % "Any"))
    cluster.admit_now(wl("borrower", "b", gpu=8))
    cluster.submit(wl("owner", "a", gpu=4, priority=0, created=1), wl("b-more", "b", gpu=5, created=2))
    result = cluster.cycle(apply=False)
    assert [p.victim for p in result.preempted] == ["borrower"]
    assert not result.admitted  # b-more must not take what the eviction frees for owner
