"""Hypothesis properties of the engine."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from queue_helpers import Cluster, gpu_queues, wl

from capstan.queue.engine import never_fits
from capstan.queue.state import available

QUEUES = (("a", 4), ("b", 2), ("c", 3))
LIMITS = {"a": ", borrowingLimit: 2", "c": ", lendingLimit: 1"}
POLICY = "{withinClusterQueue: LowerPriority, reclaimWithinCohort: Any, borrowWithinCohort: {policy: LowerPriority}}"

jobs = st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(1, 6), st.integers(1, 2),
                          st.sampled_from([0, 10, 100])), min_size=1, max_size=25)


def check_invariants(cluster: Cluster) -> None:
    topo = cluster.state.topology
    usage = cluster.state.usage
    for name, node in topo.cq_nodes.items():
        for fr in node.nominal:
            used = usage[node.idx].get(fr, 0)
            limit = node.borrow_limit.get(fr)
            # Quota is never exceeded: a queue uses at most nominal + borrowing limit...
            if limit is not None:
                assert used <= node.subtree[fr] + limit, name
            # ...and never goes negative on what it could still take.
            assert available(node, fr, usage) >= 0
    fr = ("a100", "gpu")
    capacity = sum(n.nominal.get(fr, 0) for n in topo.cq_nodes.values())
    # Admitted usage never exceeds the capacity of the cohort (the sum of its queues' nominal quota)...
    assert sum(usage[n.idx].get(fr, 0) for n in topo.cq_nodes.values()) <= capacity
    # ...and the part of c's quota that it does not lend is never used by others.
    c = topo.cq_nodes["c"]
    others = sum(usage[topo.cq_nodes[n].idx].get(fr, 0) for n in ("a", "b"))
    assert others <= capacity - c.guaranteed.get(fr, 0)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(jobs=jobs, preempt=st.booleans())
def test_quota_and_capacity_are_never_exceeded(jobs: list[tuple[str, int, int, int]], preempt: bool) -> None:
    cluster = Cluster(gpu_queues(*QUEUES, limits=LIMITS, preemption=POLICY if preempt else ""))
    for i, (cq, gpus, count, prio) in enumerate(jobs):
        w = wl(f"w{i}", cq, gpu=gpus, count=count, priority=prio, created=i)
        if never_fits(cluster.state, w) is None:
            cluster.submit(w)
        cluster.cycle()
        check_invariants(cluster)
        if i % 3 == 2 and cluster.state.admissions:
            cluster.state.release(sorted(cluster.state.admissions)[0])
            check_invariants(cluster)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(jobs=jobs)
def test_everything_that_fits_an_empty_cluster_is_eventually_admitted(jobs: list[tuple[str, int, int, int]]) -> None:
    cluster = Cluster(gpu_queues(*QUEUES, limits=LIMITS))  # best-effort FIFO, borrowing, no preemption
    accepted = []
    for i, (cq, gpus, count, prio) in enumerate(jobs):
        w = wl(f"w{i}", cq, gpu=gpus, count=count, priority=prio, created=i)
        if never_fits(cluster.state, w) is None:
            cluster.submit(w)
            accepted.append(w.id)
    done: set[str] = set()
    for _ in range(len(accepted) * 3 + 5):
        cluster.cycle()
        check_invariants(cluster)
        # Everything running finishes, which frees quota for the rest.
        for wid in list(cluster.state.admissions):
            cluster.state.release(wid)
            done.add(wid)
        if len(cluster.pending) == 0:
            break
    assert done == set(accepted)
