"""Each pending reason code, as the engine and `why` report it."""

from __future__ import annotations

from queue_helpers import Cluster, config, gpu_queues, wl

from capstan.queue.explain import explain
from capstan.queue.model import Reason
from capstan.queue.records import PENDING, WorkloadRecord


def why(cluster: Cluster, wid: str) -> Reason:
    w = cluster.pending.get(wid)
    assert w is not None
    return explain(cluster.state, cluster.pending, WorkloadRecord(w, PENDING, Reason.WAITING_FOR_QUOTA)).reason


def test_waiting_for_quota() -> None:
    cluster = Cluster(gpu_queues(("a", 2), cohort=None))
    cluster.admit_now(wl("busy", "a", gpu=2, created=-1))
    cluster.submit(wl("w", "a", gpu=1))
    assert cluster.cycle().pending[0].reason is Reason.WAITING_FOR_QUOTA
    assert why(cluster, "w") is Reason.WAITING_FOR_QUOTA


def test_no_fitting_flavor() -> None:
    cluster = Cluster(gpu_queues(("a", 2), cohort=None))
    cluster.submit(wl("frac", "a", gpu="0.5"))
    verdict = cluster.cycle().pending[0]
    assert verdict.reason is Reason.NO_FITTING_FLAVOR and "not shareable" in verdict.message
    assert why(cluster, "frac") is Reason.NO_FITTING_FLAVOR


def test_blocked_by_head_of_queue() -> None:
    cluster = Cluster(gpu_queues(("a", 2), cohort=None, strategy="StrictFIFO"))
    cluster.admit_now(wl("busy", "a", gpu=1, created=-1))
    cluster.submit(wl("head", "a", gpu=2, created=0), wl("second", "a", gpu=1, created=1))
    result = cluster.cycle()
    assert [p.workload for p in result.pending] == ["head"]
    assert why(cluster, "second") is Reason.BLOCKED_BY_HEAD_OF_QUEUE


def test_waiting_for_preemption() -> None:
    cluster = Cluster(gpu_queues(("a", 2), cohort=None, preemption="{withinClusterQueue: LowerPriority}"))
    cluster.admit_now(wl("low", "a", gpu=2, created=-1))
    cluster.submit(wl("high", "a", gpu=2, priority=10))
    assert cluster.cycle(apply=False).pending[0].reason is Reason.WAITING_FOR_PREEMPTION


def test_gang_incomplete() -> None:
    cluster = Cluster(gpu_queues(("a", 4), cohort=None))
    cluster.admit_now(wl("busy", "a", gpu=2, created=-1))
    cluster.submit(wl("gang", "a", gpu=1, count=4))
    assert cluster.cycle().pending[0].reason is Reason.GANG_INCOMPLETE
    assert why(cluster, "gang") is Reason.GANG_INCOMPLETE


def test_inactive() -> None:
    cluster = Cluster(config("""
flavors: [{name: a100}]
clusterQueues:
  - name: a
    stopPolicy: Hold
    resourceGroups: [{coveredResources: [gpu], flavors: [{name: a100, resources: [{name: gpu, nominalQuota: 4}]}]}]
  - name: b
    resourceGroups: [{coveredResources: [gpu], flavors: [{name: a100, resources: [{name: gpu, nominalQuota: 4}]}]}]
localQueues: [{name: a, clusterQueue: a}, {name: b, clusterQueue: b}]
"""))
    cluster.submit(wl("held", "a"), wl("off", "b", active=False))
    reasons = {p.workload: p.reason for p in cluster.cycle().pending}
    assert reasons == {"held": Reason.INACTIVE, "off": Reason.INACTIVE}
    assert why(cluster, "held") is Reason.INACTIVE
