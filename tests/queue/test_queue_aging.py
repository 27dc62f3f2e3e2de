"""Ordering across ClusterQueues, and the aging rule that bounds every workload's wait."""

from __future__ import annotations

from dataclasses import replace

import pytest
from queue_helpers import Cluster, config, gpu_queues, wl

from capstan.errors import InvalidParameterValue
from capstan.queue.config import DEFAULT_AGING_SECONDS, DEFAULT_HOLD_SECONDS
from capstan.queue.model import QueueConfig, Reason


def pooled(aging: float | None, *queues: tuple[str, float], hold: float | None = None) -> QueueConfig:
    """Queues with no quota of their own borrowing from a lender ``pool``; aging and hold limits as given."""
    return replace(gpu_queues(*queues, ("pool", 4)), aging_seconds=aging, hold_seconds=hold)


def test_tied_creation_times_are_ordered_by_submission_across_queues() -> None:
    # Both heads must borrow, and were created in the same second: the one submitted first goes first,
    # whatever the order the queues are visited in (sorted names would put "a" first).
    for first, second in (("z", "a"), ("a", "z")):
        cluster = Cluster(pooled(None, ("a", 0), ("z", 0)))
        cluster.submit(wl("w1", first, gpu=4, created=5.0), wl("w2", second, gpu=4, created=5.0))
        result = cluster.cycle()
        assert [a.workload.id for a in result.admitted] == ["w1"]
        assert [a.cluster_queue for a in result.admitted] == [first]


def test_tied_sequence_order_holds_within_a_queue_too() -> None:
    cluster = Cluster(pooled(None, ("a", 0)))
    cluster.submit(wl("w1", "a", gpu=4, created=5.0), wl("w2", "a", gpu=4, created=5.0))
    assert [a.workload.id for a in cluster.cycle().admitted] == ["w1"]


def starving(aging: float | None, hold: float | None) -> tuple[Cluster, list[str]]:
    """A 4-GPU job behind a stream of high-priority 1-GPU jobs that always keep one GPU busy."""
    cluster = Cluster(pooled(aging, ("a", 0), hold=hold))
    cluster.submit(wl("big", "a", gpu=4, created=0.0))
    cluster.admit_now(wl("s0", "a", gpu=1, priority=10, created=0.0))
    log: list[str] = []
    for step in range(1, 20):
        cluster.now = step * 10.0
        # One running small job ends, another one arrives: without aging a small one always takes the freed GPU
        # (backfill), so "big" never sees 4 free GPUs.
        running = sorted(w for w in cluster.state.admissions if w.startswith("s"))
        if running:
            cluster.state.release(running[0])
        cluster.submit(wl(f"s{step}", "a", gpu=1, priority=10, created=cluster.now))
        log.extend(a.workload.id for a in cluster.cycle().admitted)
    return cluster, log


def test_without_aging_a_large_job_starves_behind_small_ones() -> None:
    cluster, log = starving(None, None)
    assert "big" not in log
    assert "big" in cluster.pending


def test_aged_workload_is_promoted_ahead_of_priority() -> None:
    # Aged at t=5: when the running small job ends at t=10 "big" is tried first, before the priority-10 "s1".
    _cluster, log = starving(5.0, None)
    assert log == ["big"]


def test_aging_hold_bounds_the_wait_of_a_large_job() -> None:
    cluster, log = starving(55.0, 55.0)
    # "big" reaches the hold limit at t=60 (pending since 0): from then on no small job starts before it, and
    # it starts as soon as the small job running then ends.
    assert log == ["s1", "s2", "s3", "s4", "s5", "big"]
    assert "big" not in cluster.pending


