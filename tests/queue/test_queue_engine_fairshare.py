"""Fair sharing by dominant resource share, ordering and non-oscillating preemption."""

from __future__ import annotations

from queue_helpers import Cluster, gpu_queues, wl

from capstan.queue.preemption import dominant_share


def test_heads_are_ordered_by_dominant_share() -> None:
    cluster = Cluster(gpu_queues(("a", 2), ("b", 2), ("c", 4), fair=True))
    cluster.admit_now(wl("a-borrow", "a", gpu=4, created=0))  # a borrows 2, share 2/8
    # Both heads are equal in priority; b (share 0) goes first although a's head is older.
    cluster.submit(wl("a-next", "a", gpu=2, created=1), wl("b-next", "b", gpu=2, created=2))
    result = cluster.cycle(apply=False)
    assert result.admitted[0].workload.id == "b-next"


def test_weights_divide_the_share() -> None:
    from queue_helpers import config

    cfg = config("""
flavors: [{name: a100}]
cohorts: [{name: research}]
fairSharing: {enable: true}
clusterQueues:
  - name: a
    cohort: research
    fairSharing: {weight: 2}
    resourceGroups: [{coveredResources: [gpu], flavors: [{name: a100, resources: [{name: gpu, nominalQuota: 2}]}]}]
  - name: b
    cohort: research
    resourceGroups: [{coveredResources: [gpu], flavors: [{name: a100, resources: [{name: gpu, nominalQuota: 2}]}]}]
""")
    cluster = Cluster(cfg)
    topo = cluster.state.topology
    usage = {("a100", "gpu"): 4000}
    assert dominant_share(topo, topo.cq_nodes["a"], usage) == 0.25
    assert dominant_share(topo, topo.cq_nodes["b"], usage) == 0.5


def test_fair_share_preemption_takes_from_the_larger_share_and_never_oscillates() -> None:
    cluster = Cluster(gpu_queues(("a", 2), ("b", 2), ("c", 4), fair=True))
    for i in range(6):
        cluster.admit_now(wl(f"a{i}", "a", gpu=1, created=i))  # a uses 6: borrows 4
    cluster.admit_now(wl("c-own", "c", gpu=2, created=10))
    # b must borrow 1: its share after admission (1/8) stays at or below a's while a loses its newest three.
    cluster.submit(wl("b-big", "b", gpu=3, created=20))
    result = cluster.cycle()
    assert [p.victim for p in result.preempted] == ["a5", "a4", "a3"]
    assert {p.reason for p in result.preempted} == {"InCohortFairSharing"}
    cluster.settle()
    assert "b-big" in cluster.admitted_ids()
    # a's evicted workloads come back but may not take anything back from b.
    for victim in ("a5", "a4", "a3"):
        cluster.submit(wl(victim, "a", gpu=1, created=int(victim[1])))
    for _ in range(3):
        assert not cluster.cycle().preempted


def test_fair_share_reclaim_within_nominal_is_allowed() -> None:
    cluster = Cluster(gpu_queues(("a", 4), ("b", 4), fair=True))
    cluster.admit_now(wl("b-all", "b", gpu=8))
    cluster.submit(wl("a-own", "a", gpu=4, created=1))
    assert [p.victim for p in cluster.cycle().preempted] == ["b-all"]