def test_aged_workload_holds_its_cohort_tree_and_says_so() -> None:
    cluster = Cluster(pooled(10.0, ("a", 0), ("b", 0), hold=30.0))
    cluster.admit_now(wl("run", "b", gpu=2, created=-100.0))
    cluster.submit(wl("old", "a", gpu=4, created=0.0), wl("young", "b", gpu=1, created=40.0))
    cluster.now = 45.0
    result = cluster.cycle()
    assert not result.admitted  # "young" would fit, but "old" has waited 45 s > 30 s and holds the tree
    verdicts = {p.workload: p for p in result.pending}
    assert "aged" in verdicts["old"].message
    assert verdicts["young"].reason is Reason.BLOCKED_BY_HEAD_OF_QUEUE
    assert "held for old" in verdicts["young"].message
    cluster.state.release("run")
    result = cluster.cycle()
    assert [a.workload.id for a in result.admitted] == ["old"]


def test_aged_workloads_go_oldest_first_ahead_of_priority() -> None:
    cluster = Cluster(pooled(10.0, ("a", 0), ("b", 0)))
    cluster.submit(wl("vip", "a", gpu=4, priority=100, created=50.0), wl("old", "b", gpu=4, created=1.0),
                   wl("older", "b", gpu=4, created=0.5))
    cluster.now = 60.0
    assert [a.workload.id for a in cluster.cycle().admitted] == ["older"]


def test_aging_does_not_hold_other_cohort_trees() -> None:
    cfg = replace(gpu_queues(("a", 0), ("pool", 1)), aging_seconds=10.0, hold_seconds=10.0)
    cfg = replace(cfg, cluster_queues=(*cfg.cluster_queues, replace(cfg.cluster_queues[0], name="solo", cohort=None,
                                       resource_groups=cfg.cluster_queues[1].resource_groups)))
    cluster = Cluster(cfg)
    cluster.submit(wl("old", "a", gpu=4, created=0.0), replace(wl("other", "a", gpu=1, created=50.0),
                                                                 queue="solo", cluster_queue="solo"))
    cluster.now = 60.0
    assert [a.workload.id for a in cluster.cycle().admitted] == ["other"]


def test_aging_configuration() -> None:
    base = "flavors: [{name: a100}]\n"
    default = config(base)
    assert (default.aging_seconds, default.hold_seconds) == (DEFAULT_AGING_SECONDS, DEFAULT_HOLD_SECONDS)
    set_both = config(base + "aging: {afterSeconds: 600, holdAfterSeconds: 700}\n")
    assert (set_both.aging_seconds, set_both.hold_seconds) == (600.0, 700.0)
    off = config(base + "aging: {enable: false}\n")
    assert (off.aging_seconds, off.hold_seconds) == (None, None)
    for bad, msg in (("{afterSeconds: 0}", "aging.afterSeconds"), ("{afterSeconds: soon}", "aging.afterSeconds"),
                     ("{enable: 1}", "aging.enable"), ("{enable: false, afterSeconds: 5}", "no effect"),
                     ("{after: 5}", "unknown field"), ("{afterSeconds: 10, holdAfterSeconds: 5}", "at least")):
        with pytest.raises(InvalidParameterValue, match=msg):
            config(base + f"aging: {bad}\n")


def test_a_workload_past_the_hold_limit_may_preempt_as_the_top_priority() -> None:
    # "b" borrows a's quota with a high-priority job; a's low-priority job cannot reclaim it, promoted (t=20) or
    # not, until it reaches the hold limit (t=50).
    cfg = replace(gpu_queues(("a", 2), ("b", 2), preemption="{reclaimWithinCohort: LowerPriority}"),
                  aging_seconds=20.0, hold_seconds=50.0)
    cluster = Cluster(cfg)
    cluster.admit_now(wl("borrower", "b", gpu=4, priority=100, created=-10.0))
    cluster.submit(wl("lender", "a", gpu=2, priority=0, created=0.0))
    for now in (10.0, 30.0):
        cluster.now = now
        assert not cluster.cycle(apply=False).preempted
    cluster.now = 60.0
    assert [p.victim for p in cluster.cycle(apply=False).preempted] == ["borrower"]
